"""The CASD discriminators (upstream ``ResnetDiscriminator`` with n_downsampling=2, n_blocks=0).

D_PB judges (image, target pose): ``Discriminator(33)`` on cat(image, 18 keypoint
maps, 12 limb maps); D_PP judges (image, source image): ``Discriminator(6)``.

Reflect-padded 7x7 conv, then two 3x3 stride-2 convs, each followed by instance
norm (no affine) and ReLU. There is no final 1-channel conv: the LSGAN targets
apply to every value of the [B, 4*width, H/4, W/4] ReLU feature map, as
upstream. Parameter names match upstream (``model.1``, ``model.4``, ``model.7``).
"""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """x [B,in_channels,H,W] -> scores [B,4*width,ceil(H/4),ceil(W/4)] (>= 0)."""

    def __init__(self, in_channels: int, width: int = 64, downsamplings: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7),
                                   nn.InstanceNorm2d(width), nn.ReLU(inplace=True)]
        for i in range(downsamplings):
            cin = width * 2 ** i
            layers += [nn.Conv2d(cin, 2 * cin, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * cin),
                       nn.ReLU(inplace=True)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
