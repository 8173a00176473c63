"""``python -m clrlib.experiments``: the same command line as ``python -m clrlib`` (kept for scripts
that call it by this name). The experiment layer lives in :mod:`clrlib.specs`, :mod:`clrlib.store`,
:mod:`clrlib.runs`, :mod:`clrlib.suite` and :mod:`clrlib.cli`.
"""
import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
