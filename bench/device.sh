#!/usr/bin/env bash
# The GPU checks of issues 6 (fast path) and 9 (memory) as ONE prepared device-machine call.
#
# A task that is lent a device machine gets 15 minutes of device time in all (the machine's start
# included) and 10 minutes per command, so the default run is short (470 s of limits) and
# leaves time to rerun a part. Each part runs under its own `timeout` and writes its output to
# $OUT/<part>.log (and its JSON beside it) as it goes, so a part that is cut off still returns what
# it measured, and the next part still runs. At most 8 files come back from $OUT: the default parts write 6.
#
# Here, once (diffusers 0.42.1 for the device's Python 3.12, into the git-ignored folder .whl; PyAV is
# not needed there: `import videofusion` works without it):
#     bash bench/device.sh --prepare
# Then, with the device tool (carry .whl; the script installs it into /tmp/site):
#     run(command="bash bench/device.sh", carry=[".whl"], timeout_s=500)
#     run(command="bash bench/device.sh gpu-64 gpu-576", carry=[".whl"], timeout_s=600)   # another task
# See what would run, without running it:
#     bash bench/device.sh --dry-run [PART ...]
#
# Parts (default: env cuda gpu-16 memory-64):
#   env          GPU, driver, torch; fails fast if there is no CUDA device
#   cuda         bench/cuda_checks.py: every memory mode and the fast path give the resident video (demo
#                model, fp16): the CUDA-only paths (streamed offload's side stream) fail here first
#   gpu-16       bench/gpu.py at 256x256x16, 50 steps: UNet CFG step, VAE, end to end, diffs (issue 6)
#   gpu-64       bench/gpu.py at 256x256x64, 25 steps
#   gpu-576      bench/gpu.py at 576x320x24, 25 steps
#   gpu-warm     bench/gpu.py --second-process: a fresh process's warm-up with the compile cache
#   memory-64    bench/memory.py, 16 and 64 frames: resident, chunked, streamed-2/4, sequential, and
#                diffusers' model offload, group offload (issue 9)
#   memory-256   bench/memory.py, 128 and 256 frames, 10 steps
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
DEFAULT_PARTS=(env cuda gpu-16 memory-64)

if [ "${1:-}" = "--prepare" ]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1 importlib_metadata zipp
fi

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=("${DEFAULT_PARTS[@]}")
for part in "${parts[@]}"; do
  if [ -z "${COMMAND[$part]+x}" ]; then
    echo "bench/device.sh: unknown part '$part'; parts: ${!COMMAND[*]}" >&2
    exit 2
  fi
done

if [ $dry_run = 1 ]; then
  for part in "${parts[@]}"; do echo "$part	${LIMIT[$part]}	${COMMAND[$part]}"; done
  exit 0
fi

export OUT="${OUT:-$PWD/device-out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "bench/device.sh: installing .whl failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # videofusion from this checkout, not installed

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
