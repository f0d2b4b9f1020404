"""lmms-eval results -> markdown tables in the paper's layout, with the analyzer's FLOPs.

    python scripts/collect_results.py eval_results/ [more files or folders] [--out table.md]

One row per setting (model + model_args; files of the same setting are merged), the paper's
benchmark columns in the paper's order, other tasks after them. Scores in percent (MME in
points). The TFLOPs column is llava.analysis.analyze for the run's frames, retention and
l1/l2 (see llava/eval/results.py).
"""

import sys

from llava.eval.results import collect_main

if __name__ == "__main__":
    sys.exit(collect_main())
