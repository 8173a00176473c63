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
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "ResNetCifar", "resnet_cifar", "resnet20", "resnet56", "DEPTHS"]

DEPTHS = (20, 32, 44, 56, 110)
SHORTCUTS = ("A", "B")


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
    """The CIFAR ResNet of He et al.: ``blocks_per_stage`` basic blocks in each of 3 stages."""

    def __init__(self, blocks_per_stage: int, shortcut: str = "B", num_classes: int = 10,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
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
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # He et al.'s initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet_cifar(depth: int = 56, shortcut: str = "B", num_classes: int = 10) -> ResNetCifar:
    """A CIFAR ResNet of ``depth`` = 6n+2 layers (20, 32, 44, 56, 110, or any 6n+2).

    Args:
        depth: number of weighted layers; must be 6n + 2 with n >= 1.
        shortcut: "A" (zero-padded identity, the paper) or "B" (1x1 conv + BN, the post).
        num_classes: size of the output.
    """
    if not (isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0):
        raise ValueError(f"depth must be 6n+2 for an integer n >= 1 (e.g. {DEPTHS}), got {depth!r}")
    return ResNetCifar((depth - 2) // 6, shortcut=shortcut, num_classes=num_classes)


def resnet56(shortcut: str = "B", num_classes: int = 10) -> ResNetCifar:
    """ResNet-56 for CIFAR: 853,018 parameters with shortcut "A", 855,770 with "B"."""
    return resnet_cifar(56, shortcut, num_classes)


def resnet20(shortcut: str = "B", num_classes: int = 10) -> ResNetCifar:
    """ResNet-20 for CIFAR, the shallow sibling used by the CPU ("quick") profile."""
    return resnet_cifar(20, shortcut, num_classes)
