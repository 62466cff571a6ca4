"""AdaIN style transfer (Huang & Belongie 2017) at toy width: a VGG-like encoder (the paper's
VGG-19 up to relu4_1, here two stages of two 3x3 convs + ReLU, max-pooled), AdaIN of the
content features to the style features' moments, and a decoder that mirrors the encoder with
nearest upsampling and reflection padding (as the paper's decoder). Content and style may
have different sizes."""

from __future__ import annotations

import torch
from torch import nn

from normexport.nn import AdaIN

from ._common import seeded


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ReLU())


class AdaINStyleTransfer(nn.Module):
    def __init__(self, width: int = 8, alpha: float = 1.0):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(_conv(3, w), _conv(w, w), nn.MaxPool2d(2),
                                     _conv(w, 2 * w), _conv(2 * w, 2 * w), nn.MaxPool2d(2))
        self.adain = AdaIN(2 * w, alpha=alpha)
        self.decoder = nn.Sequential(_conv(2 * w, w), nn.Upsample(scale_factor=2, mode="nearest"),
                                     _conv(w, w), _conv(w, w), nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.ReflectionPad2d(1), nn.Conv2d(w, 3, 3))

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.adain(self.encoder(content), self.encoder(style)))


@seeded(5)
def build():
    gen = torch.Generator().manual_seed(5)
    model = AdaINStyleTransfer().eval()
    return model, (torch.randn(2, 3, 32, 32, generator=gen),
                   torch.randn(2, 3, 24, 24, generator=gen) * 1.5 + 0.3)
