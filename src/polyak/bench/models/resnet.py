"""Small CIFAR-style residual networks (He et al., 2016, Sec. 4.2).

``ResNet8`` is the 6n+2 network with n = 1: a 3x3 stem, three stages of one
basic block each (16, 32, 64 channels, the last two downsampling by 2), global
average pooling and a linear classifier. Shortcuts that change shape use a 1x1
convolution with BatchNorm (He et al.'s option B), which gives about 78K
parameters for 3 input channels and 10 classes. Global pooling makes the network
work on any input size of at least 8x8 (28x28 MNIST and 32x32 CIFAR alike).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows has its own shift.
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (post-activation)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: stem, stages of basic blocks, global pooling, linear head.

    Args:
        blocks_per_stage: number of basic blocks in each stage (ResNet-(6n+2): n in every stage).
        widths: channels of each stage; stages after the first halve the resolution.
        in_channels: channels of the input images (1 for MNIST, 3 for CIFAR/SVHN).
        num_classes: outputs of the linear head.
    """

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (1, 1, 1),
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        num_classes: int = 10,
    ):
        super().__init__()
        if len(blocks_per_stage) != len(widths) or not widths:
            raise ValueError(
                f"blocks_per_stage {tuple(blocks_per_stage)} and widths {tuple(widths)} must have the same, "
                "non-zero length (one entry per stage)"
            )
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels ({in_channels}) and num_classes ({num_classes}) must be positive")
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages = []
        channels = widths[0]
        for stage_index, (num_blocks, width) in enumerate(zip(blocks_per_stage, widths)):
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(features)


def ResNet8(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """The 8-layer CIFAR ResNet (one basic block per stage, 16/32/64 channels)."""
    return CifarResNet((1, 1, 1), (16, 32, 64), in_channels=in_channels, num_classes=num_classes)
