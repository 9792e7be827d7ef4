#!/usr/bin/env bash
# The GPU runbook: ONE device call of about 8 minutes (bench/README.md, "GPU session"). On a lent GPU:
#
#   run(command="SPIKETRITON_COMMIT=<sha of HEAD> bash bench/gpu_session.sh", carry=[".whl"], timeout_s=540)
#   (then give_back; the commit is recorded where the tree travels without .git)
#
# It installs the carried wheels (.whl/: SpikingJelly and the other peers, none of which the device image has;
# at most 45 s), then runs bench/gpu_session.py: the stages in priority order (copy bandwidth and cuBLAS rates,
# LIF vs SpikingJelly, spike matmul fwd + dW fp32 / bf16 at 4096^3, the event-driven spike matmul at M = 1, 4, 16
# (issue 13), int8 vs cuBLAS at 4096^3, Open Neuromorphic at
# n = 16384, IF / PLIF, then the CUDA kernel tests and this window's slice of the rest of the CUDA suite, then the
# report), each under its own time box, all within 480 s counted from this script's start (SESSION_T0), the
# install included. Results go to bench/results/<gpu-slug>/ as they are measured; after every stage that folder is
# packed into $OUT/results.tar.gz and the output appended to $OUT/session.log.
#
#   bash bench/gpu_session.sh --list                      # the plan, boxes and test slices
#   bash bench/gpu_session.sh --rotate 1                  # test slice 1 instead of the next in the rotation
#   bash bench/gpu_session.sh --dry-run --budget 30 --results-root /tmp/r    # the plumbing on a CPU (stand-ins)
#
# Here, afterwards: tar -xzf <files_at>/results.tar.gz -C bench/results/ ;
# python -m bench --report-only --out bench/results/<gpu-slug> ; read summary.md ; commit the folder.
set -uo pipefail
cd "$(dirname "$0")/.."
export SESSION_T0=${SESSION_T0:-$(date +%s)}
export OUT=${OUT:-/tmp/spiketriton-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
site=""
case " $* " in
  *" --dry-run "*|*" --list "*|*" -h "*|*" --help "*) ;;
  *)
    if compgen -G ".whl/*.whl" >/dev/null; then
      if timeout -k 5 45 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target /tmp/site .whl/*.whl; then
        site=/tmp/site
        echo "installed $(ls .whl/*.whl | wc -l) wheels from .whl/ in $(( $(date +%s) - SESSION_T0 )) s"
      else
        echo "gpu_session.sh: the wheel install failed or took over 45 s; the peers that need it are skipped" >&2
      fi
    else
      echo "gpu_session.sh: no .whl/ carried: SpikingJelly, snnTorch and Norse are skipped (bench/README.md)" >&2
    fi
    ;;
esac
export PYTHONPATH="${site:+$site:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_session.py "$@"
