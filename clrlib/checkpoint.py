"""Resumable training: what :func:`clrlib.train.fit` writes after every epoch, and reads back.

A long run on a machine that can be stopped (a preemptible GPU, a notebook host, a laptop
lid) loses at most the epoch in progress: ``fit(..., checkpoint=path)`` writes, after each
epoch, the model's weights and buffers, the optimizer's state, the scheduler's position, the
loader's random state, the random generators' states and the history so far, atomically
(the file is whole or absent). Called again with the same path, ``fit`` starts from the
epoch after the last one written, and on a CPU the history it returns is bit for bit the
one an uninterrupted run gives (the ``seconds`` column aside).

A checkpoint records the run's length (epochs and steps per epoch) and is refused, with an
error naming the file, by a ``fit`` of another length. ``fit`` leaves the file in place when
it returns: delete it once the history is saved (:class:`clrlib.lab.runs.Lab` does so after
storing the run).

Example:
    >>> import tempfile, os
    >>> from functools import partial
    >>> from clrlib import data, models, schedules, train
    >>> x, y, _, _ = data.synthetic_cifar10(128, 16)
    >>> loader = data.CifarLoader(x, y, batch_size=64, device="cpu")
    >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
    >>> sched = partial(schedules.one_cycle, total_steps=2 * len(loader), max_lr=0.5)
    >>> _ = train.fit(models.resnet_cifar(8), loader, 2, sched, seed=0, progress=False, checkpoint=path)
    >>> read(path, epochs=2, steps_per_epoch=2)["epoch"]
    2
"""
from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes

__all__ = ["CheckpointError", "write", "read", "restore", "rng_state", "set_rng_state"]

#: Bumped when what a checkpoint holds changes (an older one is then refused).
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that belongs to another run (or another format); the message names the file."""


def rng_state() -> dict[str, Any]:
    """The states of Python's and torch's (CPU and CUDA) random generators."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def write(path: str | os.PathLike, *, epoch: int, epochs: int, steps_per_epoch: int, model, optimizer,
          scheduler, loader, rows: dict, stopped: bool = False) -> None:
    """Write the state after ``epoch`` (1-based) of a run of ``epochs`` x ``steps_per_epoch`` steps.

    Args:
        path: the checkpoint file (its folder is created).
        model, optimizer, scheduler: their ``state_dict()`` is saved.
        loader: its ``state_dict()`` if it has one (:class:`clrlib.data.CifarLoader` does).
        rows: the history's columns so far.
        stopped: training ended early (a diverged loss); a resume then trains no more.
    """
    state = {"format": FORMAT, "epoch": epoch, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
             "stopped": stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rows": rows, "rng": rng_state(),
             "loader": loader.state_dict() if hasattr(loader, "state_dict") else None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def read(path: str | os.PathLike, *, epochs: int, steps_per_epoch: int) -> dict | None:
    """The checkpoint at ``path`` if there is one for a run of this length, else None.

    An unreadable file is reported with a warning and ignored (training starts over and
    replaces it). It is loaded with ``weights_only=True``: a file can hold only tensors and
    plain values, never code to run.

    Raises:
        CheckpointError: the file is of a run of another length, or of another format.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); training starts over "
                      "and will replace it", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a clrlib checkpoint of format {FORMAT}; "
                              "delete it or pass another checkpoint path")
    if (state["epochs"], state["steps_per_epoch"]) != (epochs, steps_per_epoch):
        raise CheckpointError(
            f"checkpoint {path} is of a run of {state['epochs']} epochs x {state['steps_per_epoch']} steps, "
            f"this one is {epochs} x {steps_per_epoch}; delete it or pass another checkpoint path")
    return state


def restore(state: dict, *, model, optimizer, scheduler, loader) -> None:
    """Load a checkpoint's states into the run's objects (built as for a fresh start)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["loader"] is not None:
        if not hasattr(loader, "load_state_dict"):
            raise CheckpointError("the checkpoint holds a loader state but this loader has no load_state_dict")
        loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
