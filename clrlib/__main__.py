"""``python -m clrlib``: the command line (see :mod:`clrlib.lab.cli`)."""
import sys

from .lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
