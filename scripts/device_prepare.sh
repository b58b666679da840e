#!/usr/bin/env bash
# Prepares what bench/device_check.sh needs on a lent GPU machine, which has python3 3.12, torch
# and transformers but reaches no registry: the tiny models (.cache/tiny) and wheels of what its
# image lacks (.whl/: pydantic and its compiled core). Both folders are git-ignored; name them in
# the device call's `carry`. DEVICE_PY (default 3.12) picks the wheels' Python version.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export HIERARCAPS_CACHE="$PWD/.cache/tiny"
.venv/bin/python - <<'PY'
import os
from pipeline.models import resolve_model
for mid in ("tiny/llama-chat", "tiny/t5", "tiny/nli"):
    print(mid, "->", resolve_model(mid, os.environ["HIERARCAPS_CACHE"]))
PY
# the versions installed here, so the wheels match what the tests ran against
pins=$(.venv/bin/python - <<'PY'
import importlib.metadata as md
print(" ".join(f"{p}=={md.version(p)}" for p in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")))
PY
)
rm -rf .whl && mkdir -p .whl
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "${DEVICE_PY:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pins
ls -1 .whl
du -sh .cache/tiny .whl
echo 'then: device run carry=[".whl", ".cache/tiny"] timeout_s=540 command="bash bench/device_check.sh"'
