"""clrlib: Leslie Smith's learning-rate methods (LR range test, cyclical learning rates,
the 1cycle policy with cyclical momentum) as in S. Gugger's "The 1cycle policy" (2018),
with ResNets for CIFAR and a CIFAR-10 pipeline that keeps the data on the GPU.

Modules: :mod:`~clrlib.schedules`, :mod:`~clrlib.finder`, :mod:`~clrlib.models`,
:mod:`~clrlib.data`, :mod:`~clrlib.train`, :mod:`~clrlib.plots`, :mod:`~clrlib.analysis`; the
experiment layer: :mod:`~clrlib.specs` (run specifications), :mod:`~clrlib.store` (the run
store), :mod:`~clrlib.runs` (``Lab``: specs to histories), :mod:`~clrlib.suite` (notebooks and
profiles) and :mod:`~clrlib.cli` (``python -m clrlib``).
"""
from . import data, finder, models, plots, schedules, train
from .data import CifarLoader, load_cifar10, synthetic_cifar10
from .finder import FinderResult, lr_find
from .models import resnet56, resnet_cifar
from .schedules import Scheduler, constant, cyclic, one_cycle, one_cycle_cosine
from .train import epoch_table, evaluate, fit

__version__ = "0.1.0"

__all__ = ["data", "finder", "models", "plots", "schedules", "train",
           "CifarLoader", "load_cifar10", "synthetic_cifar10", "FinderResult", "lr_find",
           "resnet56", "resnet_cifar", "Scheduler", "constant", "cyclic", "one_cycle",
           "one_cycle_cosine", "epoch_table", "evaluate", "fit"]
