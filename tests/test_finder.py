"""Tests of clrlib.finder.lr_find: the LR range test on a problem whose critical learning rate
is known in closed form, the bit-exact restore of model and optimizer, and the bookkeeping."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clrlib.data import CifarLoader
from clrlib.finder import (SUGGESTION_USES, SUGGESTIONS, FinderResult, _schedule, longest_descent,
                           lr_find)
from clrlib.models import resnet_cifar


# --- a least-squares problem with a known divergence threshold ---------------------------------

def half_mse(out, target):
    """0.5 * mean squared error: for a linear model its Hessian is X^T X / n."""
    return 0.5 * ((out - target) ** 2).mean()


class LeastSquares:
    """Full-batch linear regression in float64; plain gradient descent diverges iff lr > 2/L."""

    def __init__(self, seed: int = 0, n: int = 64, d: int = 8):
        g = torch.Generator().manual_seed(seed)
        dtype = torch.float64
        self.X = torch.randn(n, d, generator=g, dtype=dtype) * torch.linspace(0.3, 3.0, d, dtype=dtype)
        w = torch.randn(d, 1, generator=g, dtype=dtype)
        # noise, so the minimum loss (and the best smoothed loss) is not zero
        self.y = self.X @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype)
        hessian = self.X.T @ self.X / n
        self.L = torch.linalg.eigvalsh(hessian).max().item()
        self.critical_lr = 2.0 / self.L
        self.batches = [(self.X, self.y)]
        self.model = nn.Linear(d, 1, bias=False).to(dtype)
        nn.init.zeros_(self.model.weight)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)  # no momentum

    def find(self, **kwargs):
        return lr_find(self.model, half_mse, self.batches, self.optimizer, **kwargs)


def steps_to_blow_up(ratio: float, growth: float) -> int:
    """Iterations past 2/L after which the loss along the top eigenvector has grown by ``growth``.

    With lr_k = (2/L) * ratio**k, gradient descent multiplies the error along the top eigenvector
    by |1 - lr_k L| = 2 ratio**k - 1 per step, so the loss along it by the square of that.
    """
    k, log_growth = 0, 0.0
    while log_growth < math.log(growth):
        k += 1
        log_growth += 2 * math.log(2 * ratio ** k - 1)
    return k


@pytest.mark.parametrize("seed", [0, 1])
def test_exp_range_test_stops_just_above_the_divergence_threshold(seed):
    prob = LeastSquares(seed)
    crit = prob.critical_lr
    start_lr, end_lr, num_it = crit * 1e-2, crit * 1e2, 300  # two decades either side of 2/L
    res = prob.find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, mode="exp", stop_factor=4)

    assert res.stop_lr is not None and len(res) < num_it
    assert all(math.isfinite(v) for v in res.losses + res.raw_losses)
    # Lower bound: below 2/L every error component shrinks, so the raw loss and its running
    # average only fall; the loss recorded at an iteration is measured before that iteration's
    # update, so the blow-up is seen only at an LR strictly above one that exceeded 2/L.
    assert res.stop_lr > crit
    assert max(res.lrs) > crit * 0.9  # the test did get close to the threshold before stopping
    # Upper bound: the LR grows by `ratio` per iteration. At 2/L the error along the top
    # eigenvector may have been crushed (steps near 1/L nearly zero it) down to float64 rounding,
    # ~1e-16 relative, i.e. ~1e-32 in loss. The smoothed loss passes 4x the best once the raw loss
    # passes 4/(1-beta) = 200 times it. So a loss growth of 1e50 is ample, and the test must stop
    # within k(1e50) iterations past 2/L, plus the one iteration of lag.
    ratio = (end_lr / start_lr) ** (1 / (num_it - 1))
    bound = crit * ratio ** (steps_to_blow_up(ratio, 1e50) + 1)
    assert bound < 10 * crit  # the reasoning above gives a bound within a modest factor of 2/L
    assert res.stop_lr <= bound
    # every fixed-LR suggestion is a learning rate at which gradient descent still converges
    fixed = [m for m in SUGGESTIONS if SUGGESTION_USES[m].startswith("fixed LR")]
    assert fixed == ["steepest", "minimum/10", "valley"]
    for method in fixed:
        lr = res.suggest(method)
        assert start_lr <= lr < crit, (method, lr / crit)
    # The peak LRs of a cycle are visited briefly and may pass 2/L: here the smoothed loss keeps
    # falling past 2/L (the top-eigenvector error was crushed to rounding before it), so its
    # minimum, and a third of it, lie near or above 2/L. They stay below the blow-up.
    assert crit < res.min_loss_lr < res.stop_lr
    for method in ("one_cycle", "cyclic"):
        assert start_lr <= res.suggest(method) < min(res.min_loss_lr, 2 * crit), method


def test_stop_factor_none_runs_all_iterations():
    crit = LeastSquares().critical_lr
    kwargs = dict(start_lr=crit * 1e-2, end_lr=crit * 5, num_it=200, mode="exp")
    stopped = LeastSquares().find(stop_factor=4, **kwargs)
    assert stopped.stop_lr is not None and len(stopped) < 200
    full = LeastSquares().find(stop_factor=None, **kwargs)
    assert full.stop_lr is None and len(full) == 200
    assert full.lrs[-1] == pytest.approx(crit * 5)
    assert all(math.isfinite(v) for v in full.losses)
    # it went on past the point where the other one stopped, and the loss blew up there
    assert full.losses[-1] > 4 * min(full.losses)
    assert full.lrs[: len(stopped)] == stopped.lrs


def test_non_finite_loss_stops_the_test_even_without_stop_factor():
    prob = LeastSquares()
    calls = []

    def loss_fn(out, target):
        calls.append(1)
        loss = half_mse(out, target)
        return loss * float("nan") if len(calls) == 6 else loss

    res = lr_find(prob.model, loss_fn, prob.batches, prob.optimizer, start_lr=1e-4, end_lr=1e-2,
                  num_it=20, stop_factor=None)
    assert len(res) == 5 and res.stop_lr == pytest.approx(1e-4 * 100 ** (5 / 19))


# --- LR schedules inside the test ---------------------------------------------------------------

def test_linear_mode_lrs_evenly_spaced():
    prob = LeastSquares()
    start, end = prob.critical_lr * 1e-3, prob.critical_lr * 0.5  # below 2/L: never stops
    res = prob.find(start_lr=start, end_lr=end, num_it=40, mode="linear")
    assert res.stop_lr is None and len(res) == 40
    assert res.lrs[0] == pytest.approx(start, rel=1e-12)
    assert res.lrs[-1] == pytest.approx(end, rel=1e-12)
    gaps = [b - a for a, b in zip(res.lrs, res.lrs[1:])]
    assert gaps == pytest.approx([(end - start) / 39] * 39, rel=1e-9)


def test_exp_mode_lrs_geometric_and_reach_end_lr():
    prob = LeastSquares()
    start, end = prob.critical_lr * 1e-4, prob.critical_lr * 0.5
    res = prob.find(start_lr=start, end_lr=end, num_it=50, mode="exp")
    assert res.stop_lr is None and len(res) == 50
    assert res.lrs[0] == pytest.approx(start, rel=1e-12)
    assert res.lrs[-1] == pytest.approx(end, rel=1e-12)
    ratios = [b / a for a, b in zip(res.lrs, res.lrs[1:])]
    assert ratios == pytest.approx([(end / start) ** (1 / 49)] * 49, rel=1e-9)
    # below 2/L the loss only falls
    assert all(b <= a for a, b in zip(res.raw_losses, res.raw_losses[1:]))


# --- smoothing ------------------------------------------------------------------------------

def test_beta_zero_means_no_smoothing():
    prob = LeastSquares()
    res = prob.find(start_lr=1e-4, end_lr=prob.critical_lr * 3, num_it=60, beta=0.0)
    assert len(res) > 10
    assert res.losses == res.raw_losses


@pytest.mark.parametrize("beta", [0.5, 0.98])
def test_bias_corrected_smoothing_of_a_constant_is_the_constant(beta):
    prob = LeastSquares()

    def constant_loss(out, target):
        return out.sum() * 0.0 + 2.5

    res = lr_find(prob.model, constant_loss, prob.batches, prob.optimizer, start_lr=1e-3,
                  end_lr=1.0, num_it=30, beta=beta)
    assert len(res) == 30
    assert res.raw_losses == [2.5] * 30
    assert res.losses == pytest.approx([2.5] * 30, rel=1e-12)


def test_smoothed_loss_is_the_bias_corrected_ema_of_the_raw_loss():
    prob = LeastSquares()
    beta = 0.9
    res = prob.find(start_lr=1e-4, end_lr=prob.critical_lr * 0.5, num_it=30, beta=beta)
    avg, expected = 0.0, []
    for i, loss in enumerate(res.raw_losses):
        avg = beta * avg + (1 - beta) * loss
        expected.append(avg / (1 - beta ** (i + 1)))
    assert res.losses == pytest.approx(expected, rel=1e-12)
    assert res.losses[0] == pytest.approx(res.raw_losses[0], rel=1e-12)


# --- restoring the model and the optimizer, bit for bit ---------------------------------------

def _assert_same(a, b, path="state"):
    """Recursive exact equality of (optimizer / model) state dicts, tensors by torch.equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.fixture
def trained_resnet(tiny_cifar):
    """resnet_cifar(8) and an SGD (momentum, weight decay) that has taken a few steps."""
    torch.manual_seed(0)
    x, y, _, _ = tiny_cifar
    loader = CifarLoader(x[:128], y[:128], batch_size=32, device="cpu", seed=0)
    model = resnet_cifar(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    for xb, yb in loader:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    assert all("momentum_buffer" in s for s in opt.state.values())
    return model, opt, loader


def _frozen(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()),
            model.training)


def test_lr_find_restores_model_and_optimizer_bit_for_bit(trained_resnet):
    model, opt, loader = trained_resnet
    model.eval()  # the flag must come back too
    before_model, before_opt, _ = _frozen(model, opt)
    assert any(k.endswith("running_var") for k in before_model)
    assert any(k.endswith("num_batches_tracked") for k in before_model)
    seen = []

    def loss_fn(out, target):
        seen.append((model.training, model.fc.weight.detach().clone(),
                     model.bn.running_mean.clone(), opt.param_groups[0]["lr"]))
        return F.cross_entropy(out, target)

    res = lr_find(model, loss_fn, loader, opt, start_lr=1e-3, end_lr=1.0, num_it=10)
    assert len(seen) >= 3
    # the test did train (in train mode, at its own LRs), so the restore is not trivial
    assert all(training for training, *_ in seen)
    assert not torch.equal(seen[-1][1], before_model["fc.weight"])
    assert not torch.equal(seen[-1][2], before_model["bn.running_mean"])
    assert [lr for *_, lr in seen][: len(res)] == res.lrs

    _assert_same(before_model, model.state_dict())
    _assert_same(before_opt, opt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.05
    assert model.training is False


def test_lr_find_restores_when_the_loss_raises(trained_resnet):
    model, opt, loader = trained_resnet
    before_model, before_opt, before_training = _frozen(model, opt)
    assert before_training is True
    calls = []

    def failing_loss(out, target):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom in the loss")
        return F.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom in the loss"):
        lr_find(model, failing_loss, loader, opt, start_lr=1e-3, end_lr=1.0, num_it=10)
    assert len(calls) == 4
    _assert_same(before_model, model.state_dict())
    _assert_same(before_opt, opt.state_dict())
    assert model.training is True


def test_lr_find_restores_per_module_training_flags():
    """A model in train mode with a frozen BatchNorm (``bn.eval()``, a common fine-tuning setup)
    must come back exactly so: lr_find calls ``model.train()`` and restores only the top-level
    flag with ``model.train(flag)``, which puts every submodule in that mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    model.train()
    model[1].eval()  # frozen statistics
    flags = {name: m.training for name, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(3)]
    lr_find(model, F.mse_loss, batches, opt, start_lr=1e-4, end_lr=1e-2, num_it=5)
    assert {name: m.training for name, m in model.named_modules()} == flags


def test_lr_find_restores_an_optimizer_without_state():
    prob = LeastSquares()
    sgd = torch.optim.SGD(prob.model.parameters(), lr=0.01, momentum=0.9)
    assert len(sgd.state) == 0
    lr_find(prob.model, half_mse, prob.batches, sgd, start_lr=1e-4, end_lr=1e-2, num_it=5)
    assert len(sgd.state) == 0  # no momentum buffers left behind
    assert torch.equal(prob.model.weight, torch.zeros_like(prob.model.weight))


# --- held-out batches and accuracy ----------------------------------------------------------------

def _linear_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def test_accuracy_on_training_batches(tiny_cifar):
    x, y, _, _ = tiny_cifar
    loader = CifarLoader(x, y, batch_size=32, device="cpu")
    model = _linear_classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_find(model, F.cross_entropy, loader, opt, start_lr=1e-5, end_lr=1e-1, num_it=12,
                  accuracy=True, stop_factor=None)
    assert len(res.accuracies) == len(res.lrs) == 12
    assert all(0.0 <= a <= 1.0 for a in res.accuracies)
    assert all(abs(a * 32 - round(a * 32)) < 1e-6 for a in res.accuracies)  # fractions of a batch
    assert res.settings["held_out"] is False
    assert list(res.to_frame().columns) == ["lr", "loss", "raw_loss", "accuracy"]


def test_val_batches_and_accuracy(tiny_cifar):
    x, y, xt, yt = tiny_cifar
    loader = CifarLoader(x, y, batch_size=32, device="cpu")
    val = CifarLoader(xt[:40], yt[:40], batch_size=16, train=False, device="cpu")
    model = _linear_classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lr_find(model, F.cross_entropy, loader, opt, start_lr=1e-5, end_lr=1e-1, num_it=10,
                  val_batches=val, accuracy=True, stop_factor=None)
    assert res.settings["held_out"] is True
    assert len(res.accuracies) == len(res.raw_losses) == len(res.lrs) == 10
    assert all(0.0 <= a <= 1.0 for a in res.accuracies)
    assert all(abs(a * 40 - round(a * 40)) < 1e-6 for a in res.accuracies)  # fractions of 40 images
    assert all(math.isfinite(v) and v > 0 for v in res.raw_losses)
    assert model.training is True
    _assert_same(before, model.state_dict())


def test_batches_are_repeated_and_a_one_shot_iterator_warns():
    prob = LeastSquares()
    res = prob.find(start_lr=1e-4, end_lr=1e-2, num_it=7)  # one batch, repeated 7 times
    assert len(res) == 7
    one_shot = iter([(prob.X, prob.y)] * 3)
    with pytest.warns(RuntimeWarning, match="ran out after 3 batches") as caught:
        res = lr_find(prob.model, half_mse, one_shot, prob.optimizer, start_lr=1e-4, end_lr=1e-2,
                      num_it=7)
    assert len(res) == 3
    assert caught[0].filename == __file__  # the warning points at the caller's line
    with pytest.raises(ValueError, match="empty"):
        lr_find(prob.model, half_mse, [], prob.optimizer, start_lr=1e-4, end_lr=1e-2, num_it=7)


# --- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,bad", [
    (dict(start_lr=1.0, end_lr=1.0), "start_lr=1.0"),
    (dict(start_lr=2.0, end_lr=1.0), "start_lr=2.0"),
    (dict(start_lr=0.0), "0.0"),
    (dict(start_lr=-1e-3), "-0.001"),
    (dict(end_lr=float("inf")), "inf"),
    (dict(num_it=1), "1"),
    (dict(num_it=0), "0"),
    (dict(num_it=10.0), "10.0"),
    (dict(mode="cosine"), "'cosine'"),
    (dict(beta=1.0), "1.0"),
    (dict(beta=-0.1), "-0.1"),
    (dict(stop_factor=1.0), "1.0"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, bad):
    prob = LeastSquares()
    args = {**dict(start_lr=1e-4, end_lr=1.0, num_it=10), **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(ValueError) as info:
        prob.find(**args)
    assert bad in str(info.value) and name in str(info.value)
    assert torch.equal(prob.model.weight, torch.zeros_like(prob.model.weight))


def test_suggest_bad_method_and_too_short_curve():
    res = FinderResult(lrs=[1e-3, 1e-2, 1e-1, 1.0], losses=[2.0, 1.5, 1.0, 3.0])
    with pytest.raises(ValueError, match=re.escape("'bogus'")):
        res.suggest("bogus")
    short = FinderResult(lrs=[1e-3, 1e-2], losses=[2.0, 1.0])
    with pytest.raises(ValueError, match="2 points"):
        short.suggest("valley")


def test_suggestions_on_a_known_curve():
    lrs = [10.0 ** (k / 4 - 5) for k in range(25)]  # 1e-5 .. 10
    losses = [2.3, 2.3, 2.29, 2.28, 2.25, 2.2, 2.0, 1.7, 1.3, 0.95, 0.8, 0.7, 0.65, 0.6, 0.62, 0.7,
              0.9, 1.2, 1.8, 2.5, 3.5, 5.0, 7.0, 9.0, 12.0]
    res = FinderResult(lrs=lrs, losses=losses, raw_losses=losses)
    assert res.suggest("minimum/10") == pytest.approx(lrs[13] / 10)
    assert longest_descent(losses) == (0, 13)  # 2.3 > 2.29 > ... > 0.6
    assert res.suggest("valley") == lrs[6]
    assert res.suggest("steepest") == lrs[8]  # the largest drop per decade: 1.7 -> 0.95 around index 8
    assert lrs[5] < res.suggest("valley") < lrs[13]


def test_longest_descent():
    assert longest_descent([5, 4, 3, 2, 1]) == (0, 4)
    assert longest_descent([1, 2, 3]) == (0, 0)
    start, end = longest_descent([3, 9, 2, 8, 1, 7, 0])
    assert (start, end) == (0, 6)  # 3 > 2 > 1 > 0 (skipping the bumps)


# --- results: frame and plot ----------------------------------------------------------------

def test_to_frame_and_plot(no_show):
    prob = LeastSquares()
    res = prob.find(start_lr=prob.critical_lr * 1e-2, end_lr=prob.critical_lr * 1e2, num_it=120)
    frame = res.to_frame()
    assert list(frame.columns) == ["lr", "loss", "raw_loss"]
    assert len(frame) == len(res) and frame["lr"].tolist() == res.lrs
    ax = res.plot()
    assert ax.get_xscale() == "log"
    assert len(ax.get_lines()) >= 2  # the curve and the suggestion's marker
    assert ax.get_lines()[0].get_xdata().tolist() == res.lrs
    fig, given = plt.subplots()
    assert res.plot(ax=given, suggestions=SUGGESTIONS) is given
    assert given.get_xscale() == "log"


# --- read-outs on saved real curves (copies of results/quick/runs, ResNet-20 on real CIFAR-10) ---

DATA = Path(__file__).parent / "data"
WD_CURVES = ("finder_wd1e-05_seed0", "finder_wd0.0001_seed0", "finder_wd0.001_seed0",
             "finder_wd0.01_seed0")


def saved_curve(name: str) -> FinderResult:
    """A saved range test, rebuilt from its CSV and the stop LR and settings of its JSON."""
    meta = json.loads((DATA / f"{name}.json").read_text())
    return FinderResult.from_frame(pd.read_csv(DATA / f"{name}.csv"), stop_lr=meta["stop_lr"],
                                   settings=meta["finder_settings"])


def test_saved_quick_curve_read_outs():
    """wd 1e-4, batch 256, 1e-5 to 100 over 100 iterations: it stopped at LR 38 after 93."""
    res = saved_curve("finder_seed0")
    assert len(res) == 93 and res.stopped
    assert res.blowup_lr == res.stop_lr == pytest.approx(37.65, rel=1e-3)
    assert res.min_loss_lr == pytest.approx(5.337, rel=1e-3)
    # the post's advice: 1cycle peak a bit before the minimum, CLR top about a tenth of the blow-up
    assert 0.5 <= res.one_cycle_max_lr() <= 5
    assert res.one_cycle_max_lr() == pytest.approx(res.min_loss_lr / 3) == res.suggest("one_cycle")
    assert res.suggest() == res.one_cycle_max_lr()  # the default suggestion is the 1cycle peak
    assert res.cyclic_max_lr() == pytest.approx(3.765, rel=1e-3) == res.suggest("cyclic")
    assert res.one_cycle_max_lr(divisor=10) == res.suggest("minimum/10") == pytest.approx(0.5337, rel=1e-3)
    # the fixed-LR rules sit two to three orders of magnitude lower, and say so
    assert res.suggest("valley") == pytest.approx(0.00673, rel=1e-2)
    assert res.suggest("steepest") == pytest.approx(0.00156, rel=1e-2)
    assert res.one_cycle_max_lr() > 100 * max(res.suggest("valley"), res.suggest("steepest"))
    assert {m: SUGGESTION_USES[m] for m in ("steepest", "valley", "one_cycle")} == {
        "steepest": "fixed LR, conservative", "valley": "fixed LR", "one_cycle": "1cycle max LR"}


@pytest.mark.parametrize("name", WD_CURVES)
def test_saved_weight_decay_curves_read_outs(name):
    """The weight-decay sweep (start LR 0.01): the 1cycle peak lies below the minimum, within
    the post's range, and well above the fixed-LR rules."""
    res = saved_curve(name)
    assert res.stopped and 15 < res.blowup_lr < 50
    assert 0.5 < res.min_loss_lr < 5
    one_cycle = res.one_cycle_max_lr()
    assert 0.2 < one_cycle < 2 and one_cycle < res.min_loss_lr < res.blowup_lr
    assert res.loss_at(one_cycle) > min(res.losses)  # still on the descent
    assert res.cyclic_max_lr() == pytest.approx(res.blowup_lr / 10)
    assert 1.5 < res.cyclic_max_lr() < 5
    for method in ("steepest", "valley", "minimum/10"):
        assert res.suggest(method) < one_cycle, method
    assert one_cycle > 5 * res.suggest("steepest")


def test_weight_decay_curves_blow_up_earlier_with_more_decay():
    blowups = [saved_curve(name).blowup_lr for name in WD_CURVES]
    assert blowups == sorted(blowups, reverse=True)


def test_schedule_divides_by_num_it_minus_one_unlike_fastai():
    """The post's test (1e-5 to 100 over 98 iterations) stopped at iteration 93, LR 44 under
    fastai's ``i / num_it``; under clrlib's ``i / (num_it - 1)`` iteration 93 is at LR 51."""
    lrs = _schedule(1e-5, 100.0, 98, "exp")
    assert lrs[-1] == pytest.approx(100.0)
    assert lrs[93] == pytest.approx(51.44, rel=1e-3)
    assert 1e-5 * 1e7 ** (93 / 98) == pytest.approx(43.94, rel=1e-3)


# --- read-outs: stopped, blow-up, minimum --------------------------------------------------------

def test_blowup_lr_of_a_test_that_never_stopped_is_the_last_lr():
    res = FinderResult(lrs=[1e-3, 1e-2, 1e-1], losses=[2.0, 1.0, 1.5], raw_losses=[2.0, 1.0, 1.5])
    assert not res.stopped and res.blowup_lr == 1e-1
    assert res.cyclic_max_lr() == pytest.approx(1e-2)
    stopped = FinderResult(lrs=res.lrs, losses=res.losses, stop_lr=0.2)
    assert stopped.stopped and stopped.blowup_lr == 0.2
    with pytest.raises(ValueError, match="0 points"):
        FinderResult().blowup_lr
    with pytest.raises(ValueError, match="0 points"):
        FinderResult().min_loss_lr


def test_min_loss_lr_and_one_cycle_rule():
    lrs = [10.0 ** (k / 4 - 3) for k in range(13)]
    losses = [2.3, 2.2, 2.0, 1.7, 1.5, 1.4, 1.3, 1.3, 1.35, 1.5, 2.0, 3.0, 5.0]
    res = FinderResult(lrs=lrs, losses=losses, raw_losses=losses, stop_lr=10.0)
    assert res.min_loss_lr == lrs[6]  # the first of a tie
    assert res.one_cycle_max_lr() == pytest.approx(lrs[6] / 3)
    assert res.one_cycle_max_lr(divisor=10 ** 0.5) == pytest.approx(lrs[4])
    for bad in (1.0, 0.5, -3, "3"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            res.one_cycle_max_lr(divisor=bad)
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            res.cyclic_max_lr(divisor=bad)


def test_bottom_end_lr_is_the_last_lr_near_the_minimum():
    lrs = [10.0 ** (k / 4 - 3) for k in range(13)]
    losses = [2.3, 2.2, 2.0, 1.7, 1.5, 1.4, 1.3, 1.3, 1.35, 1.5, 2.0, 3.0, 5.0]  # descent 1.0
    res = FinderResult(lrs=lrs, losses=losses, stop_lr=10.0)
    assert res.bottom_end_lr() == lrs[8]                # 1.35 is within 0.1 x 1.0 of 1.3; 1.5 is not
    assert res.bottom_end_lr(tolerance=0.04) == lrs[7]
    assert res.bottom_end_lr(tolerance=0.2) == lrs[9]
    assert res.bottom_end_lr(tolerance=0.0) == lrs[7]   # the tie with the minimum
    dip = FinderResult(lrs=lrs, losses=losses[:10] + [1.32, 3.0, 5.0])  # a dip after a climb: not the bottom
    assert dip.bottom_end_lr(tolerance=0.05) == lrs[8]
    rising = FinderResult(lrs=lrs[:3], losses=[1.0, 1.5, 3.0])
    assert rising.bottom_end_lr() == lrs[0]
    for bad in (-0.1, 1.5, "0.1", None, True):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            res.bottom_end_lr(tolerance=bad)
    with pytest.raises(ValueError, match="0 points"):
        FinderResult().bottom_end_lr()


def test_one_cycle_rule_warns_when_the_loss_only_rises():
    res = FinderResult(lrs=[0.1, 1.0, 10.0], losses=[1.0, 1.5, 3.0], raw_losses=[1.0, 1.5, 3.0])
    with pytest.warns(RuntimeWarning, match="smaller start_lr"):
        assert res.one_cycle_max_lr() == pytest.approx(0.1 / 3)


# --- from_frame ------------------------------------------------------------------------------

def test_from_frame_round_trips_a_live_result():
    prob = LeastSquares()
    res = prob.find(start_lr=prob.critical_lr * 1e-2, end_lr=prob.critical_lr * 1e2, num_it=120)
    assert res.stopped
    back = FinderResult.from_frame(res.to_frame(), stop_lr=res.stop_lr, settings=res.settings)
    assert back == res
    assert (back.blowup_lr, back.min_loss_lr, back.one_cycle_max_lr(), back.stopped) == (
        res.blowup_lr, res.min_loss_lr, res.one_cycle_max_lr(), True)
    assert back.settings is not res.settings  # a copy


def test_from_frame_round_trips_a_saved_curve_and_an_unstopped_one(tmp_path):
    res = saved_curve("finder_seed0")
    assert len(res.accuracies) == len(res) and res.settings["accuracy"] is True
    assert FinderResult.from_frame(res.to_frame(), res.stop_lr, res.settings) == res
    res.to_frame().to_csv(tmp_path / "curve.csv", index=False)  # and through a CSV file
    frame = pd.read_csv(tmp_path / "curve.csv")
    assert FinderResult.from_frame(frame, res.stop_lr, res.settings) == res
    prob = LeastSquares()
    full = prob.find(start_lr=1e-4, end_lr=prob.critical_lr * 0.5, num_it=20)
    back = FinderResult.from_frame(full.to_frame(), settings=full.settings)
    assert back == full and not back.stopped and back.accuracies == []
    assert back.blowup_lr == full.lrs[-1]


def test_from_frame_checks_its_input():
    with pytest.raises(ValueError, match=r"missing \['loss'\].*\['lr', 'raw_loss'\]"):
        FinderResult.from_frame(pd.DataFrame({"lr": [1.0], "raw_loss": [2.0]}))
    with pytest.raises(ValueError, match="-1.0"):
        FinderResult.from_frame(pd.DataFrame({"lr": [1.0], "loss": [2.0]}), stop_lr=-1.0)
    res = FinderResult.from_frame(pd.DataFrame({"lr": [1.0, 2.0], "loss": [2.0, 1.0]}), stop_lr=3)
    assert res.raw_losses == [] and res.stop_lr == 3.0 and isinstance(res.stop_lr, float)


# --- a loss that is not finite from the start ----------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_at_the_first_iteration_raises(bad):
    prob = LeastSquares()
    sgd = torch.optim.SGD(prob.model.parameters(), lr=0.01, momentum=0.9)

    def broken_loss(out, target):
        return half_mse(out, target) * bad

    with pytest.raises(ValueError, match=r"not finite \((nan|inf)\) at the first iteration.*"
                                         r"LR 0\.002.*smaller start_lr.*check the data"):
        lr_find(prob.model, broken_loss, prob.batches, sgd, start_lr=2e-3, end_lr=1.0, num_it=10)
    assert torch.equal(prob.model.weight, torch.zeros_like(prob.model.weight))  # restored
    assert len(sgd.state) == 0 and sgd.param_groups[0]["lr"] == 0.01


# --- precision -----------------------------------------------------------------------------------

def _dtype_seen(precision=None, amp=None):
    """The dtype of the model's output inside lr_find (float32 model, on the CPU), and the result."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    seen = []

    def loss_fn(out, target):
        seen.append(out.dtype)
        return F.cross_entropy(out.float(), target)

    res = lr_find(model, loss_fn, batches, opt, start_lr=1e-3, end_lr=1e-2, num_it=3,
                  precision=precision, amp=amp)
    return set(seen), res


@pytest.mark.parametrize("precision,amp,dtype,recorded", [
    ("bf16", None, torch.bfloat16, "bf16"),
    ("fp32", None, torch.float32, "fp32"),
    (None, None, torch.float32, "fp32"),  # the old default: bf16 autocast on CUDA only
    ("auto", None, torch.float32, "fp32"),
    (None, True, torch.bfloat16, "bf16"),
    ("bf16", True, torch.bfloat16, "bf16"),
    ("fp32", False, torch.float32, "fp32"),
])
def test_precision_maps_onto_amp_and_is_recorded(precision, amp, dtype, recorded):
    seen, res = _dtype_seen(precision, amp)
    assert seen == {dtype}
    assert res.settings["precision"] == recorded


@pytest.mark.parametrize("precision,amp,match", [
    ("bf16", False, "precision='bf16' contradicts amp=False"),
    ("fp32", True, "precision='fp32' contradicts amp=True"),
    ("fp16", None, "'fp16'"),
])
def test_bad_or_conflicting_precision_raises(precision, amp, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        _dtype_seen(precision, amp)


@pytest.mark.parametrize("precision,dtype", [(None, torch.float32), ("bf16", torch.bfloat16)])
def test_held_out_losses_use_the_recorded_precision(monkeypatch, precision, dtype):
    """On its own, evaluate() follows the CPU's default precision; inside the range test the
    held-out forward passes must use the test's own (recorded) one, like the training steps."""
    import sys

    from clrlib import train as T
    for module in (T, sys.modules.get("clrlib.device")):  # where the device policy lives
        if module is not None and hasattr(module, "cpu_has_native_bf16"):
            monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)  # a CPU whose default is bf16
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(4)]
    result = lr_find(model, torch.nn.functional.mse_loss, batches, opt, start_lr=1e-4, end_lr=1e-2,
                     num_it=5, val_batches=batches[:1], precision=precision)
    assert result.settings["precision"] == ("bf16" if precision else "fp32")
    held_out = [d for training, d in seen if not training]
    assert len(held_out) == 5 and set(held_out) == {dtype}
    assert {d for training, d in seen if training} == {dtype}


def test_a_range_test_can_show_a_progress_bar_and_prints_nothing_otherwise(capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lr_find(model, torch.nn.functional.cross_entropy, data, opt, start_lr=1e-3, end_lr=1.0, num_it=5)
    assert capsys.readouterr() == ("", "")
    lr_find(model, torch.nn.functional.cross_entropy, data, opt, start_lr=1e-3, end_lr=1.0, num_it=5, progress=True)
    err = capsys.readouterr().err
    assert "range test" in err and "/5 [" in err, err
    with pytest.raises(ValueError, match="progress must be True or False, got 'yes'"):
        lr_find(model, torch.nn.functional.cross_entropy, data, opt, start_lr=1e-3, end_lr=1.0, num_it=5,
                progress="yes")
