"""lr_find on models of every shape: dict batches, several inputs, a model that returns its own
loss, a custom unpack; gradient accumulation, the optimizer's own start LR, arguments in the
wrong order, fastai 0.7's late start of the stop rule, and losses that are not positive."""
from __future__ import annotations

import copy
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from clrlib.finder import FASTAI_BEST_AFTER, lr_find
from clrlib.models import resnet_cifar


def _state(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_same(a, b):
    """Bit-for-bit equality of nested state dicts (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


# --- models of other layouts ----------------------------------------------------------------------

class TextClassifier(nn.Module):
    """Embedding + mean pooling + linear: takes ``input_ids`` only (no labels)."""

    def __init__(self, vocab: int = 30, dim: int = 8, classes: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)
        self.calls = []

    def forward(self, input_ids):
        self.calls.append(input_ids.dtype)
        return self.head(self.emb(input_ids).mean(1))


class TwoInputs(nn.Module):
    """``model(a, b)``: two feature sets, concatenated."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)
        self.head = nn.Linear(8, 2)

    def forward(self, a, b):
        return self.head(torch.cat([torch.relu(self.a(a)), torch.relu(self.b(b))], dim=1))


class OwnLoss(TextClassifier):
    """A Hugging Face-style model: given ``labels`` it returns an object with ``.loss`` and ``.logits``."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def forward(self, input_ids, labels):
        logits = super().forward(input_ids)
        loss = F.cross_entropy(logits, labels)
        self.losses.append(loss.item())
        return SimpleNamespace(loss=loss, logits=logits)


def _text_batches(n: int = 4, size: int = 16, seed: int = 0):
    """Dict batches whose label is a function of the tokens (learnable)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 30, (size, 6), generator=g)
        out.append({"input_ids": ids, "labels": ids[:, 0] % 3})
    return out


def _pair_batches(n: int = 4, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b = torch.randn(size, 3, generator=g), torch.randn(size, 5, generator=g)
        out.append(((a, b), (a[:, 0] + b[:, 0] > 0).long()))
    return out


def test_dict_batches_feed_the_model_by_keyword_without_the_labels():
    torch.manual_seed(0)
    model = TextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = _state(model, opt)
    batches, val = _text_batches(), _text_batches(2, seed=1)
    res = lr_find(model, F.cross_entropy, batches, opt, start_lr=1e-3, end_lr=10, num_it=12,
                  val_batches=val, accuracy=True, stop_factor=None)
    assert len(res) == 12 and res.settings["held_out"] is True
    assert all(math.isfinite(v) and v > 0 for v in res.raw_losses)
    assert all(abs(a * 32 - round(a * 32)) < 1e-9 for a in res.accuracies)  # fractions of 32 held-out
    assert len(model.calls) == 12 + 12 * 2 and set(model.calls) == {torch.long}  # ids stay integers
    _assert_same(before, _state(model, opt))


def test_two_input_model_is_called_with_each_input():
    torch.manual_seed(0)
    model = TwoInputs()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _state(model, opt)
    res = lr_find(model, F.cross_entropy, _pair_batches(), opt, start_lr=1e-3, end_lr=1.0, num_it=10,
                  val_batches=_pair_batches(2, seed=1), accuracy=True, stop_factor=None)
    assert len(res) == len(res.accuracies) == 10
    assert res.losses[-1] < res.losses[0]  # it trained on both inputs
    _assert_same(before, _state(model, opt))


def test_model_returning_its_own_loss():
    torch.manual_seed(0)
    model = OwnLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _text_batches()
    res = lr_find(model, "model", batches, opt, start_lr=1e-3, end_lr=1.0, num_it=8, accuracy=True)
    assert len(res) == 8
    assert res.raw_losses == model.losses  # the loss recorded is the model's own
    assert all(0 <= a <= 1 for a in res.accuracies)  # read off .logits against the labels
    model.losses.clear()
    held = lr_find(model, "model", batches, opt, start_lr=1e-3, end_lr=1.0, num_it=3,
                   val_batches=batches[:2], accuracy=True)
    assert len(held) == 3 and len(model.losses) == 3 * (1 + 2)
    # the held-out loss is the mean of the model's losses over the two held-out batches
    assert held.raw_losses[0] == pytest.approx((model.losses[1] + model.losses[2]) / 2, rel=1e-6)


def test_a_model_loss_that_is_missing_is_named():
    model = TextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [{"input_ids": b["input_ids"]} for b in _text_batches(2)]
    with pytest.raises(TypeError, match="'labels' entry.*unpack="):
        lr_find(model, F.cross_entropy, batches, opt, num_it=3)
    with pytest.raises(TypeError, match="loss_fn='model' but the model returned Tensor"):
        lr_find(model, "model", batches, opt, num_it=3, unpack=lambda b: (b, None))


def test_custom_unpack_and_bad_unpack_results():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs = torch.randn(3, 8, 4)
    flipped = [(x.sum(1, keepdim=True), x) for x in xs]  # (target, inputs)
    res = lr_find(model, F.mse_loss, flipped, opt, start_lr=1e-3, end_lr=0.1, num_it=5,
                  unpack=lambda b: (b[1], b[0]))
    assert len(res) == 5
    with pytest.raises(TypeError, match="unpack must return \\(inputs, target\\)"):
        lr_find(model, F.mse_loss, flipped, opt, num_it=3, unpack=lambda b: b[1])
    with pytest.raises(TypeError, match="unpack must be a function"):
        lr_find(model, F.mse_loss, flipped, opt, num_it=3, unpack="flip")


class _Layouts(nn.Module):
    """Records whether each input arrives channels-last."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.seen = []

    def forward(self, image, mask):
        self.seen.append((image.is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous(),
                          mask.is_contiguous()))
        return self.conv(image).mean((1, 2, 3)) + mask.float().mean((1, 2, 3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_only_for_float_images_and_only_if_the_model_is(channels_last):
    torch.manual_seed(0)
    model = _Layouts()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = ((torch.randn(4, 3, 5, 5), torch.ones(4, 3, 5, 5, dtype=torch.long)), torch.zeros(4))
    lr_find(model, F.mse_loss, [batch], opt, start_lr=1e-3, end_lr=1e-2, num_it=3)
    assert model.seen == [(channels_last, True)] * 3  # the integer mask keeps its layout


# --- gradient accumulation ------------------------------------------------------------------------

def test_accumulation_steps_step_the_lr_once_per_n_batches_and_average():
    torch.manual_seed(0)
    n = 3
    model = nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(7)]
    seen = []

    def loss_fn(out, target):
        loss = F.mse_loss(out, target)
        seen.append((opt.param_groups[0]["lr"], loss.item(), model.weight.detach().clone()))
        return loss

    w0 = model.weight.detach().clone()
    res = lr_find(model, loss_fn, batches, opt, start_lr=1e-3, end_lr=1e-1, num_it=4,
                  accumulation_steps=n, stop_factor=None)
    assert len(res) == 4 and len(seen) == 4 * n and res.settings["accumulation_steps"] == n
    for i, lr in enumerate(res.lrs):
        group = seen[i * n:(i + 1) * n]
        assert [g[0] for g in group] == [lr] * n  # the LR moves once per n batches
        assert res.raw_losses[i] == pytest.approx(sum(g[1] for g in group) / n, rel=1e-12)
        assert all(torch.equal(g[2], group[0][2]) for g in group)  # no step inside a group
    # the first step used the mean gradient of the first n batches (the loader restarts after 7)
    w = w0.clone().requires_grad_(True)
    mean_loss = sum(F.mse_loss(x @ w.T, y) for x, y in batches[:n]) / n
    (grad,) = torch.autograd.grad(mean_loss, w)
    torch.testing.assert_close(seen[n][2], w0 - res.lrs[0] * grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.weight, w0)


def test_accumulation_restores_a_trained_resnet_bit_for_bit():
    torch.manual_seed(0)
    model = resnet_cifar(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    images, labels = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    batches = [{"x": images[i:i + 8], "labels": labels[i:i + 8]} for i in range(0, 32, 8)]
    for b in batches[:2]:  # some optimizer state to restore
        opt.zero_grad()
        F.cross_entropy(model(b["x"]), b["labels"]).backward()
        opt.step()
    model.train()
    model.bn.eval()  # a frozen BatchNorm stays frozen
    flags = [m.training for m in model.modules()]
    before = _state(model, opt)
    res = lr_find(model, F.cross_entropy, batches, opt, start_lr=1e-3, end_lr=1.0, num_it=4,
                  accumulation_steps=3, val_batches=batches[:1], accuracy=True)
    assert len(res) >= 2
    _assert_same(before, _state(model, opt))
    assert [m.training for m in model.modules()] == flags


def test_batches_running_out_inside_an_accumulation_group_end_the_test_there():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    one_shot = iter([(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(5)])
    with pytest.warns(RuntimeWarning, match="ran out after 5 batches"):
        res = lr_find(model, F.mse_loss, one_shot, opt, start_lr=1e-3, end_lr=1e-1, num_it=4,
                      accumulation_steps=2)
    assert len(res) == 2 and res.stop_lr is None


# --- the start LR, the argument order and types ---------------------------------------------------

def test_start_lr_none_starts_from_the_optimizers_lr():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.003)
    batches = [(torch.randn(8, 4), torch.randn(8, 1))]
    res = lr_find(model, F.mse_loss, batches, opt, start_lr=None, end_lr=0.3, num_it=5)
    assert res.lrs[0] == 0.003 and res.settings["start_lr"] == 0.003
    assert opt.param_groups[0]["lr"] == 0.003
    two = torch.optim.SGD([{"params": [model.weight], "lr": 0.01}, {"params": [model.bias], "lr": 0.1}])
    with pytest.raises(ValueError, match=re.escape("different LRs [0.01, 0.1]: pass start_lr")):
        lr_find(model, F.mse_loss, batches, two, start_lr=None)
    with pytest.raises(ValueError, match="start_lr must be smaller than end_lr, got start_lr=0.003"):
        lr_find(model, F.mse_loss, batches, opt, start_lr=None, end_lr=0.001)


def test_torch_lr_finder_argument_order_says_which_is_which():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8)
    before = _state(model, opt)
    with pytest.raises(TypeError) as info:
        lr_find(model, opt, criterion, loader)
    message = str(info.value)
    assert "loss_fn must be a function loss_fn(output, target) or 'model', got an optimizer (SGD)" in message
    assert "batches must be an iterable of batches" in message and "got a loss (CrossEntropyLoss)" in message
    assert "optimizer must be a torch.optim.Optimizer, got batches (DataLoader)" in message
    assert "torch-lr-finder's order" in message and "lr_find(model, criterion, loader, optimizer)" in message
    _assert_same(before, _state(model, opt))
    res = lr_find(model, criterion, loader, opt, start_lr=1e-3, end_lr=1.0, num_it=5)  # the right order
    assert len(res) == 5


@pytest.mark.parametrize("args,match", [
    (lambda m, o, b: (F.mse_loss, m, b, o), "model must be an nn.Module, got a function (mse_loss)"),
    (lambda m, o, b: (nn.MSELoss(), m, b, o), "model must be an nn.Module, got a loss (MSELoss)"),
    (lambda m, o, b: (m, "mse", b, o), "loss_fn must be a function loss_fn(output, target) or 'model', got 'mse'"),
    (lambda m, o, b: (m, F.mse_loss, b[0][0], o), "batches must be an iterable of batches"),
    (lambda m, o, b: (m, F.mse_loss, {"x": b[0][0]}, o), "batches must be an iterable of batches"),
    (lambda m, o, b: (m, F.mse_loss, o, b), "batches must be an iterable of batches (a DataLoader, a list of "
                                            "(inputs, target)), got an optimizer (SGD)"),
    (lambda m, o, b: (m, F.mse_loss, b, None), "optimizer must be a torch.optim.Optimizer, got None"),
])
def test_arguments_of_the_wrong_kind_are_named(args, match):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randn(8, 1))]
    with pytest.raises(TypeError, match=re.escape(match)):
        lr_find(*args(model, opt, batches))


@pytest.mark.parametrize("kwargs,bad", [
    (dict(accumulation_steps=0), "accumulation_steps must be an integer >= 1, got 0"),
    (dict(accumulation_steps=2.0), "accumulation_steps must be an integer >= 1, got 2.0"),
    (dict(accumulation_steps=True), "accumulation_steps must be an integer >= 1, got True"),
    (dict(best_after=-1), "best_after must be an integer >= 0, got -1"),
    (dict(best_after=False), "best_after must be an integer >= 0, got False"),
    (dict(start_lr=True), "start_lr must be a positive finite number, got True"),
    (dict(num_it=True), "num_it must be an integer >= 2, got True"),
    (dict(beta="0.9"), "beta must be in [0, 1), got '0.9'"),
    (dict(stop_factor="4"), "stop_factor must be > 1 (or None to never stop), got '4'"),
    (dict(accuracy="yes"), "accuracy must be True or False, got 'yes'"),
    (dict(endpoint=1), "endpoint must be True or False, got 1"),
])
def test_numbers_and_flags_of_the_wrong_type_are_named(kwargs, bad):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=re.escape(bad)):
        lr_find(model, F.mse_loss, [(torch.randn(8, 4), torch.randn(8, 1))], opt, **kwargs)


def test_val_batches_of_the_wrong_kind_are_named():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(8, 4), torch.randn(8, 1))
    with pytest.raises(TypeError, match=re.escape("val_batches must be an iterable of batches or None, "
                                                  "got a tensor of shape (8, 4)")):
        lr_find(model, F.mse_loss, [batch], opt, val_batches=batch[0])
    with pytest.raises(ValueError, match="val_batches is empty"):
        lr_find(model, F.mse_loss, [batch], opt, val_batches=[], num_it=3)


# --- fastai 0.7's late start of the stop rule -----------------------------------------------------

def _scripted(values):
    """A loss function that returns the given values in turn (with a zero gradient)."""
    calls = iter(values)
    return lambda out, target: out.sum() * 0.0 + next(calls)


def _tiny():
    model = nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), [(torch.ones(4, 2), torch.zeros(4, 1))]


def test_a_noisy_start_stops_the_test_unless_the_best_is_tracked_late():
    # three lucky batches at the start, then the real level: with light smoothing the smoothed
    # loss climbs past 4x its early best and the test stops a few iterations in
    values = [2.3, 0.3, 0.25, 0.25] + [2.3] * 40
    model, opt, batches = _tiny()
    early = lr_find(model, _scripted(values), batches, opt, start_lr=1e-4, end_lr=1.0, num_it=30, beta=0.6)
    assert early.stopped and len(early) < FASTAI_BEST_AFTER
    late = lr_find(model, _scripted(values), batches, opt, start_lr=1e-4, end_lr=1.0, num_it=30, beta=0.6,
                   best_after=FASTAI_BEST_AFTER)
    assert not late.stopped and len(late) == 30
    assert late.settings["best_after"] == FASTAI_BEST_AFTER == 11


@pytest.mark.parametrize("best_after", [0, 1, 3, 11])
def test_best_after_sets_the_first_iteration_that_can_stop(best_after):
    """Iterations 0..best_after-1 never become the best; the first that can stop is best_after + 1
    (fastai 0.7: ``iteration > 10`` counted from 0, so best_after=11)."""
    low, high = 0.1, 1.0
    values = [low] * (best_after + 1) + [high] * 5
    if best_after >= 1:
        values[best_after - 1] = high  # a spike the rule must not see yet
    model, opt, batches = _tiny()
    res = lr_find(model, _scripted(values), batches, opt, start_lr=1e-4, end_lr=1.0, num_it=20, beta=0.0,
                  best_after=best_after)
    assert res.stopped and len(res) == best_after + 1
    assert res.stop_lr == pytest.approx(1e-4 * 1e4 ** ((best_after + 1) / 19))


def test_a_nan_stops_the_test_even_before_the_best_is_tracked():
    model, opt, batches = _tiny()
    res = lr_find(model, _scripted([1.0, 0.9, float("nan")] + [1.0] * 10), batches, opt, start_lr=1e-4,
                  end_lr=1.0, num_it=10, best_after=FASTAI_BEST_AFTER)
    assert res.stopped and len(res) == 2


# --- losses that are not positive ---------------------------------------------------------------

def test_a_negative_loss_under_the_stop_rule_is_refused_with_what_to_do():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(3)]
    shifted = lambda out, target: F.mse_loss(out, target) - 10.0  # noqa: E731, a shifted loss
    before = _state(model, opt)
    with pytest.raises(ValueError, match=r"smoothed loss is -\d.*at iteration 0.*needs a positive loss"
                                         r".*stop_factor=None.*add a constant"):
        lr_find(model, shifted, batches, opt, start_lr=1e-4, end_lr=1.0, num_it=20)
    _assert_same(before, _state(model, opt))
    res = lr_find(model, shifted, batches, opt, start_lr=1e-4, end_lr=1e-2, num_it=20, stop_factor=None)
    assert len(res) == 20 and all(v < 0 for v in res.losses)


def test_a_loss_that_turns_negative_midway_is_refused():
    model, opt, batches = _tiny()
    with pytest.raises(ValueError, match="at iteration 3"):
        lr_find(model, _scripted([1.0, 0.5, 0.2, -3.0] + [0.1] * 10), batches, opt, start_lr=1e-4,
                end_lr=1.0, num_it=10, beta=0.0)
