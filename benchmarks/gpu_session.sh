#!/usr/bin/env bash
# The GPU checks in one prepared script, sized for a lent GPU machine (about 10 minutes on one
# NVIDIA H100; run from the repository root there):
#
#   bash benchmarks/gpu_session.sh
#
# Such a machine reaches no package registry, so nothing is installed: ccledu runs from this
# checkout (PYTHONPATH) with the image's NumPy, SciPy, CuPy, PyTorch, pytest and tqdm (without
# matplotlib the speed step writes its report without plots; checked in a virtual environment
# holding only numpy, scipy, pytest and tqdm: 74 CuPy tests collected, the one test file that
# needs matplotlib left out). Results go
# to "$OUT" when that is set (the device tool brings that folder back: at most 8 files), else to
# benchmarks/results/gpu/. Each step has its own time limit, and a failing step does not stop
# the ones after it.
#   1. the CuPy-parametrised tests (pytest -m gpu)       -> pytest_gpu.log
#   2. speed: ccledu+CuPy against PyTorch CUDA, MLP + CNN -> speed_cuda.md/.json, a plot
#   3. issue 22: the mpezeshki peer's own seed spread     -> mpezeshki_peer_seeds.json
# Long training runs (the paper CNN for 100 epochs) do not fit a lent machine's 15 minutes.
set -uo pipefail
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=$(command -v python3 || command -v python)
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$py" - <<'PY'
import numpy, sys
print("python", sys.version.split()[0], "numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)["name"])
except Exception as e:  # noqa: BLE001 - report and go on
    print("cupy unusable:", type(e).__name__, e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as e:  # noqa: BLE001
    print("torch unusable:", type(e).__name__, e)
PY
  echo "== 1. CuPy tests"
  # --continue-on-collection-errors: a test file that needs a package the image lacks (the
  # chapters' solutions import matplotlib) must not stop the CuPy tests of the other files
  timeout 240 "$py" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors \
    2>&1 | tail -40 > "$out/pytest_gpu.log"
  tail -3 "$out/pytest_gpu.log"
  echo "== 2. speed"
  timeout 240 "$py" benchmarks/speed.py --device cuda --configs mlp,cnn --reps 8 --no-scaling --out "$out"
  echo "== 3. mpezeshki peer, seeds 0-4 and the peer's own 1234"
  timeout 120 "$py" benchmarks/results/ff_presets/mpezeshki_peer_seeds.py --device cuda \
    --seeds 0,1,2,3,4,1234 --out "$out/mpezeshki_peer_seeds.json"
  date -u
} 2>&1 | tee "$out/gpu_session.log"
