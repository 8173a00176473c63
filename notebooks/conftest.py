"""Under pytest (nbval), run every notebook in the smoke profile, writing into a temporary folder.

The notebooks read CLRLIB_PROFILE and CLRLIB_OUT (see clrlib.lab.suite.start); the
kernels nbval starts inherit these variables from this process.
"""
import os
import tempfile

os.environ.setdefault("CLRLIB_PROFILE", "smoke")
os.environ.setdefault("CLRLIB_OUT", tempfile.mkdtemp(prefix="clrlib-nbval-"))
os.environ.setdefault("MPLBACKEND", "Agg")
