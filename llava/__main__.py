import sys

from llava.cli import main

sys.exit(main())
