"""Plain torch modules written the way the papers' / reference implementations' code writes
them (no normexport layers): the inputs of the fusion-pass tests (tests/test_passes_fuse.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FRN(nn.Module):
    """Filter Response Normalization + TLU as in the paper's code (Singh & Krishnan 2020, Fig. 4;
    the common PyTorch port): nu2 = mean(x^2), x * rsqrt(nu2 + |eps|), max(gamma x + beta, tau)."""

    def __init__(self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False, tlu: bool = True):
        super().__init__()
        shape = (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.tau = nn.Parameter(torch.zeros(shape)) if tlu else None
        if learnable_eps:
            self.eps = nn.Parameter(torch.full((1,), eps))
        else:
            self.register_buffer("eps", torch.full((1,), eps))

    def forward(self, x):
        nu2 = x.pow(2).mean(dim=[2, 3], keepdim=True)
        x = x * torch.rsqrt(nu2 + self.eps.abs())
        y = self.gamma * x + self.beta
        return torch.max(y, self.tau) if self.tau is not None else y


def calc_mean_std(feat, eps=1e-5):
    """naoto0804/pytorch-AdaIN function.py, verbatim (unbiased variance + eps, sqrt)."""
    size = feat.size()
    assert len(size) == 4
    N, C = size[:2]
    feat_var = feat.view(N, C, -1).var(dim=2) + eps
    feat_std = feat_var.sqrt().view(N, C, 1, 1)
    feat_mean = feat.view(N, C, -1).mean(dim=2).view(N, C, 1, 1)
    return feat_mean, feat_std


def adaptive_instance_normalization(content_feat, style_feat):
    """naoto0804/pytorch-AdaIN function.py, verbatim."""
    assert content_feat.size()[:2] == style_feat.size()[:2]
    size = content_feat.size()
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    normalized_feat = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized_feat * style_std.expand(size) + style_mean.expand(size)


class AdaIN(nn.Module):
    def forward(self, content, style):
        return adaptive_instance_normalization(content, style)


class SPADE(nn.Module):
    """NVlabs/SPADE models/networks/normalization.py SPADE (batch / instance param-free norm)."""

    def __init__(self, norm_nc: int, label_nc: int, param_free_norm_type: str = "instance",
                 ks: int = 3, nhidden: int = 16):
        super().__init__()
        if param_free_norm_type == "instance":
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        elif param_free_norm_type == "batch":
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        else:
            raise ValueError(param_free_norm_type)
        pw = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, kernel_size=ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, kernel_size=ks, padding=pw)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, kernel_size=ks, padding=pw)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        out = normalized * (1 + gamma) + beta
        return out
