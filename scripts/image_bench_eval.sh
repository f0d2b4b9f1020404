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

# --help: this header and the shared settings; nothing else runs.
for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
        echo; echo "Shared settings (scripts/lmms_eval_common.sh):"
        sed -n '/^#   RETENTION=/,/^$/{/^#/s/^#//p}' "$HERE/lmms_eval_common.sh"
        exit 0
    fi
done
# The AIM settings given by the caller (before the defaults below): refused with AIM=0.
AIM_SETTINGS_GIVEN=""
for name in RETENTION L1 L2 POSITIONS; do
    if [[ -n "${!name:-}" ]]; then AIM_SETTINGS_GIVEN+="$name "; fi
done

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
