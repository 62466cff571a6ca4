"""SPatially-Adaptive (DE)normalization, SPADE (NORMS.md row 18).

Park, Liu, Wang, Zhu, "Semantic Image Synthesis with Spatially-Adaptive Normalization",
CVPR 2019. Official code: github.com/NVlabs/SPADE (``models/networks/normalization.py``).

For x (N, C, H, W) and a segmentation map m (N, label_nc, H', W'):

    x_hat = parameter-free BN (default) or IN of x
    m'    = nearest resize of m to (H, W)   (torch's "nearest": src = floor(dst * in / out))
    a     = ReLU(conv_shared(m'))                       (hidden_features channels)
    y     = x_hat * (1 + conv_gamma(a)) + conv_beta(a)

All convs have ``kernel_size`` (odd) with zero padding ``kernel_size // 2`` and a bias.

As the official code: hidden_features = 128 (there "hardcoded"), kernel_size = 3 (config
``spadesyncbatch3x3``), eps = 1e-5, momentum = 0.1, BN without affine parameters and with
running statistics; submodule names ``param_free_norm``, ``mlp_shared`` (Conv2d, ReLU),
``mlp_gamma``, ``mlp_beta`` as there, so official state dicts load. The paper's BN is
synchronised BN: pass ``process_group`` (e.g. ``torch.distributed.group.WORLD``) for statistics
over the global batch; ``None`` gives per-process statistics. ``norm="instance"`` gives the IN
variant (per sample, no running statistics: official ``spadeinstance``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._bn_branch import _ParamFreeBatchNorm2d, _ParamFreeInstanceNorm2d, check_input

__all__ = ["SPADE"]


class SPADE(nn.Module):
    """``forward(x (N, C, H, W), segmap (N, label_nc, H', W'))``."""

    def __init__(self, num_features: int, label_nc: int, norm: str = "batch",
                 hidden_features: int = 128, kernel_size: int = 3, eps: float = 1e-5,
                 momentum: float | None = 0.1, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__()
        if num_features <= 0 or label_nc <= 0 or hidden_features <= 0:
            raise ValueError(f"SPADE: num_features, label_nc and hidden_features must be positive, got "
                             f"{num_features}, {label_nc}, {hidden_features}")
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"SPADE: kernel_size must be odd (padding kernel_size // 2 keeps the size), "
                             f"got {kernel_size}")
        fk = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.label_nc = label_nc
        self.norm = norm
        if norm == "batch":
            self.param_free_norm = _ParamFreeBatchNorm2d(num_features, eps, momentum, track_running_stats,
                                                         process_group, "SPADE", **fk)
        elif norm == "instance":
            self.param_free_norm = _ParamFreeInstanceNorm2d(num_features, eps)
        else:
            raise ValueError(f"SPADE: norm must be 'batch' or 'instance', got {norm!r}")
        pw = kernel_size // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden_features, kernel_size, padding=pw, **fk),
                                        nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden_features, num_features, kernel_size, padding=pw, **fk)
        self.mlp_beta = nn.Conv2d(hidden_features, num_features, kernel_size, padding=pw, **fk)

    @property
    def process_group(self):
        return getattr(self.param_free_norm, "process_group", None)

    @process_group.setter
    def process_group(self, group) -> None:
        if self.norm != "batch":
            raise ValueError("SPADE: process_group applies to norm='batch' only")
        self.param_free_norm.process_group = group

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        check_input("SPADE", x, 4, self.num_features)
        check_input("SPADE", segmap, 4, self.label_nc, what="segmap")
        if segmap.shape[0] != x.shape[0]:
            raise ValueError(f"SPADE: segmap batch {segmap.shape[0]} differs from the input batch "
                             f"{x.shape[0]} (x {tuple(x.shape)}, segmap {tuple(segmap.shape)})")
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)

    def extra_repr(self) -> str:
        return f"{self.num_features}, label_nc={self.label_nc}, norm={self.norm!r}"
