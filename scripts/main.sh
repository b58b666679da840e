#!/usr/bin/env bash
# The main job on the offline default: set up, then build a dataset with the `tiny` preset from
# examples/captions.tsv through the Prefect flow. Output: artifacts/runs/<run_id>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/hierarcaps run --preset tiny "$@"
