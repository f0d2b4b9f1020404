"""Write the README's "What AIM does" picture with the built-in tiny model (random weights).

    python scripts/make_demo_picture.py [--out docs/what_aim_does.png]

`make demo` runs this with ``--out build/aim_demo.png`` (the committed docs/ copy is only rewritten
when this script is run by hand). The setting: the shipped sample video, 4 frames, merging to
1/4 (196 -> 49 tokens per frame) and pruning after layers 2..7 of the tiny model's 8 layers
(l1=2, l2=8), a longer schedule than `llava-aim run`'s default (4, 6) so that the picture shows
three pruning stages. Everything in the picture is computed by `llava-aim visualize`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llava.cli import main as cli_main  # noqa: E402
from llava.run import SAMPLE_VIDEO  # noqa: E402

DEMO_ARGS = ["--frames", "4", "--retention", "0.25", "--l1", "2", "--l2", "8"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "what_aim_does.png"), help="PNG to write")
    parser.add_argument("--model", default="tiny-llava-onevision", help="built-in model (make demo DEMO_MODEL=...)")
    args = parser.parse_args(argv)
    return cli_main(["visualize", "--video", str(SAMPLE_VIDEO), "--model", args.model, "--out", args.out, *DEMO_ARGS])


if __name__ == "__main__":
    sys.exit(main())
