#!/usr/bin/env bash
# The prepared GPU check: one call on a lent GPU machine (no network, no flash-attn, no PyAV),
# under 8 minutes on one H200 from a fresh start. Writes gpu_check.json, gpu_check.md and
# gpu_check.log into $OUT (the device tool's output folder; else ./gpu_check_out).
#
#   bash scripts/gpu_check.sh --fetch-wheels   # on the CPU machine, once: the wheels it carries, into wheels/
#   bash scripts/gpu_check.sh                  # on the GPU machine (device tool: carry ["wheels"])
#   bash scripts/gpu_check.sh --cpu-smoke      # the same steps here on CPU, small sizes, no install
#   bash scripts/gpu_check.sh --dry-run        # print the steps
#
# Steps (each under its own time limit; a failed step is recorded and the rest still run):
#   install   wheels/*.whl with --no-deps into /tmp/site (the project, the lock's transformers, av;
#             the machine's torch, huggingface_hub, tokenizers, safetensors stay)
#   bench     llava-aim bench --device cuda: LLaVA-OneVision-7B architecture, random bf16 weights,
#             LLM-only and end to end; baseline, official (mask + eager), mask, merge-only, AIM
#   tolerance removal vs mask on the same input, float32 and bf16, SDPA (scripts/gpu_check.py)
#   batching  samples/s of the tiny model in batches of 1, 2, 4, 8 (the plugin's batching)
#   flops     the analyzer's prediction for the same hardware
#   bench_qwen  llava-aim bench --device cuda --model qwen2-vl-7b: the Qwen2-VL-7B architecture, random
#             bf16 weights (16 temporal groups x 256 tokens), the same configurations; last, so it only
#             takes what the budget has left
#   report    gpu_check.json (everything) and gpu_check.md (the tables)
# All steps share a budget of BUDGET=450 s (each also has its own limit), the report takes seconds.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-gpu}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/wheels}
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}  # the GPU machine's python3 (docs/benchmarks.md)

case "$MODE" in
    --fetch-wheels)
        # The project as a wheel, and the lock's transformers and av for the GPU machine's Python.
        set -e
        rm -rf "$WHEELS" && mkdir -p "$WHEELS"
        "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$ROOT"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -c "$ROOT/constraints/lock.txt" -d "$WHEELS" transformers av
        ls -l "$WHEELS"
        du -sh "$WHEELS"
        exit 0 ;;
    --dry-run)
        awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
        exit 0 ;;
    gpu|--gpu) MODE=gpu ;;
    --cpu-smoke) MODE=cpu-smoke ;;
    *) echo "usage: bash scripts/gpu_check.sh [--fetch-wheels | --dry-run | --cpu-smoke]" >&2; exit 2 ;;
esac

if [[ "$MODE" == "gpu" ]] && ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS: run 'bash scripts/gpu_check.sh --fetch-wheels' on the CPU machine first and carry wheels/" >&2
    exit 2
fi
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
PARTS=$(mktemp -d /tmp/gpu_check_parts.XXXXXX)
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
T0=$SECONDS

BUDGET=${BUDGET:-450}  # seconds for all steps: the whole check stays under 8 minutes

step() {  # step NAME SECONDS COMMAND...: run within its limit and the budget; record status, duration
    local name=$1 limit=$2 start=$SECONDS rc=0
    shift 2
    local left=$(( BUDGET - (SECONDS - T0) ))
    (( limit > left )) && limit=$left
    if (( limit < 10 )); then
        echo "== $name: skipped, the ${BUDGET}s budget is spent"
        printf '%s\t%s\t%s\n' "$name" 124 0 >> "$PARTS/steps.tsv"
        return 0
    fi
    echo "== $name (limit ${limit}s, $(( SECONDS - T0 ))s so far)"
    timeout "$limit" "$@" || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - start ))" >> "$PARTS/steps.tsv"
    [[ $rc -eq 0 ]] || echo "== $name: exit status $rc"
    return 0
}

if [[ "$MODE" == "gpu" ]]; then
    step install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    cd /tmp  # the installed package, not the checkout
    DEV=cuda
    BENCH=(--device cuda --model onevision-7b --repeats 5)
    BENCH_QWEN=(--device cuda --model qwen2-vl-7b --repeats 3)
    SMALL=()
    BATCH=(--requests 32 --sizes 1,2,4,8 --frames 8 --rounds 3)
else
    cd "$ROOT"
    DEV=cpu
    BENCH=(--device cpu --model small --frames 1 --repeats 1)
    BENCH_QWEN=(--device cpu --model small-qwen2-vl --frames 2 --max-pixels 12544 --repeats 1)
    SMALL=(--small --frames 1)
    BATCH=(--requests 2 --sizes 1,2 --frames 2 --rounds 1 --new-tokens 2)
fi

step environment 45 "$PY" "$ROOT/scripts/gpu_check.py" environment --out "$PARTS/environment.json"
step bench 240 bash -c "\"\$0\" -m llava bench $(printf '%q ' "${BENCH[@]}") --json > \"\$1\"" "$PY" "$PARTS/bench.json"
step tolerance 100 "$PY" "$ROOT/scripts/gpu_check.py" tolerance --device "$DEV" "${SMALL[@]}" --out "$PARTS/tolerance.json"
step batching 60 "$PY" "$ROOT/scripts/gpu_check.py" batching --device "$DEV" "${BATCH[@]}" --out "$PARTS/batching.json"
step flops 30 "$PY" "$ROOT/scripts/gpu_check.py" flops --device "$DEV" --out "$PARTS/flops.json"
step bench_qwen 150 bash -c "\"\$0\" -m llava bench $(printf '%q ' "${BENCH_QWEN[@]}") --json > \"\$1\"" "$PY" \
    "$PARTS/bench_qwen.json"
"$PY" "$ROOT/scripts/gpu_check.py" report --parts "$PARTS" --out-dir "$OUT" --mode "$MODE"
echo "== done in $(( SECONDS - T0 ))s: $OUT/gpu_check.json, $OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
rm -rf "$PARTS"
