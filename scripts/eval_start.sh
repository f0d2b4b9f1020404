# Sourced first by the eval scripts (video_bench_eval.sh, scripts/image_bench_eval.sh) with the
# script's own path and its arguments: --help prints the script's header and the shared settings
# and exits; AIM_SETTINGS_GIVEN lists the AIM settings the caller gave before any default is
# filled in (lmms_eval_common.sh refuses them with AIM=0).
EVAL_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# --help: the header and the shared settings; nothing else runs.
for arg in "${@:2}"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$1"
        echo; echo "Shared settings (scripts/lmms_eval_common.sh):"
        sed -n '/^#   RETENTION=/,/^$/{/^#/s/^#//p}' "$EVAL_SCRIPTS_DIR/lmms_eval_common.sh"
        exit 0
    fi
done
AIM_SETTINGS_GIVEN=""
for name in RETENTION L1 L2 POSITIONS; do
    if [[ -n "${!name:-}" ]]; then AIM_SETTINGS_GIVEN+="$name "; fi
done
