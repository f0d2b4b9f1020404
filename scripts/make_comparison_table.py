#!/usr/bin/env python
"""Write docs/comparison.md (kept for old commands): ``python -m llava.bench.comparison`` does it.

    python scripts/make_comparison_table.py [--measure | --bench-json FILE]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.bench.comparison import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
