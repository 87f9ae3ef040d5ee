#!/usr/bin/env bash
# Run diffusers' own unit tests with diffusers and with videofusion swapped in; see README.md.
#   tools/diffusers_tests/run.sh /path/to/diffusers [run.py options]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" "$here/run.py" --python "$python" "$@"
