#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with one CUDA GPU, `scripts/gpu_check.sh`; anywhere,
# `scripts/gpu_check.sh --dry-run` (the same steps on the CPU, shortened). PYTHON picks the interpreter
# (default python3). It runs from a plain checkout, with no install and no network: the checkout goes on
# PYTHONPATH, and where jsonargparse is missing, the wheels that ../shared/gpu/fetch-wheels put in .whl/
# are installed into a temporary folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$python" -c "import jsonargparse" 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "gpu_check.sh: error: jsonargparse is not installed and .whl/ holds no wheels (see docs/gpu.md)" >&2
        exit 2
    fi
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    PIP_ROOT_USER_ACTION=ignore "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PYTHONPATH"
fi
"$python" scripts/gpu_check.py "$@"
