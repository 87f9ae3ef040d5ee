#!/usr/bin/env bash
# Run the GPU benchmarks in order, each under its own time limit, logging each to $OUT/<part>.log.
#
#   bash bench/device.sh                          # the default parts: env cuda gpu-16 memory-64
#   bash bench/device.sh gpu-64 gpu-576           # other parts
#   bash bench/device.sh --limit gpu-16=600 gpu-16
#   bash bench/device.sh --dry-run [PART ...]     # print "part<TAB>limit<TAB>command" and run nothing
#   bash bench/device.sh --download-wheels        # diffusers 0.42.1 for Python 3.12 into .whl/ (for a
#                                                 # machine without a package index; installed from there)
#
# Parts:
#   env          GPU, driver, torch; stops the run if there is no CUDA device
#   cuda         bench/cuda_checks.py: every memory mode and the fast path give the resident video (demo
#                model, fp16), so a broken CUDA-only path (streamed offload's side stream) fails first
#   gpu-16       bench/gpu.py at 256x256x16, 50 steps: UNet CFG step, VAE, end to end, output differences
#   gpu-64       bench/gpu.py at 256x256x64, 25 steps
#   gpu-576      bench/gpu.py at 576x320x24, 25 steps
#   gpu-warm     bench/gpu.py --second-process: a fresh process's warm-up with the compile cache
#   memory-64    bench/memory.py, 16 and 64 frames: resident, chunked, streamed-2/4, sequential, and
#                diffusers' model offload and group offload
#   memory-256   bench/memory.py, 128 and 256 frames, 10 steps
#
# A part that runs past its limit is stopped; what it printed is in its log and the next part still runs.
# Outputs go to $OUT (default ./device-out): <part>.log, and the benches' JSON beside them.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -A LIMIT=([env]=30 [cuda]=60 [gpu-16]=270 [gpu-64]=240 [gpu-576]=240 [gpu-warm]=240 [memory-64]=110
                  [memory-256]=240)
declare -A COMMAND=(
  [env]="nvidia-smi -L && python3 -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda); assert torch.cuda.is_available(), \"no CUDA device\"; print(torch.cuda.get_device_name())'"
  [cuda]="python3 bench/cuda_checks.py"
  [gpu-16]="python3 bench/gpu.py --sizes 256x256x16 --rounds 2 --json \$OUT/gpu-16.json"
  [gpu-64]="python3 bench/gpu.py --sizes 256x256x64 --rounds 2 --no-compile-reference --json \$OUT/gpu-64.json"
  [gpu-576]="python3 bench/gpu.py --sizes 576x320x24 --rounds 2 --no-compile-reference --json \$OUT/gpu-576.json"
  [gpu-warm]="python3 bench/gpu.py --sizes 256x256x16 --rounds 1 --no-compile-reference --second-process --json \$OUT/gpu-warm.json"
  [memory-64]="python3 bench/memory.py --frames 16 64 --modes resident chunked streamed-2 streamed-4 sequential diffusers-offload diffusers-group"
  [memory-256]="python3 bench/memory.py --frames 128 256 --steps 10 --modes resident chunked streamed-4 diffusers-offload diffusers-group"
)
ORDER=(env cuda gpu-16 gpu-64 gpu-576 gpu-warm memory-64 memory-256)
DEFAULT_PARTS=(env cuda gpu-16 memory-64)

die() { echo "bench/device.sh: $*" >&2; exit 2; }

if [ "${1:-}" = "--download-wheels" ]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1 importlib_metadata zipp
fi

dry_run=0
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --limit)
      [ $# -ge 2 ] || die "--limit needs PART=SECONDS"
      part="${2%%=*}" seconds="${2#*=}"
      [ -n "${COMMAND[$part]+x}" ] || die "--limit: unknown part '$part'; parts: ${ORDER[*]}"
      [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "--limit: '$seconds' is not a number of seconds (PART=SECONDS)"
      LIMIT[$part]=$seconds
      shift ;;
    -*) die "unknown option '$1'; options: --dry-run, --limit PART=SECONDS, --download-wheels" ;;
    *) [ -n "${COMMAND[$1]+x}" ] || die "unknown part '$1'; parts: ${ORDER[*]}"
       parts+=("$1") ;;
  esac
  shift
done
[ ${#parts[@]} -eq 0 ] && parts=("${DEFAULT_PARTS[@]}")

if [ $dry_run = 1 ]; then
  for part in "${parts[@]}"; do printf '%s\t%s\t%s\n' "$part" "${LIMIT[$part]}" "${COMMAND[$part]}"; done
  exit 0
fi

export OUT="${OUT:-$PWD/device-out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then  # wheels downloaded with --download-wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "bench/device.sh: installing .whl failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # videofusion from this checkout, installed or not

status=0
for part in "${parts[@]}"; do
  echo "=== $part (limit ${LIMIT[$part]} s): ${COMMAND[$part]}"
  start=$SECONDS
  timeout --kill-after=10 "${LIMIT[$part]}" bash -c "${COMMAND[$part]}" 2>&1 | tee "$OUT/$part.log"
  rc=${PIPESTATUS[0]}
  echo "=== $part: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$part.log"
  if [ "$part" = env ] && [ "$rc" != 0 ]; then exit "$rc"; fi
  [ "$rc" = 0 ] || status=1
done
exit $status
