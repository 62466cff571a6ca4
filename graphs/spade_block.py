"""A SPADE generator block: SPADE ResBlk of Park et al. 2019 (official
``SPADEResnetBlock``): two SPADE -> LeakyReLU(0.2) -> 3x3 conv steps, and a learned shortcut
(SPADE -> 1x1 conv without bias) when the channel count changes; every SPADE reads the
segmentation map, resized to its input. Spectral norm (an option of the official block) is
left out: it is a training-time weight reparametrisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normexport.nn import SPADE

from ._common import calibrate, seeded


class SPADEResBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 16):
        super().__init__()
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = nn.Conv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, 3, padding=1)
        self.norm_0 = SPADE(fin, label_nc, hidden_features=hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden_features=hidden)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc, hidden_features=hidden)

    def shortcut(self, x, seg):
        return self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, segmap), 2e-1))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, segmap), 2e-1))
        return self.shortcut(x, segmap) + dx


def _segmap(gen, n: int, label_nc: int, h: int, w: int) -> torch.Tensor:
    labels = torch.randint(0, label_nc, (n, h, w), generator=gen)
    return F.one_hot(labels, label_nc).permute(0, 3, 1, 2).float()


@seeded(6)
def build():
    gen = torch.Generator().manual_seed(6)
    label_nc = 4
    model = SPADEResBlock(16, 8, label_nc)
    calibrate(model, lambda: (torch.randn(8, 16, 16, 16, generator=gen),
                              _segmap(gen, 8, label_nc, 8, 8)))
    return model, (torch.randn(2, 16, 16, 16, generator=gen), _segmap(gen, 2, label_nc, 8, 8))
