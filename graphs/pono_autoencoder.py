"""A PONO autoencoder with moment shortcuts (Li et al. 2019): PONO after each encoder conv
takes out the per-position mean and std, and the decoder layer at the same resolution puts
them back (MS: ``x * std + mean`` at the bottleneck; DMS: beta, gamma predicted from the
moments by a small ConvNet, one level up)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normexport.nn import MomentShortcut, PositionalNorm

from ._common import seeded


class PONOAutoencoder(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        c = width
        self.enc1, self.pono1 = nn.Conv2d(3, c, 3, padding=1), PositionalNorm(c)
        self.enc2, self.pono2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), PositionalNorm(2 * c)
        self.mid = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.ms2 = MomentShortcut(2 * c)                          # MS
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.ms1 = MomentShortcut(c, dynamic=True, hidden_channels=c)  # DMS
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mean1, std1 = self.pono1(self.enc1(x))
        h, mean2, std2 = self.pono2(self.enc2(F.relu(h)))
        h = F.relu(self.ms2(self.mid(F.relu(h)), mean2, std2))
        h = F.relu(self.ms1(self.dec1(self.up(h)), mean1, std1))
        return self.out(h)


@seeded(7)
def build():
    gen = torch.Generator().manual_seed(7)
    return PONOAutoencoder().eval(), (torch.randn(2, 3, 16, 16, generator=gen) * 2 + 0.5,)
