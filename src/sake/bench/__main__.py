"""`python -m sake.bench`: see `sake.bench.cli` for the options."""

import sys

from sake.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
