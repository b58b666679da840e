#!/usr/bin/env bash
# The GPU check, as one prepared command for a lent GPU machine (the `device` tool). It runs there,
# with that machine's own python3, torch and transformers: nothing can be installed there but the
# wheels scripts/device_prepare.sh put in .whl/ (pydantic). Prepare here, then:
#
#   bash scripts/device_prepare.sh
#   device run  carry=[".whl", ".cache/tiny"]  timeout_s=540  command="bash bench/device_check.sh"
#
# Steps, most important first, each under its own time limit, each going on after a failure:
#   tests       tests/test_gpu.py + the tiny CLIP step (transformers engine bf16, static cache +
#               compile, its own process giving GPU memory back, NLI fp16 vs CPU, H, stages on CUDA)
#   generation  bench/generation_throughput.py, Llama-2-7B shape, batch 128, 256 + 64 tokens,
#               plain vs static cache + compile (reference: 2.5K and 4.0K new tokens/s on an H100)
#   nli         bench/nli_throughput.py on CUDA, small and large (roberta-large-sized) shapes
#   bulk        bench/bulk_throughput.py, t5-base shape, batch 256 and 1024
# STEPS="tests nli" picks steps; DEVICE=cpu and QUICK=1 run the plumbing on a machine without a GPU.
# Results land in $OUT (at most 8 files come back): summary.txt (environment, one line a step),
# log.txt (every step's output), junit.xml and the benches' JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hierarcaps_device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-tests generation nli bulk}
BUDGET_S=${BUDGET_S:-450}   # the whole check ends within this many seconds (steps are cut to fit)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HIERARCAPS_CACHE="$PWD/.cache/tiny"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hc_site .whl/*.whl \
    || { echo "installing the carried wheels failed" | tee "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH=/tmp/hc_site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
T0=$(date +%s)
SUMMARY="$OUT/summary.txt"
LOG="$OUT/log.txt"
: >"$LOG"
{
  echo "host: $(hostname) $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for p in ("transformers", "pydantic", "pyarrow", "accelerate", "peft", "sentence-transformers"):
    try:
        print(f"  {p} {md.version(p)}")
    except md.PackageNotFoundError:
        print(f"  {p} MISSING")
EOF
} >"$SUMMARY" 2>&1

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local start=$(date +%s)
  local left=$(( BUDGET_S - (start - T0) ))
  if (( left < 30 )); then
    echo "$name: skipped (budget of ${BUDGET_S}s spent)" | tee -a "$SUMMARY"
    return 0
  fi
  (( limit > left )) && limit=$left   # the whole script ends within BUDGET_S
  echo "===== $name: $* =====" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $(( $(date +%s) - start ))s$([ $rc -eq 124 ] && echo " (timed out at ${limit}s)")" \
    | tee -a "$SUMMARY"
}

if [ -n "${QUICK:-}" ]; then
  GEN_ARGS=(--shape tiny --requests 16 --batch-size 8 --prompt-tokens 32 --new-tokens 8 --modes plain,static)
  NLI_SHAPES=(small); NLI_ARGS=(--pairs 256 --naive-pairs 32)
  BULK_ARGS=(--shape t5-small --batch 16 --n 32)
else
  GEN_ARGS=(--shape llama2-7b --requests 256 --batch-size 128 --prompt-tokens 256 --new-tokens 64
            --modes plain,static+compile --repeats 1)
  NLI_SHAPES=(small large); NLI_ARGS=(--pairs 8192 --naive-pairs 256 --batch-size 256 --repeats 3)
  BULK_ARGS=(--shape t5-base --batch 256 1024 --n 2048)
fi

step tests 240 "$PY" -m pytest -q -ra -p no:cacheprovider --junitxml="$OUT/junit.xml" \
  tests/test_gpu.py tests/test_align.py::test_tiny_clip_step_on_gpu
step generation 300 "$PY" bench/generation_throughput.py --device "$DEVICE" "${GEN_ARGS[@]}" \
  --out "$OUT/generation_$DEVICE.json"
case " $STEPS " in *" nli "*)
  for shape in "${NLI_SHAPES[@]}"; do
    STEPS="$STEPS nli_$shape" step "nli_$shape" 150 "$PY" bench/nli_throughput.py --device "$DEVICE" \
      --shape "$shape" "${NLI_ARGS[@]}" --out "$OUT/nli_${shape}_$DEVICE.json"
  done ;;
esac
step bulk 150 "$PY" bench/bulk_throughput.py --device "$DEVICE" "${BULK_ARGS[@]}" --out "$OUT/bulk_$DEVICE.json"

echo "total: $(( $(date +%s) - T0 ))s" | tee -a "$SUMMARY"
grep -E "(passed|failed|skipped|error).* in [0-9.]+s" "$LOG" | tee -a "$SUMMARY"   # the pytest line
