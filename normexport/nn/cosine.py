"""Cosine Normalization (NORMS.md row 13).

Luo, Zhan, Wang & Yang, "Cosine Normalization: Using Cosine Similarity Instead of Dot Product
in Neural Networks", ICANN 2018 (arXiv:1702.05870, 2017).

The pre-activation of every output unit is the cosine of the angle between its weight vector
w and its input vector x instead of their dot product:

    y = w . x / (|w|_eps |x|_eps),    |v|_eps = sqrt(sum v^2 + eps)

- :class:`CosineLinear`: x is the whole input feature vector (last dim), w a row of the weight.
- :class:`CosineConv2d`: x is the receptive field of the output position, i.e. the patch the
  kernel sees: all input channels of the unit's group, the kernel window with the conv's
  stride, padding (padded values belong to the patch) and dilation. |x| is computed as
  ``sqrt(conv(x^2, ones) + eps)``, a convolution of x^2 with an all-ones kernel of the same
  geometry (one output channel per group), not by unfolding patches, so memory stays that of
  one extra feature map.

Choices where the paper leaves room (it has no official implementation):
- eps (default 1e-6) is added under both square roots, as every normalizing layer of
  normexport adds it to its second moment. It keeps y and its gradient finite for all-zero
  patches (ReLU outputs, padding) and keeps |y| <= 1: by Cauchy-Schwarz
  |w . x| <= |w||x| < |w|_eps |x|_eps, so y lies in (-1, 1) without a bias.
- The paper's formula has no bias term (it bounds the pre-activation in [-1, 1]). ``bias=False``
  is the default; ``bias=True`` adds a learnable per-output bias *after* the cosine
  (initialised to 0), and the output is then no longer bounded by 1.
- The paper also proposes a centered variant (Pearson correlation: subtract the means of w and
  x first); it is not implemented here.
- The weight is stored unnormalized (as a plain conv/linear weight); w / |w|_eps is computed in
  forward. At export the weight is pre-normalized (NORMS.md), only |x| remains at run time.
- Weight initialisation is torch's Linear/Conv default (scale is irrelevant to the cosine).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["cosine_linear", "cosine_conv2d", "CosineLinear", "CosineConv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _normalized_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight / sqrt(sum of squares per output unit (dim 0) + eps)."""
    dims = tuple(range(1, weight.dim()))
    return weight * torch.rsqrt(weight.square().sum(dim=dims, keepdim=True) + eps)


def cosine_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  eps: float = 1e-6) -> torch.Tensor:
    """Cosine-normalized linear map of ``x`` (*, in_features); ``weight`` (out, in)."""
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"cosine_linear: expected input (*, {weight.shape[1]}), got shape "
                         f"{tuple(x.shape)}")
    x_norm = torch.sqrt(x.square().sum(dim=-1, keepdim=True) + eps)
    y = F.linear(x, _normalized_weight(weight, eps)) / x_norm
    return y if bias is None else y + bias


def cosine_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride=1, padding=0, dilation=1, groups: int = 1, eps: float = 1e-6
                  ) -> torch.Tensor:
    """Cosine-normalized 2-D convolution of ``x`` (N, C, H, W) with ``weight``
    (out, C / groups, kh, kw); ``padding`` as in :func:`torch.nn.functional.conv2d` (zero
    padding; pad ``x`` yourself for other modes)."""
    if x.dim() != 4:
        raise ValueError(f"cosine_conv2d: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    out_ch, in_per_group, kh, kw = weight.shape
    if x.shape[1] != in_per_group * groups:
        raise ValueError(f"cosine_conv2d: expected {in_per_group * groups} input channels, got "
                         f"{x.shape[1]} (input shape {tuple(x.shape)})")
    dot = F.conv2d(x, _normalized_weight(weight, eps), None, stride, padding, dilation, groups)
    # |x| over each receptive field: x^2 convolved with ones, one output channel per group
    ones = x.new_ones((groups, in_per_group, kh, kw))
    x_norm = torch.sqrt(F.conv2d(x.square(), ones, None, stride, padding, dilation, groups) + eps)
    n, _, ho, wo = dot.shape
    y = (dot.reshape(n, groups, out_ch // groups, ho, wo) / x_norm.unsqueeze(2)).reshape(n, out_ch, ho, wo)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


class CosineLinear(nn.Module):
    """Linear layer with cosine normalization: ``y = w_j . x / (|w_j|_eps |x|_eps) (+ b_j)``
    for x of shape (*, in_features). See the module docstring for the choices."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, eps: float = 1e-6,
                 device=None, dtype=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"CosineLinear: in_features and out_features must be positive, got "
                             f"{in_features}, {out_features}")
        if eps <= 0:
            raise ValueError(f"CosineLinear: eps must be > 0, got {eps}")
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.eps = in_features, out_features, float(eps)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **fk))
        self.bias = nn.Parameter(torch.zeros(out_features, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"CosineLinear: expected input (*, {self.in_features}) with "
                             f"in_features={self.in_features} last, got shape {tuple(x.shape)}")
        return cosine_linear(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, eps={self.eps}")


class CosineConv2d(nn.Module):
    """2-D convolution with cosine normalization: each output is the cosine between the
    filter and the receptive field it sees, ``y = w . x_patch / (|w|_eps |x_patch|_eps)``.

    Arguments as :class:`torch.nn.Conv2d` (plus ``eps``; ``bias`` defaults to False, see the
    module docstring). Deliberately not a subclass of ``nn.Conv2d``: code that folds into or
    rewrites plain convolutions (BN folding, weight-norm matching) must not mistake it for one.
    With ``padding_mode`` other than "zeros" the input is padded explicitly and the padded
    values count in |x_patch| as they do in w . x_patch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False, padding_mode: str = "zeros",
                 eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if in_channels <= 0 or out_channels <= 0 or groups <= 0:
            raise ValueError(f"{name}: in_channels, out_channels and groups must be positive, got "
                             f"{in_channels}, {out_channels}, {groups}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if eps <= 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"{name}: padding='same' needs stride 1, got stride {self.stride}")
            self.padding = padding
        else:
            self.padding = _pair(padding)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.padding_mode, self.eps = padding_mode, float(eps)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **fk))
        self.bias = nn.Parameter(torch.zeros(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for F.pad."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: expected {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            padding = 0
        return cosine_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                             self.groups, self.eps)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + f", bias={self.bias is not None}, eps={self.eps}"
