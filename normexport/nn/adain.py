"""Adaptive Instance Normalization (NORMS.md row 17).

Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization", ICCV 2017. Official code: github.com/xunhuang1995/AdaIN-style (Torch7,
``lib/AdaptiveInstanceNormalization.lua``).

For content x (N, C, *spatial) and style y (N, C, *spatial') (spatial sizes may differ):

    mu(t)[n, c]    = mean of t[n, c] over the spatial dims
    sigma(t)[n, c] = sqrt(biased variance of t[n, c] over the spatial dims + eps)
    AdaIN(x, y)    = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)

No parameters; statistics are per sample in train and eval alike. ``alpha`` is the paper's
content-style trade-off (Sec. 7, as the official ``test.lua -alpha`` and the port's
``--alpha``): ``alpha * AdaIN(x, y) + (1 - alpha) * x``, alpha in [0, 1], default 1 (pure
AdaIN).

Which variance and eps, and why (the three sources differ):
- Paper (eq. 6-8): sigma with the biased variance (1/HW) and eps inside the square root, the
  same sigma for x and y.
- Official Torch7 code: the content is normalised by an internal SpatialBatchNormalization
  over (1, N*C, H, W) in training mode (biased variance, eps = 1e-5 inside the sqrt); the
  style's target std is ``std(3, true)``, the biased std *without* eps.
- PyTorch port (naoto0804/pytorch-AdaIN, ``calc_mean_std``): ``var(dim=2)`` is the *unbiased*
  (1/(HW-1)) variance, + eps = 1e-5, then sqrt, for both content and style.
We follow the paper: biased variance (also the official code's, and NORMS.md's convention) with
eps = 1e-5 inside the square root for both inputs. The symmetric eps makes AdaIN(x, x) = x
exactly, and with eps = 0 the output has exactly the style's per-channel mean and biased std.
Against the official code the only difference is the style's eps: a relative change of
about eps / (2 var(y)) in the output scale. Against the port, the unbiased variance changes the
scale by sqrt((HW_y (HW_x - 1)) / (HW_x (HW_y - 1))), i.e. 1 when content and style have the
same spatial size, apart from eps.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["adaptive_instance_norm", "AdaIN"]


def _check(layer: str, content: torch.Tensor, style: torch.Tensor, num_features: int | None) -> None:
    for what, t in (("content", content), ("style", style)):
        if t.dim() < 3:
            raise ValueError(f"{layer}: {what} must be (N, C, *spatial) with at least one spatial "
                             f"dim, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{layer}: {what} must be a floating tensor, got {t.dtype}")
    if content.dim() != style.dim() or content.shape[:2] != style.shape[:2]:
        raise ValueError(f"{layer}: content and style need the same batch, channel count and rank, "
                         f"got content {tuple(content.shape)} and style {tuple(style.shape)}")
    if num_features is not None and content.shape[1] != num_features:
        raise ValueError(f"{layer}: expected {num_features} channels, got {content.shape[1]} "
                         f"(content shape {tuple(content.shape)})")


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5,
                           alpha: float = 1.0) -> torch.Tensor:
    """AdaIN(content, style) = sigma(style) (content - mu(content)) / sigma(content) + mu(style),
    per sample and channel over the spatial dims, sigma = sqrt(biased var + eps); with
    ``alpha`` < 1: ``alpha * AdaIN + (1 - alpha) * content``."""
    _check_params("adaptive_instance_norm", eps, alpha)
    _check("adaptive_instance_norm", content, style, None)
    return _adain(content, style, eps, alpha)


def _check_params(layer: str, eps: float, alpha: float) -> None:
    if eps < 0:
        raise ValueError(f"{layer}: eps must be >= 0, got {eps}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{layer}: alpha (content-style trade-off) must be in [0, 1], got {alpha}")


def _adain(content: torch.Tensor, style: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    var_c, mean_c = torch.var_mean(content, dim=tuple(range(2, content.dim())), keepdim=True, correction=0)
    var_s, mean_s = torch.var_mean(style, dim=tuple(range(2, style.dim())), keepdim=True, correction=0)
    y = (content - mean_c) * (torch.sqrt(var_s + eps) * torch.rsqrt(var_c + eps)) + mean_s
    return y if alpha == 1.0 else alpha * y + (1.0 - alpha) * content


class AdaIN(nn.Module):
    """Adaptive Instance Normalization, ``forward(content, style)``. ``num_features`` (optional)
    is checked against the inputs' channel count; the layer has no parameters (``device`` and
    ``dtype`` are accepted for a uniform constructor)."""

    def __init__(self, num_features: int | None = None, eps: float = 1e-5, alpha: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        if num_features is not None and num_features <= 0:
            raise ValueError(f"AdaIN: num_features must be positive, got {num_features}")
        _check_params("AdaIN", eps, alpha)
        self.num_features = num_features
        self.eps = float(eps)
        self.alpha = float(alpha)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        _check("AdaIN", content, style, self.num_features)
        return _adain(content, style, self.eps, self.alpha)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, alpha={self.alpha}"
