"""``python -m clrlib``: the command line (see :mod:`clrlib.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
