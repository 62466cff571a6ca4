"""A class-conditional GAN generator with categorical conditional BN (SNGAN-projection /
BigGAN style): z -> linear -> 4x4 map -> residual up-blocks whose BNs take per-class gamma,
beta (a lookup by label), -> BN -> ReLU -> 3x3 conv -> tanh. Inputs: z (N, z_dim) and integer
labels (N,)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normexport.nn import CategoricalConditionalBatchNorm2d

from ._common import calibrate, randomize_norms, seeded


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.b1 = CategoricalConditionalBatchNorm2d(cin, num_classes)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.b2 = CategoricalConditionalBatchNorm2d(cout, num_classes)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.c_sc = nn.Conv2d(cin, cout, 1)

    def forward(self, x, labels):
        h = F.interpolate(F.relu(self.b1(x, labels)), scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self.b2(self.c1(h), labels)))
        return h + self.c_sc(F.interpolate(x, scale_factor=2, mode="nearest"))


class CBNGenerator(nn.Module):
    def __init__(self, z_dim: int = 16, num_classes: int = 5, ch: int = 16, bottom: int = 4):
        super().__init__()
        self.ch, self.bottom = ch, bottom
        self.linear = nn.Linear(z_dim, ch * bottom * bottom)
        self.block1 = GBlock(ch, ch, num_classes)
        self.block2 = GBlock(ch, ch, num_classes)
        self.bn = nn.BatchNorm2d(ch)
        self.out = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).reshape(-1, self.ch, self.bottom, self.bottom)
        h = self.block2(self.block1(h, labels), labels)
        return torch.tanh(self.out(F.relu(self.bn(h))))


@seeded(8)
def build():
    gen = torch.Generator().manual_seed(8)
    num_classes, z_dim = 5, 16
    model = CBNGenerator(z_dim, num_classes)
    randomize_norms(model)
    batch = lambda n: (torch.randn(n, z_dim, generator=gen), torch.randint(0, num_classes, (n,), generator=gen))
    calibrate(model, lambda: batch(16))
    return model, batch(2)
