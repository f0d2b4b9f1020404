"""lmms-eval results -> markdown tables in the paper's layout, with the analyzer's FLOPs.

    python scripts/collect_results.py eval_results/ [more files or folders] [--out table.md]

One row per setting (model + model_args; files of the same setting are merged), the paper's
benchmark columns in the paper's order, other tasks after them. Scores in percent (MME in
points). The TFLOPs column is llava.analysis.analyze for the run's frames, retention and
l1/l2 (see llava/eval/results.py). Each row names the checkpoint, frames and --limit behind it;
a limited run is marked *.

    python scripts/collect_results.py --paper eval_results/paper [--tables video,long]

The paper's tables side by side: "paper / ours (ours - paper)", the difference only for a run
of the paper row's setting; a figure of a --limit run (*), of another checkpoint (‡) or of
another frame count (§) is marked and not compared (legend under each table).
"""

import sys

from llava.eval.results import collect_main

if __name__ == "__main__":
    sys.exit(collect_main())
