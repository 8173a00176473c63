"""Batches of any layout: what a training step takes from a batch, and how it calls the model.

:func:`clrlib.train.fit` and :func:`clrlib.finder.lr_find` take batches as a data loader yields
them. ``unpack(batch) -> (inputs, target)`` says which part is which; the default,
:func:`default_unpack`, takes ``(x, y)`` pairs and dicts with a ``"labels"`` entry. The inputs
may be a tensor (``model(x)``), a tuple or list (``model(*inputs)``) or a dict
(``model(**inputs)``); they are moved to the device recursively. With ``loss_fn="model"`` the
model computes its own loss (as Hugging Face models do when given ``labels``): dict batches
then keep their labels among the inputs, and the loss is read from the output
(:func:`output_loss`).

Example:
    >>> import torch
    >>> batch = {"input_ids": torch.zeros(4, 7, dtype=torch.long), "labels": torch.ones(4, dtype=torch.long)}
    >>> inputs, target = default_unpack(batch)
    >>> sorted(inputs), target.tolist()
    (['input_ids'], [1, 1, 1, 1])
    >>> sorted(default_unpack(batch, keep_labels=True)[0])
    ['input_ids', 'labels']
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

__all__ = ["MODEL_LOSS", "default_unpack", "to_device", "call_model", "output_loss", "count", "resolve_unpack"]

#: ``loss_fn="model"``: the model returns its own loss.
MODEL_LOSS = "model"
_LABEL_KEY = "labels"


def default_unpack(batch, keep_labels: bool = False) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch: an ``(x, y)`` pair, or a dict with a ``"labels"`` entry.

    Args:
        batch: what the loader yielded.
        keep_labels: leave ``"labels"`` among a dict's inputs (for models that compute their
            own loss); the target is then still returned.

    Raises:
        TypeError: for another layout (the message says to pass ``unpack=``).
    """
    if isinstance(batch, Mapping):
        if _LABEL_KEY not in batch:
            raise TypeError(f"a dict batch needs a {_LABEL_KEY!r} entry for the default unpack; it has keys "
                            f"{sorted(map(str, batch))}: pass unpack=lambda b: (inputs, target)")
        inputs = dict(batch) if keep_labels else {k: v for k, v in batch.items() if k != _LABEL_KEY}
        return inputs, batch[_LABEL_KEY]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    what = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) \
        else f"a {type(batch).__name__}"
    raise TypeError(f"a batch must be an (inputs, target) pair or a dict with {_LABEL_KEY!r}, got {what}: "
                    "pass unpack=lambda batch: (inputs, target)")


def resolve_unpack(unpack: Callable | None, loss_fn) -> Callable:
    """``unpack``, or the default for this ``loss_fn`` (labels kept for a model's own loss)."""
    if unpack is None:
        keep = isinstance(loss_fn, str) and loss_fn == MODEL_LOSS
        return (lambda batch: default_unpack(batch, keep_labels=True)) if keep else default_unpack
    if not callable(unpack):
        raise TypeError(f"unpack must be a function batch -> (inputs, target), got {unpack!r}")
    return unpack


def to_device(value, device: torch.device, channels_last: bool = False, non_blocking: bool = True):
    """``value`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``.

    ``channels_last`` applies only to 4-d floating-point tensors (image batches).
    """
    if isinstance(value, torch.Tensor):
        value = value.to(device, non_blocking=non_blocking)
        if channels_last and value.dim() == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, Mapping):
        return {k: to_device(v, device, channels_last, non_blocking) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, channels_last, non_blocking) for v in value)
    return value


def call_model(model: Callable, inputs):
    """``model(x)``, ``model(*inputs)`` for a tuple or list, ``model(**inputs)`` for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_loss(output) -> torch.Tensor:
    """The loss a model returned: its ``.loss``, its ``["loss"]``, or the output itself if 0-d.

    Raises:
        TypeError: if the output holds no loss.
    """
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, torch.Tensor) and output.dim() == 0:
        loss = output
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn='model' but the model returned {type(output).__name__} without a loss "
                        "(a 0-d tensor, an output with .loss, or a dict with 'loss')")
    return loss


def count(inputs, target) -> int:
    """Examples in a batch: the first dimension of the target, else of the first input tensor."""
    for value in (target, inputs):
        found = _first_tensor(value)
        if found is not None:
            return int(found.shape[0]) if found.dim() else 1
    raise TypeError("a batch holds no tensor to count its examples by")


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None
