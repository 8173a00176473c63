"""Tests of clrlib.models: the CIFAR ResNets of He et al. (2016), sizes and shapes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from clrlib.models import DEPTHS, BasicBlock, ResNetCifar, resnet20, resnet56, resnet_cifar

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
