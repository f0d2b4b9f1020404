"""Write the synthetic clips of the shipped lmms-eval task (llava_aim_synthvid) ahead of time.

    python scripts/make_eval_task_videos.py [--out-dir DIR] [--questions]

Without --out-dir the clips go where the task looks for them: $LLAVA_AIM_EVAL_VIDEO_DIR, else
$HF_HOME/llava_aim_synthvid. The task also writes them on first use, so this is optional.
--questions rewrites the committed questions.json from the generator.
"""

import argparse
from pathlib import Path

from llava.eval import synthetic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help="folder for the clips (default: the task's video folder)")
    parser.add_argument("--questions", action="store_true", help=f"also rewrite {synthetic.QUESTIONS_FILE}")
    args = parser.parse_args()
    for path in synthetic.write_all_videos(args.out_dir):
        print(path)
    if args.questions:
        synthetic.write_questions()
        print(synthetic.QUESTIONS_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
