#!/usr/bin/env bash
# Everything a session with a lent GPU (H100/H200 via the device tool) should run: three calls, each
# time-boxed inside the device's 10-minute command limit, the three inside the session's 30 minutes of
# device time with the machine's start (bench/README.md, "GPU session").
#
#   bash bench/gpu_session.sh tests     # the test suite on CUDA, compiled kernels (no interpreter); 240 s box
#   bash bench/gpu_session.sh bench-a   # python -m bench: memory, neuron (+ block-size sweep); 540 s box
#   bash bench/gpu_session.sh bench-b   # python -m bench: int_matmul, spike_matmul, open_neuromorphic; 540 s box
#   bash bench/gpu_session.sh sweep     # optional, a later session: spike_matmul tile / skip_zero sweep; 540 s box
#
# STAGE_SECONDS (default: the box above, capped at 540) bounds the whole stage, the wheel install included:
# at that point the run gets SIGINT, keeps the files its suites wrote so far (neuron_gpu, open_neuromorphic and
# the spike_matmul sweep write as they go), records the suites it did not start as not-run, writes the report, and the stage still packs its
# results; SIGKILL 30 s later if it hangs. 540 + 30 s + packing stays under the 600 s command limit.
# Optional wheels (SpikingJelly, snnTorch, Norse and what they need that the image lacks) travel in .whl/
# (carry it). Each stage leaves in $OUT (the device tool brings back at most 8 files): device.txt,
# <stage>.log and results-<stage>.tar.gz, which holds bench/results/<gpu-slug>/ as this stage left it.
# Here: tar -xzf each into bench/results/, then `python -m bench --report-only --out bench/results/<gpu-slug>`
# and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: bash bench/gpu_session.sh tests|bench-a|bench-b|sweep}
OUT=${OUT:-/tmp/spiketriton-out}
START=$SECONDS
case "$stage" in tests) box=240 ;; *) box=540 ;; esac
SECS=${STAGE_SECONDS:-$box}
if [ "$SECS" -gt 540 ]; then  # 540 + the 30 s SIGKILL grace + packing: inside the device's 600 s per call
  echo "STAGE_SECONDS=$SECS capped at 540"
  SECS=540
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
python3 - <<'PY' | tee "$OUT/device.txt"
import datetime, importlib.metadata as md, torch, triton
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
print("torch", torch.__version__, "cuda", torch.version.cuda, "| triton", triton.__version__)
for d in ("spikingjelly", "snntorch", "norse", "nir", "matplotlib", "tqdm"):
    try:
        print(d, md.version(d))
    except md.PackageNotFoundError:
        print(d, "not installed")
PY
slug=$(python3 -c "import sys; sys.path.insert(0, 'bench'); import torch; from _common import device_slug; print(device_slug('cuda') if torch.cuda.is_available() else 'cpu')")

pack() {  # the results folder as this stage left it -> $OUT/results-<stage>.tar.gz
  if [ -d "bench/results/$slug" ]; then
    tar -czf "$OUT/results-$stage.tar.gz" -C bench/results "$slug"
    echo "packed bench/results/$slug ($(ls "bench/results/$slug" | wc -l) files) into results-$stage.tar.gz"
  fi
}
run() {  # time-boxed: SIGINT at $SECS s from the stage's start (the runner then writes its report), SIGKILL 30 s later
  local left=$((SECS - (SECONDS - START)))
  [ "$left" -gt 10 ] || left=10
  echo "stage $stage: $left s for: $*"
  set +e
  timeout -s INT -k 30 "$left" "$@" 2>&1 | tee "$OUT/$stage.log"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "stage $stage: exit status $rc"
}

case "$stage" in
  tests)
    run python3 -m pytest tests -q -x -p no:cacheprovider
    ;;
  bench-a)  # memory first (seconds); neuron writes after every neuron x dtype and before its sweep
    run python3 -m bench --suites memory,neuron --sweep
    pack
    ;;
  bench-b)  # open_neuromorphic last: it writes after every n, so a time box keeps the sizes it finished
    run python3 -m bench --suites int_matmul,spike_matmul,open_neuromorphic
    pack
    ;;
  sweep)
    run python3 bench/spike_matmul_gpu.py --sweep-only --sweep-kernels fwd --sweep-dtypes bf16 \
      --out "bench/results/$slug"
    python3 -m bench --report-only >/dev/null 2>&1 || true
    pack
    ;;
  *)
    echo "unknown stage '$stage': tests | bench-a | bench-b | sweep" >&2
    exit 2
    ;;
esac
