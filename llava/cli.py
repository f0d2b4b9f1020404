"""The ``llava-aim`` command line.

Each sub-command lives next to the code it drives and registers itself here through an
``add_*_command(subparsers)`` function that sets ``func`` on its parser. Exit status: 0 on
success, 2 on bad usage or bad input (one line on stderr, no traceback), 1 on internal errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from llava.errors import AIMError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str):  # pragma: no cover - exercised through the CLI tests
        sys.stderr.write(f"llava-aim: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llava-aim", description="AIM token merging and pruning for LLaVA models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from llava.run import add_run_command

    add_run_command(sub)
    from llava.analysis.cli import add_flops_command, add_plan_command

    add_flops_command(sub)
    add_plan_command(sub)
    from llava.bench.cli import add_bench_command

    add_bench_command(sub)
    from llava.visualize import add_visualize_command

    add_visualize_command(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from llava.interrupt import interrupts_end_the_process

    try:
        with interrupts_end_the_process(f"llava-aim {args.command}"):  # Ctrl-C: within seconds, rc 130
            return int(args.func(args) or 0)
    except AIMError as exc:
        sys.stderr.write(f"llava-aim {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("llava-aim: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
