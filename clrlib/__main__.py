"""``python -m clrlib``: the command line (see :mod:`clrlib.cli`)."""
import sys

from .cli import main

sys.exit(main())
