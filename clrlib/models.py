"""ResNets for CIFAR (He et al. 2016, section 4.2), ResNet-56 among them.

K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, https://arxiv.org/abs/1512.03385

A 3x3 conv with 16 filters, then three stages of ``n`` basic blocks with 16, 32 and
64 filters (the 2nd and 3rd stages start with stride 2), global average pooling and
a linear classifier: ``depth = 6n + 2`` layers.

======  ===  ================  ================
depth    n   params, shortcut A  params, shortcut B
======  ===  ================  ================
20       3        269,722           272,474
32       5        464,154           466,906
44       7        658,586           661,338
56       9        853,018 (0.85M)   855,770
110     18      1,727,962 (1.7M)  1,730,714
======  ===  ================  ================

Shortcut "A" is the paper's parameter-free identity: subsample by 2 and pad the new
channels with zeros. Shortcut "B" is a 1x1 convolution with stride 2 followed by
BatchNorm where the shape changes, as in the post's notebook.

Initialisation (the ``init`` argument, one of :data:`INITS`):

* ``"kaiming"`` (the default): He et al.'s ``kaiming_normal_`` (fan-in, ReLU gain) on
  every conv and linear weight, variance ``2 / fan_in``; BatchNorm weight 1, bias 0;
  the classifier's bias keeps PyTorch's default.
* ``"post"``: what the post's code really got, PyTorch 0.3.1's default
  ``reset_parameters``: conv and linear weights (and biases, e.g. the classifier's)
  from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, variance ``1 / (3 fan_in)``, with
  ``fan_in = in_channels * kh * kw`` (conv) or ``in_features`` (linear); BatchNorm
  weights from ``U(0, 1)`` (mean 0.5, PyTorch 0.3's default, not 1) and bias 0.

So "post" gives conv weights a squared norm about 6 times smaller than "kaiming"
(``2 / fan_in`` against ``1 / (3 fan_in)`` for every layer). A conv followed by
BatchNorm is invariant to the scale of its weights, but the size of an SGD step
relative to the weights is not: the same learning rate moves the smaller "post"
weights further, a larger effective learning rate (and a first loss near
``ln(10)`` rather than above it). Both draw from the global RNG: seed with
``torch.manual_seed`` for a reproducible model.

Example:
    >>> _ = torch.manual_seed(0)
    >>> model = resnet_cifar(8, init="post")
    >>> bool(model.bn.weight.min() >= 0 and model.bn.weight.max() <= 1)
    True
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "ResNetCifar", "resnet_cifar", "resnet20", "resnet56", "DEPTHS", "INITS",
           "init_weights"]

DEPTHS = (20, 32, 44, 56, 110)
SHORTCUTS = ("A", "B")
INITS = ("post", "kaiming")
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _check_init(init: str) -> None:
    if not (isinstance(init, str) and init in INITS):
        raise ValueError(f"init must be 'post' or 'kaiming', got {init!r}")


def _fan_in(weight: torch.Tensor) -> int:
    """Inputs per output unit: ``in_channels * kh * kw`` (conv, no groups) or ``in_features``."""
    return weight[0].numel()


def _init_post(model: nn.Module) -> None:
    """PyTorch 0.3.1's defaults: U(+-1/sqrt(fan_in)) weights and biases, BN weight U(0, 1)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = 1.0 / math.sqrt(_fan_in(m.weight))
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -bound, bound)
        elif isinstance(m, _BATCHNORMS) and m.affine:
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


def _init_kaiming(model: nn.Module) -> None:
    """He et al.: kaiming_normal_ conv/linear weights, BN weight 1 and bias 0, biases untouched."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, _BATCHNORMS) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_weights(model: nn.Module, init: str = "kaiming") -> nn.Module:
    """(Re-)initialise the conv, linear and BatchNorm layers of ``model`` in place.

    Args:
        model: any module; its ``Conv2d``, ``Linear`` and BatchNorm layers are reset,
            in the order of ``model.modules()``, from the global RNG.
        init: ``"post"`` (PyTorch 0.3.1's defaults, what the post's code had) or
            ``"kaiming"`` (He et al.); see the module docstring.

    Returns:
        ``model`` itself.

    Example:
        >>> layer = init_weights(nn.Sequential(nn.Linear(4, 2)), init="post")
        >>> bool(layer[0].weight.abs().max() <= 0.5)
        True
    """
    _check_init(init)
    (_init_post if init == "post" else _init_kaiming)(model)
    return model


class ZeroPadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the extra channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; ReLU after the addition."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(planes - in_planes)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNet of He et al.: ``blocks_per_stage`` basic blocks in each of 3 stages.

    Args:
        blocks_per_stage: ``n``, the number of basic blocks in each stage.
        shortcut: "A" (zero-padded identity) or "B" (1x1 conv + BN).
        num_classes: size of the output.
        widths: filters of the three stages.
        init: "kaiming" (default) or "post" (PyTorch 0.3.1's defaults); see :data:`INITS`.

    Example:
        >>> ResNetCifar(1, init="post").fc.out_features
        10
    """

    def __init__(self, blocks_per_stage: int, shortcut: str = "B", num_classes: int = 10,
                 widths: tuple[int, int, int] = (16, 32, 64), init: str = "kaiming") -> None:
        super().__init__()
        _check_init(init)
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (1x1 conv), got {shortcut!r}")
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet_cifar(depth: int = 56, shortcut: str = "B", num_classes: int = 10,
                 init: str = "kaiming") -> ResNetCifar:
    """A CIFAR ResNet of ``depth`` = 6n+2 layers (20, 32, 44, 56, 110, or any 6n+2).

    Args:
        depth: number of weighted layers; must be 6n + 2 with n >= 1.
        shortcut: "A" (zero-padded identity, the paper) or "B" (1x1 conv + BN, the post).
        num_classes: size of the output.
        init: "kaiming" (He et al., the default here) or "post" (PyTorch 0.3.1's defaults, what
            the post's code had, and the default of :class:`clrlib.lab.specs.ModelSpec`, so of
            every run of the notebook suite); drawn from the global RNG.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> a = resnet_cifar(8, init="post")
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(a.conv.weight, resnet_cifar(8, init="post").conv.weight)
        True
    """
    if not (isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0):
        raise ValueError(f"depth must be 6n+2 for an integer n >= 1 (e.g. {DEPTHS}), got {depth!r}")
    return ResNetCifar((depth - 2) // 6, shortcut=shortcut, num_classes=num_classes, init=init)


def resnet56(shortcut: str = "B", num_classes: int = 10, init: str = "kaiming") -> ResNetCifar:
    """ResNet-56 for CIFAR: 853,018 parameters with shortcut "A", 855,770 with "B".

    Args: as :func:`resnet_cifar`.

    Example:
        >>> resnet56("A", init="post").fc.in_features
        64
    """
    return resnet_cifar(56, shortcut, num_classes, init=init)


def resnet20(shortcut: str = "B", num_classes: int = 10, init: str = "kaiming") -> ResNetCifar:
    """ResNet-20 for CIFAR, the shallow sibling used by the CPU ("quick") profile.

    Args: as :func:`resnet_cifar`.

    Example:
        >>> resnet20(num_classes=7, init="post").fc.out_features
        7
    """
    return resnet_cifar(20, shortcut, num_classes, init=init)
