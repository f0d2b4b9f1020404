#!/usr/bin/env bash
# A stock lmms-eval model (not an AIM plugin model) on the paper's benchmarks: the rows of
# scripts/paper_tables.py that evaluate another model as published (LongVA-7B).
#
#   MODEL=longva MODEL_ARGS=pretrained=lmms-lab/LongVA-7B,... TASKS=videomme bash scripts/stock_model_eval.sh
#
# Settings (environment variables, defaults in brackets):
#   MODEL        lmms-eval's model name (llava/eval/stock.py: what each needs beyond lmms-eval)
#   MODEL_ARGS   its model_args, as lmms-eval takes them
#   TASKS  LIMIT [all]  DEVICE [cuda]  BATCH_SIZE [1]  NUM_PROCESSES [1]  LAUNCHER [accelerate|torchrun]
#   OUTPUT_DIR [./eval_results/stock_<MODEL>]  CACHE [1]  CACHE_DIR [OUTPUT_DIR/cache]
#   PYTHON       the interpreter that runs lmms-eval with the model's package (LongVA: its own
#                environment); the bookkeeping runs with this repository's interpreter
#   PRINT_MODEL_ARGS=1  print --model M --model_args A --tasks T and run nothing
# A rerun resumes from lmms-eval's response cache in CACHE_DIR/<setting folder>; a run without
# LIMIT that produced every task's results records its completion there (paper_tables.py reads it).
set -euo pipefail
: "${MODEL:?set MODEL (e.g. longva)}" "${MODEL_ARGS:?set MODEL_ARGS}" "${TASKS:?set TASKS}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_PYTHON=python
if [[ -x "$HERE/../.venv/bin/python" ]]; then TOOLS_PYTHON="$HERE/../.venv/bin/python"; fi
TOOLS_PYTHON=${LLAVA_PYTHON:-$TOOLS_PYTHON}
DEFAULT_RUN_NAME="stock_${MODEL}"
AIM=0  # the shared settings' AIM knobs do not apply to a stock model
source "$HERE/lmms_eval_common.sh"

if [[ "${PRINT_MODEL_ARGS:-0}" == "1" ]]; then
    echo "--model ${MODEL} --model_args ${MODEL_ARGS} --tasks ${TASKS}"
    exit 0
fi
if ! PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m llava.eval.stock missing "$MODEL"; then
    exit 2
fi
launch=$(launcher)
limit_args=()
if [[ -n "$LIMIT" ]]; then limit_args=(--limit "$LIMIT"); fi
folder="$CACHE_DIR/$("$TOOLS_PYTHON" -m llava.eval.stock key --model "$MODEL" --model_args "$MODEL_ARGS")"
cache_args=()
if [[ "$CACHE" != "0" ]]; then
    mkdir -p "$folder"
    cache_args=(--use_cache "$folder")
    echo "cache:   ${folder} (a rerun of this setting resumes from it)" >&2
fi
mkdir -p "$OUTPUT_DIR"
marker=$(mktemp "${OUTPUT_DIR}/.run-started.XXXXXX")
trap "rm -f '$marker'" EXIT
echo "lmms-eval: --model ${MODEL} --model_args ${MODEL_ARGS} --tasks ${TASKS} --batch_size ${BATCH_SIZE}" >&2
# shellcheck disable=SC2086  # $launch is a command prefix
$launch -m lmms_eval --model "$MODEL" --model_args "$MODEL_ARGS" --tasks "$TASKS" --device "$DEVICE" \
    --batch_size "$BATCH_SIZE" --output_path "$OUTPUT_DIR" --log_samples "${limit_args[@]}" "${cache_args[@]}" "$@"
results=$("$TOOLS_PYTHON" -m llava.eval.results check "$OUTPUT_DIR" --since "$marker" --tasks "$TASKS") || exit 1
echo "results: ${results}"
if [[ -z "$LIMIT" && $# -eq 0 ]]; then
    mkdir -p "$folder"
    "$TOOLS_PYTHON" -m llava.eval.resume complete --folder "$folder" --tasks "$TASKS" --results "$results" >/dev/null
    echo "complete: ${folder}/complete.json"
fi
