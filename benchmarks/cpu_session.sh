#!/usr/bin/env bash
# Every CPU speed measurement of issue 19 for the machine this runs on, in one go (about 8
# minutes on a 2-core machine, with nothing else running; from any folder):
#
#   bash benchmarks/cpu_session.sh            # results under benchmarks/results/
#   OUT=/tmp/x bash benchmarks/cpu_session.sh # somewhere else
#   QUICK=1 OUT=/tmp/x bash benchmarks/cpu_session.sh   # a one-minute smoke run (tiny reps)
#
# The files are named after the machine kind (benchmarks/speed.py's `machine_kind`: amd-epyc,
# intel-xeon (with AMX), intel-xeon-icl, ...), so a run on a new kind adds files and a run on a
# known kind replaces that kind's files (the earlier ones stay in git's history; compare them
# with `git diff` for the before/after). Each step has its own time limit, and a failing step
# does not stop the ones after it:
#   1. speed.py          ccledu vs PyTorch, MLP + CNN, every rule of the five -> speed_cpu_<kind>.*
#      (first, so that its load average is not the previous step's)
#   2. blas_spin_ab.py   OPENBLAS_THREAD_TIMEOUT 28 vs ccledu's 20, per rule -> blas_spin_ab_<kind>.md
#      (if the MLP loses on this kind, ccledu.blas_threads needs a CPU condition)
#   3. layer_parts.py    the CNN's pieces vs PyTorch's                 -> layer_parts_cpu_<kind>.*
#   4. profile_step.py   where a step's time goes (CPU clock, 1 thread)  -> profile_cpu_<kind>.*
# The log of every step goes to $OUT/cpu_session_<kind>.log (not meant to be committed).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/benchmarks/results}
mkdir -p "$out" && out=$(cd "$out" && pwd)     # absolute: the steps run from the repository root
cd "$root" || exit 2
py=$(command -v python3 || command -v python)
export PYTHONUNBUFFERED=1
if ! "$py" -c "import ccledu" 2>/dev/null; then
  echo "ccledu is not importable: run the README's install command first" >&2
  exit 2
fi
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "PyTorch is not installed (the peer of every comparison): pip install torch==2.13.0" >&2
  exit 2
fi
kind=$(cd benchmarks && "$py" -c "import speed; print(speed.machine_kind(speed.machine_info('cpu')))") || {
  echo "could not tell the machine kind (benchmarks/speed.py's machine_kind)" >&2; exit 2; }
log="$out/cpu_session_$kind.log"
if [ -n "${QUICK:-}" ]; then
  spin=(--cases mlp:dfa --steps 2 --warmup 1 --rounds 1)
  speed=(--quick --configs mlp --rules bp)
  parts=(--reps 1 --rounds 1)
  prof=(--configs mlp --rules bp --reps 2)
else
  spin=()
  speed=(--configs mlp,cnn --reps 8 --rules bp,fa,dfa,ccl,ff)
  parts=()
  prof=(--reps 10)
fi
status=0
step() {   # step NAME LIMIT_S COMMAND...: run it, log it, remember a failure
  local name=$1 limit=$2; shift 2
  echo "== $(date -u +%H:%M:%S) $name: $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "   $name failed (exit $rc$([ $rc -eq 124 ] && echo ', time limit')); see $log" | tee -a "$log"
    status=1
  fi
}
{ date -u; echo "machine kind: $kind"; grep -m1 "model name" /proc/cpuinfo; nproc; } >"$log"
echo "machine kind: $kind (log: $log)"
step "1. speed" 1800 "$py" benchmarks/speed.py "${speed[@]}" --kind "$kind" --out "$out"
step "2. BLAS spin A/B" 1200 "$py" benchmarks/blas_spin_ab.py "${spin[@]}" --out "$out/blas_spin_ab_$kind.md"
step "3. layer parts" 900 "$py" benchmarks/layer_parts.py "${parts[@]}" --kind "$kind" --out "$out"
step "4. profile" 1200 env OPENBLAS_NUM_THREADS=1 "$py" benchmarks/profile_step.py "${prof[@]}" \
  --clock cpu --out "$out/profile_cpu_$kind.md"
echo "== ratios (PyTorch ms / ccledu ms) from $out/speed_cpu_$kind.md:"
grep -E "^\| (mlp|cnn) " "$out/speed_cpu_$kind.md" 2>/dev/null | cut -d'|' -f2,3,7 || true
exit $status
