#!/usr/bin/env bash
# Video benchmarks of the AIM paper with lmms-eval: LLaVA-OneVision-7B + AIM.
#
#   bash video_bench_eval.sh [extra lmms-eval arguments]
#
# Settings (environment variables, defaults in brackets):
#   PRETRAINED  [lmms-lab/llava-onevision-qwen2-7b-ov]  hub id, local folder or tiny-llava-onevision
#               (LLaVA-NeXT names load their llava-hf conversion; see docs/evaluation.md)
#   TASKS       [videomme,mlvu_dev,egoschema_subset,nextqa_mc_test,perceptiontest_val_mc,mvbench]
#   FRAMES      [32]     frames sampled uniformly per video
#   RETENTION   [0.25]   L1, L2 [empty: 14, 22 on 28 layers, scaled to other depths]   AIM [1]
#   NUM_PROCESSES [1]    LAUNCHER [accelerate|torchrun]   LIMIT [all]   DEVICE [cuda]
#   INCLUDE_PATH [the shipped offline task]   OUTPUT_DIR [./eval_results/<run name>]
#   BATCH_SIZE [1]   CACHE [1: resume from OUTPUT_DIR/cache/<setting key>]   MODEL [llava_onevision_aim]
# More: scripts/lmms_eval_common.sh. Exits non-zero when the evaluation fails.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

MODEL=${MODEL:-llava_onevision_aim}  # or another video plugin model (e.g. qwen2_vl_aim)
PRETRAINED=${PRETRAINED:-lmms-lab/llava-onevision-qwen2-7b-ov}
TASKS=${TASKS:-videomme,mlvu_dev,egoschema_subset,nextqa_mc_test,perceptiontest_val_mc,mvbench}
FRAMES=${FRAMES:-32}
DEFAULT_RUN_NAME="video_$(basename "$PRETRAINED")_f${FRAMES}_aim${AIM:-1}_r${RETENTION:-0.25}_l${L1:-auto}-${L2:-auto}"

source "$HERE/scripts/lmms_eval_common.sh"
run_lmms_eval "$@"
