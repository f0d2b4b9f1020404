# Shared by video_bench_eval.sh and scripts/image_bench_eval.sh (sourced, not run).
# Expects MODEL, PRETRAINED, TASKS, DEFAULT_RUN_NAME and the settings below; see docs/evaluation.md.
#
#   RETENTION=0.25  L1= L2=      AIM settings (L1/L2 empty: the family's official schedule, e.g.
#                                (13, 21) on LLaVA-1.5's 32 layers, else the paper's 14/22 of 28
#                                layers scaled to the model's depth; L1=none L2=none: no pruning)
#   AIM=1                        0: the stock model (RETENTION/L1/L2/POSITIONS refused with it)
#   MAX_PIXELS= POSITIONS=       Qwen-VL models: pixels per frame / image (model_arg max_pixels),
#                                merged-token positions original | official (AIM on only)
#   EXTRA_MODEL_ARGS=            more model_args, e.g. "attn_implementation=flash_attention_2"
#   NUM_PROCESSES=1              >1: data parallel, one replica per GPU
#   LAUNCHER=accelerate          accelerate | torchrun (torchrun for several nodes)
#   NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500   (torchrun, multi-node)
#   LIMIT=                       only the first N documents of each task (testing only)
#   INCLUDE_PATH=<package tasks> extra task folders (the shipped offline task by default)
#   OUTPUT_DIR=./eval_results/<run name>
#   BATCH_SIZE=1                 >1: requests of the same geometry run as one batch (same answers)
#   CACHE=1                      0: no response cache / resume journal (every request recomputed)
#   CACHE_DIR=$OUTPUT_DIR/cache  root of the per-setting folders <key>/ (lmms-eval --use_cache and
#                                the plugin's resume journal); a rerun of the same setting resumes
#   DEVICE=cuda                  cuda or cpu
#   PRINT_MODEL_ARGS=1           print the plugin model, its model_args and the tasks; run nothing
#   PYTHON=                      the interpreter with llava-aim[eval] installed (default: the
#                                active virtualenv's python, else the repository's .venv, else python)
# Extra command-line arguments go to lmms-eval unchanged.

set -euo pipefail

# The interpreter ($PYTHON) and _REPO_ROOT.
source "$(dirname "${BASH_SOURCE[0]}")/eval_python.sh"
RETENTION=${RETENTION:-0.25}
L1=${L1:-}
L2=${L2:-}
AIM=${AIM:-1}
EXTRA_MODEL_ARGS=${EXTRA_MODEL_ARGS:-}
NUM_PROCESSES=${NUM_PROCESSES:-1}
LAUNCHER=${LAUNCHER:-accelerate}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
LIMIT=${LIMIT:-}
DEVICE=${DEVICE:-cuda}
# The default output folder names every setting: the scripts' name plus EXTRA_MODEL_ARGS (the
# method and its knobs), so that two settings (e.g. FastV and VTW) never share a folder.
extra_args_tag() {
    local slug
    [[ -n "${EXTRA_MODEL_ARGS:-}" ]] || return 0
    slug=$(printf '%s' "$EXTRA_MODEL_ARGS" | sed -e 's/,/_/g' -e 's/[^A-Za-z0-9._]/-/g')
    if [[ ${#slug} -gt 48 ]]; then  # long: a readable head and a checksum of the whole
        slug="${slug:0:32}"
        slug="${slug%_}-$(printf '%s' "$EXTRA_MODEL_ARGS" | cksum | cut -d' ' -f1)"
    fi
    printf '_%s' "$slug"
}
OUTPUT_DIR=${OUTPUT_DIR:-./eval_results/${DEFAULT_RUN_NAME}$(extra_args_tag)}
BATCH_SIZE=${BATCH_SIZE:-1}
CACHE=${CACHE:-1}
CACHE_DIR=${CACHE_DIR:-${OUTPUT_DIR}/cache}

# The interpreter can run the plugin, and the shipped offline task is on the include path.
check_python() {
    if ! "$PYTHON" -c "import lmms_eval, llava.eval.registry" 2>/dev/null; then
        echo "error: $PYTHON cannot import lmms_eval and llava: install with pip install -e \".[eval]\" (or set PYTHON)" >&2
        exit 2
    fi
    if [[ -z "${INCLUDE_PATH:-}" ]]; then
        INCLUDE_PATH=$("$PYTHON" -c "from llava.eval.synthetic import TASK_DIR; print(TASK_DIR.parent)")
    fi
}

# model_args: the checkpoint, the AIM setting, then anything extra.
aim_model_args() {
    local args="pretrained=${PRETRAINED}"
    if [[ -n "${FRAMES:-}" ]]; then args+=",max_frames_num=${FRAMES}"; fi
    if [[ -n "${MAX_PIXELS:-}" ]]; then args+=",max_pixels=${MAX_PIXELS}"; fi
    if [[ "$AIM" == "0" ]]; then
        args+=",aim=0"
    else
        args+=",aim=1,retention=${RETENTION}"
        if [[ -n "$L1" || -n "$L2" ]]; then args+=",l1=${L1},l2=${L2}"; fi
        if [[ -n "${POSITIONS:-}" ]]; then args+=",positions=${POSITIONS}"; fi
    fi
    if [[ -n "$EXTRA_MODEL_ARGS" ]]; then args+=",${EXTRA_MODEL_ARGS}"; fi
    echo "$args"
}

# The launcher prefix: plain python, accelerate launch, or torchrun (multi-node capable).
launcher() {
    if [[ "$LAUNCHER" == "accelerate" && ( "$NNODES" -gt 1 || ( "$NUM_PROCESSES" -gt 1 && "$DEVICE" != cuda* ) ) ]]; then
        # Several nodes: torchrun's rendezvous. Several CPU processes: accelerate would need MPI.
        echo "note: NNODES=$NNODES, NUM_PROCESSES=$NUM_PROCESSES, DEVICE=$DEVICE: launching with torchrun" >&2
        LAUNCHER=torchrun
    fi
    if [[ "$NUM_PROCESSES" -le 1 && "$NNODES" -le 1 ]]; then
        echo "$PYTHON"
    elif [[ "$LAUNCHER" == "torchrun" ]]; then
        echo "$PYTHON -m torch.distributed.run --nproc_per_node ${NUM_PROCESSES} --nnodes ${NNODES} \
--node_rank ${NODE_RANK} --master_addr ${MASTER_ADDR} --master_port ${MASTER_PORT}"
    elif [[ "$LAUNCHER" == "accelerate" ]]; then
        echo "$PYTHON -m accelerate.commands.launch --num_processes ${NUM_PROCESSES} --multi_gpu --main_process_port ${MASTER_PORT}"
    else
        echo "error: LAUNCHER must be accelerate or torchrun, got '$LAUNCHER'" >&2
        return 2
    fi
}

# AIM settings given while AIM=0 would be ignored: refuse them (AIM_SETTINGS_GIVEN: the names the
# caller set before the scripts' defaults, e.g. "RETENTION L1").
refuse_ignored_settings() {
    local given=${AIM_SETTINGS_GIVEN:-}
    if [[ "$AIM" == "0" && -n "${given// /}" ]]; then
        echo "error: AIM=0 runs the stock model, so ${given% } would be ignored: unset it or set AIM=1" >&2
        exit 2
    fi
}

# Every setting lmms-eval would only reject after its ~12 s start-up (model_args, tasks, device):
# one line and exit 2, before anything is written.
check_settings() {
    local model_args=$1
    "$PYTHON" -m llava.eval.args check --model "$MODEL" --model_args "$model_args" --tasks "$TASKS" \
        --include_path "$INCLUDE_PATH" --device "$DEVICE" || exit 2
}

run_lmms_eval() {
    local model_args launch marker status=0
    refuse_ignored_settings
    model_args=$(aim_model_args)
    if [[ "${PRINT_MODEL_ARGS:-0}" == "1" ]]; then  # what would run, nothing else (checks, tests)
        echo "--model ${MODEL} --model_args ${model_args} --tasks ${TASKS}"
        return 0
    fi
    check_python
    check_settings "$model_args"
    launch=$(launcher)
    local limit_args=()
    if [[ -n "$LIMIT" ]]; then limit_args=(--limit "$LIMIT"); fi
    # Resume without mixing: one folder per setting (the key of everything that decides an
    # answer: resolved settings, checkpoint, code, library versions; llava/eval/resume.py),
    # holding lmms-eval's response cache and the plugin's resume journal. Computed even with
    # CACHE=0: a complete run leaves its completion record there (paper_tables.py reads it).
    local cache_args=() resume_dir quiet=()
    if [[ "$CACHE" == "0" ]]; then quiet=(--quiet); fi
    resume_dir=$("$PYTHON" -m llava.eval.resume key --model "$MODEL" --model_args "$model_args" \
        --write "$CACHE_DIR" "${quiet[@]}")
    if [[ "$CACHE" != "0" ]]; then
        if [[ "$NODE_RANK" == "0" ]]; then
            "$PYTHON" -m llava.eval.resume prepare "$resume_dir" >/dev/null  # shards of killed runs
        fi
        export LLAVA_AIM_RESUME_DIR="$resume_dir"
        # A fresh lmms-eval run id per launch: earlier runs reach it through the merged cache.db
        # (a reused id would make lmms-eval reopen, and replay, an old shard itself).
        export LMMS_CACHE_RUN_ID="${LMMS_CACHE_RUN_ID:-$(date +%Y%m%d%H%M%S)-$$-${SLURM_ARRAY_TASK_ID:-0}}"
        cache_args=(--use_cache "$resume_dir")
        echo "cache:   ${resume_dir} (a rerun of this setting resumes from it)" >&2
    else
        unset LLAVA_AIM_RESUME_DIR
        echo "cache:   off (CACHE=0): every request computed" >&2
    fi
    # The output folder only now: a setting refused above (or a key that cannot be computed) leaves nothing.
    mkdir -p "$OUTPUT_DIR"
    marker=$(mktemp "${OUTPUT_DIR}/.run-started.XXXXXX")
    # shellcheck disable=SC2064  # expand now: $marker is local to this function
    trap "rm -f '$marker'" EXIT
    echo "lmms-eval: --model ${MODEL} --model_args ${model_args} --tasks ${TASKS} --batch_size ${BATCH_SIZE}" >&2
    # shellcheck disable=SC2086  # $launch is a command prefix
    $launch -m lmms_eval \
        --model "$MODEL" \
        --model_args "$model_args" \
        --tasks "$TASKS" \
        --include_path "$INCLUDE_PATH" \
        --device "$DEVICE" \
        --batch_size "$BATCH_SIZE" \
        --output_path "$OUTPUT_DIR" \
        --log_samples \
        "${limit_args[@]}" \
        "${cache_args[@]}" \
        "$@" || status=$?
    if [[ $status -ne 0 ]]; then
        echo "error: lmms-eval exited with status $status" >&2
        exit "$status"
    fi
    if [[ "$NODE_RANK" != "0" ]]; then
        echo "node ${NODE_RANK}: done (node 0 writes the results)" >&2
        return 0
    fi
    # lmms-eval exits 0 even when the evaluation failed: the results file is the proof.
    local results
    if ! results=$("$PYTHON" -m llava.eval.results check "$OUTPUT_DIR" --since "$marker" --tasks "$TASKS"); then
        exit 1
    fi
    echo "results: ${results}"
    # A run of the whole setting (no LIMIT, no extra lmms-eval arguments) is complete: record it
    # in the setting folder, where paper_tables.py looks before running a row again.
    if [[ -z "$LIMIT" && $# -eq 0 ]]; then
        "$PYTHON" -m llava.eval.resume complete --folder "$resume_dir" --tasks "$TASKS" --results "$results" >/dev/null
        echo "complete: ${resume_dir}/complete.json"
    fi
    echo "samples: $(dirname "$results")"
    echo "table:   $PYTHON scripts/collect_results.py $OUTPUT_DIR"
}
