#!/usr/bin/env bash
# Everything a session with a lent GPU (H100/H200 via the device tool) should run, in a few calls
# that each fit the device's 10-minute command limit. See bench/README.md, "GPU session".
#
#   bash bench/gpu_session.sh tests    # the test suite on CUDA, compiled kernels (no interpreter)
#   bash bench/gpu_session.sh neuron   # neuron fwd+bwd GB/s vs copy bandwidth and SpikingJelly, block sweep
#   bash bench/gpu_session.sh matmul   # spike_matmul vs cuBLAS fp32/bf16, dW, memory, integer spike matmul
#   bash bench/gpu_session.sh sweep    # spike_matmul tile / skip_zero sweep (bf16 forward slice)
#
# Optional wheels (SpikingJelly for the comparison, matplotlib for plots) travel in .whl/ (carry it).
# Result files are copied flat into $OUT (the device tool brings back at most 8 files, 2 levels deep);
# copy them to bench/results/<gpu>/ here and commit them with the device, versions and date.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: bash bench/gpu_session.sh tests|neuron|matmul|sweep}
OUT=${OUT:-/tmp/spiketriton-out}
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
import datetime, torch, triton
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
print("torch", torch.__version__, "cuda", torch.version.cuda, "| triton", triton.__version__)
PY

collect() {  # copy the newest result files of a bench script (flat) into $OUT
  local n=0
  for f in $(ls -t bench/results/*/"$1"* 2>/dev/null | grep -v '/cpu/' | head -6); do
    cp "$f" "$OUT/$(basename "$f")"; n=$((n + 1))
  done
  echo "collected $n result files for $1"
}

case "$stage" in
  tests)
    set -o pipefail
    python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.log" | tail -25
    ;;
  neuron)
    python3 bench/neuron_gpu.py --sweep 2>&1 | tee "$OUT/neuron_gpu.log" | tail -40
    collect neuron_gpu
    ;;
  matmul)
    python3 bench/spike_matmul_gpu.py 2>&1 | tee "$OUT/spike_matmul_gpu.log" | tail -40
    python3 bench/memory.py 2>&1 | tee "$OUT/memory_gpu.log" | tail -15
    python3 bench/int_matmul_gpu.py 2>&1 | tee "$OUT/int_matmul_gpu.log" | tail -15
    collect spike_matmul_gpu
    collect int_matmul_gpu
    ;;
  sweep)
    python3 bench/spike_matmul_gpu.py --sweep-only --sweep-kernels fwd --sweep-dtypes bf16 2>&1 \
      | tee "$OUT/spike_matmul_sweep.log" | tail -30
    collect spike_matmul_gpu
    ;;
  *)
    echo "unknown stage '$stage': tests | neuron | matmul | sweep" >&2
    exit 2
    ;;
esac
