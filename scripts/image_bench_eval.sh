#!/usr/bin/env bash
# Image benchmarks of the AIM paper with lmms-eval: LLaVA-1.5-7B + AIM.
#
#   bash scripts/image_bench_eval.sh [extra lmms-eval arguments]
#
# Settings (environment variables, defaults in brackets):
#   PRETRAINED  [liuhaotian/llava-v1.5-7b]  hub id, local folder or tiny-llava-1.5
#               (loads llava-hf/llava-1.5-7b-hf; see docs/evaluation.md)
#   TASKS       [vqav2_val,gqa,mme,textvqa_val,scienceqa_img,mmbench_en_dev,pope]
#   RETENTION   [0.4375: the official 576 -> 288 -> 252; 0.125 is its other setting]
#   L1, L2      [empty: the official (13, 21) on LLaVA-1.5's 32 layers]   AIM [1]
#   NUM_PROCESSES [1]    LAUNCHER [accelerate|torchrun]   LIMIT [all]   DEVICE [cuda]
#   INCLUDE_PATH [the shipped offline task]   OUTPUT_DIR [./eval_results/<run name>]
#   BATCH_SIZE [1]   CACHE [1: resume from OUTPUT_DIR/cache/<setting key>]
# More: scripts/lmms_eval_common.sh (listed by --help). Exits non-zero when the evaluation fails.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# --help (the header above and the shared settings), and the AIM settings the caller gave
# (refused with AIM=0): scripts/eval_start.sh.
source "$HERE/eval_start.sh" "${BASH_SOURCE[0]}" "$@"

# The model and its default checkpoint: the first family whose AIM merges images (its adapter's
# plugin_model and default_checkpoint).
source "$HERE/eval_python.sh"
MODEL_DEFAULTS=$("$PYTHON" -m llava.eval.args defaults --media image) || exit $?
eval "$MODEL_DEFAULTS"
PRETRAINED=${PRETRAINED:-$MODEL_PRETRAINED}
TASKS=${TASKS:-vqav2_val,gqa,mme,textvqa_val,scienceqa_img,mmbench_en_dev,pope}
FRAMES=""
RETENTION=${RETENTION:-0.4375}
DEFAULT_RUN_NAME="image_$(basename "$PRETRAINED")_aim${AIM:-1}_r${RETENTION}_l${L1:-auto}-${L2:-auto}"

source "$HERE/lmms_eval_common.sh"
run_lmms_eval "$@"
