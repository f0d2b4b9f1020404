#!/usr/bin/env bash
# Video benchmarks of the AIM paper with lmms-eval: LLaVA-OneVision-7B + AIM (the default), or
# Qwen2-VL-7B / Qwen2.5-VL-7B + AIM.
#
#   bash video_bench_eval.sh [extra lmms-eval arguments]
#   MODEL=qwen2_vl_aim bash video_bench_eval.sh      # the official code's Qwen2-VL run
#
# Settings (environment variables, defaults in brackets):
#   MODEL       [llava_onevision_aim]  or qwen2_vl_aim (Qwen2-VL: the official run, 32 frames,
#               MAX_PIXELS=200704, POSITIONS=official) or qwen2_5_vl_aim (same, POSITIONS=original);
#               any plugin model of a family with video (python -m llava.eval.args defaults --model M
#               --media video prints its defaults), e.g. qwen3_vl_aim (ours: MAX_PIXELS=262144)
#   PRETRAINED  [the model's 7B checkpoint: lmms-lab/llava-onevision-qwen2-7b-ov,
#               Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct]  hub id, local folder or a
#               built-in tiny model (LLaVA-NeXT names load their llava-hf conversion; see docs/evaluation.md)
#   TASKS       [videomme,mlvu_dev,egoschema_subset,nextqa_mc_test,perceptiontest_val_mc,mvbench]
#   FRAMES      [32]     frames per video, np.linspace(0, T-1, N, dtype=int) (frame_sampling=official)
#   MAX_PIXELS, POSITIONS  (Qwen models only; defaults above) pixels per frame, merged-token positions
#   RETENTION   [0.25]   L1, L2 [empty: 14, 22 on 28 layers, scaled to other depths]   AIM [1]
#   NUM_PROCESSES [1]    LAUNCHER [accelerate|torchrun]   LIMIT [all]   DEVICE [cuda]
#   INCLUDE_PATH [the shipped offline task]   OUTPUT_DIR [./eval_results/<run name>]
#   BATCH_SIZE [1]   CACHE [1: resume from OUTPUT_DIR/cache/<setting key>]
# More: scripts/lmms_eval_common.sh (listed by --help). Exits non-zero when the evaluation fails.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# --help (the header above and the shared settings), and the AIM settings the caller gave
# (refused with AIM=0): scripts/eval_start.sh.
source "$HERE/scripts/eval_start.sh" "${BASH_SOURCE[0]}" "$@"

# The model's defaults come from its family adapter (default_checkpoint, paper_eval_args):
# MODEL, MODEL_PRETRAINED and MODEL_<ARG> for each model_arg of the paper's run; an unknown MODEL
# is refused there (one line, exit 2).
source "$HERE/scripts/eval_python.sh"
MODEL_DEFAULTS=$("$PYTHON" -m llava.eval.args defaults --media video --model "${MODEL:-}") || exit $?
eval "$MODEL_DEFAULTS"
PRETRAINED=${PRETRAINED:-$MODEL_PRETRAINED}
MAX_PIXELS=${MAX_PIXELS:-${MODEL_MAX_PIXELS:-}}
# POSITIONS spelt out as the model's default (as a table row may) asks for nothing AIM=0 would ignore.
if [[ -n "${POSITIONS:-}" && "$POSITIONS" == "${MODEL_POSITIONS:-}" ]]; then
    AIM_SETTINGS_GIVEN=${AIM_SETTINGS_GIVEN/POSITIONS /}
fi
POSITIONS=${POSITIONS:-${MODEL_POSITIONS:-}}
TASKS=${TASKS:-videomme,mlvu_dev,egoschema_subset,nextqa_mc_test,perceptiontest_val_mc,mvbench}
FRAMES=${FRAMES:-32}
DEFAULT_RUN_NAME="video_$(basename "$PRETRAINED")_f${FRAMES}_aim${AIM:-1}_r${RETENTION:-0.25}_l${L1:-auto}-${L2:-auto}${POSITIONS:+_pos-$POSITIONS}"

source "$HERE/scripts/lmms_eval_common.sh"
run_lmms_eval "$@"
