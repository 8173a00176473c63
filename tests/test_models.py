"""Tests of clrlib.models: the CIFAR ResNets of He et al. (2016), sizes, shapes and init."""
from __future__ import annotations

import doctest
import inspect
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clrlib.data import CifarLoader, synthetic_cifar10
from clrlib.models import (DEPTHS, INITS, BasicBlock, ResNetCifar, init_weights, resnet20, resnet56,
                           resnet_cifar)

# The table of models.py's docstring: depth -> (params with shortcut A, with shortcut B)
PARAMS = {
    20: (269_722, 272_474),
    32: (464_154, 466_906),
    44: (658_586, 661_338),
    56: (853_018, 855_770),
    110: (1_727_962, 1_730_714),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet56_parameter_counts():
    assert n_params(resnet56("A")) == 853_018  # He et al.: 0.85M
    assert n_params(resnet56("B")) == 855_770
    assert n_params(resnet56()) == 855_770  # B (the post's notebook) is the default


@pytest.mark.parametrize("depth", DEPTHS)
def test_parameter_counts_match_the_docstring_table(depth):
    a, b = PARAMS[depth]
    assert n_params(resnet_cifar(depth, "A")) == a
    assert n_params(resnet_cifar(depth, "B")) == b
    # the two 1x1 projections with their BatchNorms: 16*32 + 2*32 + 32*64 + 2*64
    assert b - a == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_docstring_table_is_the_one_tested():
    import clrlib.models as models
    for depth, (a, b) in PARAMS.items():
        assert f"{a:,}" in models.__doc__ and f"{b:,}" in models.__doc__
    assert tuple(PARAMS) == DEPTHS


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_output_shape(shortcut):
    torch.manual_seed(0)
    model = resnet_cifar(20, shortcut).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_resnet56_forward_both_shortcuts():
    x = torch.randn(2, 3, 32, 32)
    for shortcut in "AB":
        with torch.no_grad():
            assert resnet56(shortcut).eval()(x).shape == (2, 10)


def test_num_classes():
    model = resnet_cifar(8, num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.fc.out_features == 100
    assert resnet20(num_classes=7).fc.out_features == 7


def test_any_6n_plus_2_depth_and_block_counts():
    for depth in (8, 14, 20, 26):
        model = resnet_cifar(depth)
        n = (depth - 2) // 6
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        assert len(blocks) == 3 * n
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(convs) + len(linears) == depth  # "depth" counts the weighted layers
    assert isinstance(resnet20(), ResNetCifar)


@pytest.mark.parametrize("bad", [21, 0, 2, 57, 6, 20.0, "56"])
def test_bad_depth_raises_naming_it(bad):
    with pytest.raises(ValueError, match="6n\\+2") as info:
        resnet_cifar(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["C", "a", None])
def test_bad_shortcut_raises_naming_it(bad):
    with pytest.raises(ValueError) as info:
        resnet_cifar(20, shortcut=bad)
    assert repr(bad) in str(info.value)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="0"):
        resnet_cifar(8, num_classes=0)


def _one_by_one_convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]


@pytest.mark.parametrize("depth", [8, 56])
def test_shortcut_a_has_no_1x1_convs_and_b_exactly_two(depth):
    assert _one_by_one_convs(resnet_cifar(depth, "A")) == []
    convs_b = _one_by_one_convs(resnet_cifar(depth, "B"))
    assert len(convs_b) == 2
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs_b] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_shortcut_a_zero_pads_the_new_channels():
    block = BasicBlock(16, 32, stride=2, shortcut="A")
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_models_learn_a_step():
    torch.manual_seed(0)
    model = resnet_cifar(8)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- initialisation: "post" (PyTorch 0.3.1's defaults) and "kaiming" (He et al.) ---------------

def _weighted(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _fan_in(layer):
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    return layer.in_features


def _model(init, depth=56, shortcut="B", seed=0):
    torch.manual_seed(seed)
    return resnet_cifar(depth, shortcut, init=init)


def test_inits_and_defaults():
    assert INITS == ("post", "kaiming")
    for fn in (ResNetCifar.__init__, resnet_cifar, resnet56, resnet20):
        assert inspect.signature(fn).parameters["init"].default == "kaiming", fn


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_post_init_conv_and_linear_uniform_in_plus_minus_one_over_sqrt_fan_in(shortcut):
    model = _model("post", shortcut=shortcut)
    big = 0
    for layer in _weighted(model):
        bound = 1 / math.sqrt(_fan_in(layer))
        w = layer.weight.detach()
        assert w.abs().max() <= bound, layer
        assert w.abs().max() > 0.9 * bound, layer  # the whole interval is used
        if layer.bias is not None:  # the classifier: bias from the same uniform
            assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0
        if w.numel() >= 2000:  # variance of U(-b, b) is b^2/3; relative std error < 2%
            big += 1
            assert w.var().item() == pytest.approx(bound ** 2 / 3, rel=0.1), layer
            assert abs(w.mean().item()) < 0.1 * bound
    assert big >= 50


def test_post_init_batchnorm_weight_uniform_0_1_bias_0():
    model = _model("post")
    weights = torch.cat([bn.weight.detach() for bn in _batchnorms(model)])
    assert len(weights) == 2128  # 16 + 18 * (16 + 32 + 64) + 32 + 64 channels
    assert weights.min() >= 0 and weights.max() <= 1
    assert weights.mean().item() == pytest.approx(0.5, abs=0.03)
    assert weights.var().item() == pytest.approx(1 / 12, rel=0.1)
    for bn in _batchnorms(model):
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_kaiming_init_variance_two_over_fan_in_and_batchnorm_one():
    model = _model("kaiming")
    for layer in _weighted(model):
        w = layer.weight.detach()
        if w.numel() >= 2000:  # normal: relative std error of the variance < 3%
            assert w.var().item() == pytest.approx(2 / _fan_in(layer), rel=0.15), layer
    for bn in _batchnorms(model):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    bound = 1 / math.sqrt(64)  # the classifier's bias keeps torch's default U(-1/8, 1/8)
    assert 0 < model.fc.bias.abs().max() <= bound


def test_kaiming_is_the_default_and_unchanged():
    torch.manual_seed(0)
    default = resnet_cifar(20)
    kaiming = _model("kaiming", depth=20)
    for (name, a), b in zip(default.state_dict().items(), kaiming.state_dict().values()):
        assert torch.equal(a, b), name


def _conv_sq_norm(model):
    return sum(m.weight.detach().pow(2).sum().item() for m in model.modules() if isinstance(m, nn.Conv2d))


def test_conv_weight_squared_norm_kaiming_over_post_is_about_six():
    # per layer E|w|^2 is 2 (kaiming) against 1/3 (post) times numel/fan_in: ratio 6.
    # Measured on ResNet-56 (B), seeds 0-2: 5.98, 6.01, 6.01 (about 4250 against 710).
    for seed in range(2):
        ratio = _conv_sq_norm(_model("kaiming", seed=seed)) / _conv_sq_norm(_model("post", seed=seed))
        assert ratio == pytest.approx(6.0, rel=0.05), seed


def test_post_init_is_reproducible_from_the_global_seed():
    a, b, c = _model("post", depth=8), _model("post", depth=8), _model("post", depth=8, seed=1)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
        if "weight" in name:
            assert not torch.equal(x, z), name


@pytest.fixture(scope="module")
def cifar_batch():
    x, y, *_ = synthetic_cifar10(128, 8)
    return next(iter(CifarLoader(x, y, batch_size=128, device="cpu", train=False)))


def _first_loss(init, batch, seed):
    model = _model(init, depth=20, seed=seed).train()
    with torch.no_grad():
        return F.cross_entropy(model(batch[0]), batch[1]).item()


def test_first_loss_post_near_ln10_kaiming_larger(cifar_batch):
    # ResNet-20 (B) in train mode on one normalised synthetic batch of 128, seeds 0-2.
    # Measured: post 2.34, 2.44, 2.40; kaiming 3.15, 2.97, 3.34 (ln 10 = 2.30).
    post = [_first_loss("post", cifar_batch, s) for s in range(3)]
    kaiming = [_first_loss("kaiming", cifar_batch, s) for s in range(3)]
    assert all(2.0 < loss < 3.0 for loss in post), post
    assert sum(kaiming) / 3 > 2.8, kaiming
    assert sum(kaiming) / 3 > sum(post) / 3 + 0.4, (post, kaiming)


def test_init_weights_on_any_module():
    torch.manual_seed(0)
    net = init_weights(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)), "post")
    assert net[0].weight.abs().max() <= 1 / math.sqrt(27) and net[0].bias.abs().max() <= 1 / math.sqrt(27)
    assert 0 <= net[1].weight.min() and net[1].weight.max() <= 1 and net[1].bias.abs().sum() == 0
    init_weights(net, "kaiming")
    assert torch.equal(net[1].weight, torch.ones(8))


@pytest.mark.parametrize("bad", ["xavier", "Post", "", None, 1, ("post",)])
def test_bad_init_raises_naming_it(bad):
    for build in (lambda: resnet_cifar(8, init=bad), lambda: resnet20(init=bad),
                  lambda: resnet56("A", init=bad), lambda: ResNetCifar(1, init=bad),
                  lambda: init_weights(nn.Linear(2, 2), bad)):
        with pytest.raises(ValueError, match="init must be") as info:
            build()
        assert repr(bad) in str(info.value)


def test_models_docstring_examples_hold():
    import clrlib.models as models
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    failed, attempted = [], 0
    for test in finder.find(models, globs=dict(vars(models))):
        attempted += runner.run(test, out=failed.append).attempted
    assert attempted >= 6
    assert not failed, "".join(failed)
