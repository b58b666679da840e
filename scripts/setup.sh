#!/usr/bin/env bash
# Creates .venv and installs the project with its extras (HIERARCAPS_EXTRAS, default "dev"),
# pinned by constraints.txt. Idempotent: a second call only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${HIERARCAPS_EXTRAS:-dev}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade uv >/dev/null
export UV_FIND_LINKS="${PIP_FIND_LINKS:-}"
.venv/bin/python -m uv pip install --python .venv/bin/python --compile-bytecode -q \
  -c constraints.txt --excludes excludes.txt -e ".[$EXTRAS]"
