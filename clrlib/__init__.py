"""clrlib: Leslie Smith's learning-rate methods (LR range test, cyclical learning rates,
the 1cycle policy with cyclical momentum) as in S. Gugger's "The 1cycle policy" (2018),
with ResNets for CIFAR and a CIFAR-10 pipeline that keeps the data on the GPU.

Modules: :mod:`~clrlib.schedules`, :mod:`~clrlib.finder`, :mod:`~clrlib.models`,
:mod:`~clrlib.data`, :mod:`~clrlib.train`, :mod:`~clrlib.plots` and :mod:`~clrlib.recipe`. The
machinery that runs the notebook suite (run specifications, the run store, plans, profiles,
the runner and ``python -m clrlib``) is the subpackage :mod:`clrlib.lab`.
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
