"""``python -m clrlib.experiments``: the same command line as ``python -m clrlib`` (kept for scripts
that call it by this name). The experiment layer lives in :mod:`clrlib.lab.specs`, :mod:`clrlib.lab.store`,
:mod:`clrlib.lab.runs`, :mod:`clrlib.lab.suite` and :mod:`clrlib.lab.cli`.
"""
import sys

from .lab.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
