#!/usr/bin/env bash
# Everything issue 9 needs from a GPU machine, in one go (run from the repository root there).
#   bash benchmarks/gpu_session.sh [quick|full]
# quick (default): CuPy tests + speed benchmark (~10 min on an H100).
# full: also the long training runs (paper CNN with CCL on MNIST and Fashion-MNIST, 100 epochs,
#       and FF 4x2000 on MNIST, 60 epochs) — several hours; results land in benchmarks/results/.
set -euo pipefail
mode=${1:-quick}
python -m pip install -q -e ".[test]" "cupy-cuda12x" "torch==2.13.0" || python -m pip install -q -e ".[test]" cupy-cuda12x
python - <<'PY'
import cupy, ccledu.backend as b
print("cupy", cupy.__version__, "available:", b.cupy_available(), cupy.cuda.runtime.getDeviceProperties(0)["name"])
PY
mkdir -p benchmarks/results/gpu
# 1. the whole suite with the CuPy-parametrised tests running (they skip only without a GPU)
python -m pytest -m gpu -v -rs 2>&1 | tee benchmarks/results/gpu/pytest_gpu.log
python -m pytest -q 2>&1 | tail -5 | tee benchmarks/results/gpu/pytest_all.log
# 2. speed: ccledu+CuPy vs PyTorch CUDA
python benchmarks/speed.py --device cuda 2>&1 | tee benchmarks/results/gpu/speed.log
if [ "$mode" = full ]; then
  for data in mnist fashion-mnist; do
    ccledu train --rule ccl --model cnn --data "$data" --epochs 100 --seed 0 --backend cupy \
      --out "benchmarks/results/gpu/ccl_cnn_${data}" --quiet
  done
  ccledu train --rule ff --preset paper --model mlp --data mnist --backend cupy \
    --out benchmarks/results/gpu/ff_paper_mnist --quiet
fi
