"""Positional Normalization and the Moment Shortcut (NORMS.md row 14).

Li, Wu, Weinberger & Belongie, "Positional Normalization", NeurIPS 2019 (arXiv:1907.04312);
official code: github.com/Boyiliee/PONO (``pono_ms_torch.py``, ``pono_ms_tf.py`` and the
CycleGAN / MUNIT / DRIT experiments in the same repository).

PONO normalizes each sample at each position over the channels, for x of shape
(N, C, *spatial):

    mu[n, 1, p]    = mean over c of x[n, c, p]
    sigma[n, 1, p] = sqrt(var over c of x[n, c, p] + eps)
    y              = (x - mu) / sigma                 (* gamma[p] + beta[p] with affine)

and returns ``(y, mu, sigma)``: the moments are meant to be re-injected later by a
:class:`MomentShortcut` (MS: ``x * sigma + mu``; DMS: ``x * gamma + beta`` with beta, gamma
predicted from (mu, sigma) by a small ConvNet).

Choices (the official PyTorch code wins where paper, TF code and PyTorch code differ):
- Variance: the official PyTorch code uses ``x.var(dim=1)``, the *unbiased* variance (divisor
  C - 1); the paper's formula and the official TF code (``tf.nn.moments``) use the biased one
  (divisor C). Default ``unbiased=True`` (official PyTorch); ``unbiased=False`` gives the
  paper/TF form. Unbiased needs C >= 2.
- eps = 1e-5, added to the variance under the square root; sigma returned includes eps (both
  official implementations).
- Affine: the paper's PONO has none (NORMS.md: parameters "none"); the official PyTorch PONO
  module has an optional *per-position* affine (gamma, beta of shape input_size, i.e. (H, W),
  shared over channels, gamma=1, beta=0 at init), off where PONO is used in the official
  networks. Here ``affine=False`` by default; ``affine=True`` needs ``input_size``.
- The returned mu and sigma are not detached (official code: gradients flow through them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["positional_norm", "moment_shortcut", "PositionalNorm", "MomentShortcut"]


def positional_norm(x: torch.Tensor, eps: float = 1e-5, unbiased: bool = True,
                    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PONO of ``x`` (N, C, *spatial) over dim 1: returns ``(y, mean, std)``, mean and std of
    shape (N, 1, *spatial). ``weight``/``bias``: optional per-position affine (*spatial)."""
    if x.dim() < 3:
        raise ValueError(f"positional_norm: expected input (N, C, *spatial) with at least one "
                         f"spatial dim, got shape {tuple(x.shape)}")
    if unbiased and x.shape[1] < 2:
        raise ValueError(f"positional_norm: the unbiased variance over channels needs C >= 2, got "
                         f"C={x.shape[1]} (input shape {tuple(x.shape)})")
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(x.var(dim=1, keepdim=True, correction=1 if unbiased else 0) + eps)
    y = (x - mean) / std
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, mean, std


def moment_shortcut(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MS: ``x * gamma + beta`` (with PONO's moments: gamma = std, beta = mean)."""
    return x * gamma + beta


class PositionalNorm(nn.Module):
    """Positional Normalization: per sample and position, over the channels; forward returns
    ``(y, mean, std)``. See the module docstring for the formula and the choices.

    num_features: if given, the channel count the input must have (None: any C, >= 2 when
        unbiased).
    input_size: the spatial shape, required with ``affine=True`` (per-position gamma, beta).
    """

    def __init__(self, num_features: int | None = None, eps: float = 1e-5, unbiased: bool = True,
                 affine: bool = False, input_size: Sequence[int] | None = None, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if num_features is not None and num_features < (2 if unbiased else 1):
            raise ValueError(f"{name}: num_features must be >= {2 if unbiased else 1} "
                             f"{'(unbiased variance over channels) ' if unbiased else ''}got {num_features}")
        if eps < 0:
            raise ValueError(f"{name}: eps must be >= 0, got {eps}")
        if affine and not input_size:
            raise ValueError(f"{name}: affine=True needs input_size (the spatial shape, e.g. (H, W)): "
                             f"the official per-position affine has one gamma, beta per position")
        self.num_features, self.eps, self.unbiased = num_features, float(eps), bool(unbiased)
        self.input_size = tuple(int(s) for s in input_size) if input_size is not None else None
        fk = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(self.input_size, **fk))
            self.bias = nn.Parameter(torch.zeros(self.input_size, **fk))
        else:
            self.weight = self.bias = None

    @property
    def affine(self) -> bool:
        return self.weight is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        if x.dim() < 3:
            raise ValueError(f"{name}: expected input (N, C, *spatial) with at least one spatial dim, "
                             f"got shape {tuple(x.shape)}")
        if self.num_features is not None and x.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"{name}: expected spatial shape {self.input_size} (input_size), got "
                             f"{tuple(x.shape[2:])} (input shape {tuple(x.shape)})")
        if self.unbiased and x.shape[1] < 2:
            raise ValueError(f"{name}: the unbiased variance over channels needs C >= 2, got C={x.shape[1]}")
        return positional_norm(x, self.eps, self.unbiased, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, unbiased={self.unbiased}, affine={self.affine}"
                + (f", input_size={self.input_size}" if self.input_size is not None else ""))


class MomentShortcut(nn.Module):
    """Moment Shortcut: re-inject PONO's moments into a later layer's activations x
    (N, C, *spatial), with mean and std of shape (N, 1, *spatial) from a :class:`PositionalNorm`.

    MS (``dynamic=False``, the paper's PONO-MS):   y = x * std + mean
    DMS (``dynamic=True``, Dynamic Moment Shortcut): (beta, gamma) = f(cat(mean, std)),
        y = x * gamma + beta, where f is a small ConvNet over the 2-channel moment map:
        Conv2d(2, hidden, k, pad k//2) -> ReLU -> Conv2d(hidden, 2C, k, pad k//2), whose output
        channels split into beta (first C) and gamma (last C). This follows the official MUNIT
        PONO-DMS ``stat_convs`` (3x3 kernels, hidden = C, concat order (mean, std), chunk order
        (beta, gamma)), except that the official code puts a BatchNorm2d after the first conv:
        pass ``norm_layer=nn.BatchNorm2d`` for that; the default (no norm) keeps DMS per
        sample and identical in train and eval. The official CycleGAN variant upsamples the
        moments inside f (ConvTranspose2d); here mean/std must already have x's spatial shape.
        DMS needs 4-D inputs; MS works for any rank.
    """

    def __init__(self, num_features: int | None = None, dynamic: bool = False,
                 hidden_channels: int | None = None, kernel_size: int = 3, norm_layer=None,
                 device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if dynamic and (num_features is None or num_features <= 0):
            raise ValueError(f"{name}: the dynamic form (DMS) needs num_features > 0, got {num_features}")
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd and positive (same-size output), got {kernel_size}")
        self.num_features, self.dynamic = num_features, bool(dynamic)
        if dynamic:
            hidden = hidden_channels or num_features
            fk = {"device": device, "dtype": dtype}
            self.conv1 = nn.Conv2d(2, hidden, kernel_size, padding=kernel_size // 2, **fk)
            self.norm = norm_layer(hidden, **fk) if norm_layer is not None else None
            self.conv2 = nn.Conv2d(hidden, 2 * num_features, kernel_size, padding=kernel_size // 2, **fk)

    def predict(self, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta, gamma) for the shortcut: (mean, std) for MS, the ConvNet's output for DMS."""
        if not self.dynamic:
            return mean, std
        h = self.conv1(torch.cat((mean, std), dim=1))
        if self.norm is not None:
            h = self.norm(h)
        beta, gamma = self.conv2(F.relu(h)).chunk(2, dim=1)
        return beta, gamma

    def forward(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if x.dim() < 3 or (self.dynamic and x.dim() != 4):
            raise ValueError(f"{name}: expected input {'(N, C, H, W)' if self.dynamic else '(N, C, *spatial)'}"
                             f", got shape {tuple(x.shape)}")
        if self.num_features is not None and x.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        want = (x.shape[0], 1, *x.shape[2:])
        for what, t in (("mean", mean), ("std", std)):
            if tuple(t.shape) != want:
                raise ValueError(f"{name}: {what} must have shape {want} (PONO moments of an input "
                                 f"with x's batch and spatial shape), got {tuple(t.shape)}")
        beta, gamma = self.predict(mean, std)
        return moment_shortcut(x, beta, gamma)

    def extra_repr(self) -> str:
        return f"{self.num_features}, dynamic={self.dynamic}"
