"""Switchable Normalization (NORMS.md row 11).

Luo, Ren, Peng, Zhang, Li, "Differentiable Learning-to-Normalize via Switchable
Normalization", ICLR 2019 (arXiv:1806.10779, 2018). Official code:
github.com/switchablenorms/Switchable-Normalization (``devkit/ops/switchable_norm.py``).

For x of shape (N, C, H, W) (SwitchableNorm2d) with statistics k in {IN, LN, BN}:

    mu_k, var_k  = mean and biased variance over   IN: (H, W)   LN: (C, H, W)   BN: (N, H, W)
    mu           = sum_k softmax(lambda_mu)_k  mu_k
    var          = sum_k softmax(lambda_var)_k var_k          (separate lambdas, paper eq. 3)
    y            = gamma[c] * (x - mu) / sqrt(var + eps) + beta[c]

SwitchableNorm1d takes (N, C) as the official SwitchNorm1d does: no IN (one value per sample
and channel), k in {LN over C, BN over N}.

Choices (paper vs official code vs here):
- Statistics. The paper (eq. 2) defines every var_k as the biased variance and shares
  computation: IN stats first, LN derived from them. We compute IN (mean, biased var) per
  sample and channel, derive LN by the law of total variance
  ``var_ln = mean_c(var_in) + mean_c((mu_in - mu_ln)^2)`` (the paper's
  ``mean_c(var_in + mu_in^2) - mu_ln^2`` without its cancellation), and take BN from
  ``_stats.batch_mean_var`` (exact, synchronised over ``process_group``). The official code
  uses ``x.var(-1)``, i.e. the *unbiased* IN variance, and derives LN and BN from it, so its
  var_ln / var_bn are the biased ones plus ``mean(var_in) / (H*W - 1)``: an O(1/(H*W))
  difference from the paper's definitions, which we follow (it also keeps IN = InstanceNorm,
  LN = LayerNorm, BN = BatchNorm exactly at the softmax extremes). Loading an official
  checkpoint therefore changes eval outputs by that O(1/(H*W)) amount.
- Running statistics (``using_bn=True``): ``using_moving_average=True`` is torch's BatchNorm
  update (``momentum`` = weight of the new batch, default 0.1 = the official 2d default 0.9
  "keep" factor; ``None``: cumulative average; unbiased batch variance). The official code
  stores the biased (derived) BN variance and starts running_var at 0; we start at 1 as torch.
  ``using_moving_average=False`` is the paper's *batch average* (official ``sn_helper``:
  reset, run K batches in train mode, then mean = avg mu_bn, var = avg(var_bn + mu_bn^2) -
  mean^2): here the buffers always hold that finished average over the batches since
  :meth:`reset_running_stats` (``num_batches_tracked`` = K), so no post-processing step is
  needed; reset, run the K batches under ``torch.no_grad()`` in train mode, then eval.
- ``process_group`` (e.g. ``torch.distributed.group.WORLD``): the BN branch's statistics cover
  the global batch of the group's processes (exact, gradients flow to every shard); IN and LN
  stay per sample. The official ``syncsn_layer.py`` syncs the BN branch too, but averages the
  processes' mean and E[x^2] with equal weights (exact for equal shard sizes only).
- Buffers are (C,) as torch's BatchNorm (official: (1, C, 1)); lambdas start at 1 (uniform
  weights, as official); ``last_gamma=True`` starts gamma at 0 (official option).
- Batch 1 in train mode: SwitchableNorm2d accepts it (the BN branch then has the H*W values of
  one sample, like torch's BatchNorm2d); SwitchableNorm1d refuses it with a clear error (the
  official SwitchNorm1d returns NaN there).
"""

from __future__ import annotations

import torch
from torch import nn

from ._bn_branch import _BatchStatsMixin, channel_view, check_input

__all__ = ["SwitchableNorm1d", "SwitchableNorm2d"]



def per_sample_stats(x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-sample branches' (means, biased variances), keepdim: [IN, LN] for rank >= 3
    (LN derived from the IN statistics without cancellation), [LN] for (N, C) inputs."""
    if x.dim() > 2:
        var_in, mean_in = torch.var_mean(x, dim=tuple(range(2, x.dim())), keepdim=True, correction=0)
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
        return [mean_in, mean_ln], [var_in, var_ln]
    var_ln, mean_ln = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    return [mean_ln], [var_ln]

class _SwitchableNorm(_BatchStatsMixin, nn.Module):
    _spatial_dims = 2

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 using_moving_average: bool = True, using_bn: bool = True, last_gamma: bool = False,
                 process_group=None, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if num_features <= 0:
            raise ValueError(f"{name}: num_features must be positive, got {num_features}")
        if eps < 0:
            raise ValueError(f"{name}: eps must be >= 0, got {eps}")
        fk = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.using_moving_average = bool(using_moving_average)
        self.using_bn = bool(using_bn)
        self.last_gamma = bool(last_gamma)
        #: the statistics mixed, in the order of mean_weight / var_weight
        self.branches: tuple[str, ...] = (("in",) if self._spatial_dims else ()) + ("ln",) + \
            (("bn",) if using_bn else ())
        self.weight = nn.Parameter(torch.zeros(num_features, **fk) if last_gamma
                                   else torch.ones(num_features, **fk))
        self.bias = nn.Parameter(torch.zeros(num_features, **fk))
        self.mean_weight = nn.Parameter(torch.ones(len(self.branches), **fk))
        self.var_weight = nn.Parameter(torch.ones(len(self.branches), **fk))
        self._init_batch_stats(num_features, momentum, using_bn, process_group, name, device, dtype)

    def _update_running_stats(self, mean, var, count):
        if self.using_moving_average:
            return super()._update_running_stats(mean, var, count)
        # batch average: equal-weight pooled mean / variance over the K batches since reset,
        # V_k = (k-1)/k V_{k-1} + var/k + (k-1)/k^2 (mean - M_{k-1})^2 (Welford over batches)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            k = float(self.num_batches_tracked)
            mean = mean.detach().to(self.running_mean.dtype)
            var = var.detach().to(self.running_var.dtype)
            d = mean - self.running_mean
            self.running_var.mul_((k - 1) / k).add_(var / k + d.square() * ((k - 1) / (k * k)))
            self.running_mean.add_(d / k)

    def branch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(softmax(lambda_mu), softmax(lambda_var)), ordered as :attr:`branches`."""
        return torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        check_input(name, x, self._spatial_dims + 2, self.num_features)
        means, variances = per_sample_stats(x)
        if self.using_bn:
            mean_bn, var_bn = self._batch_stats(x)
            means.append(channel_view(mean_bn, x.dim()))
            variances.append(channel_view(var_bn, x.dim()))
        wm, wv = self.branch_weights()
        mean = sum(wm[k] * m for k, m in enumerate(means))
        var = sum(wv[k] * v for k, v in enumerate(variances))
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * channel_view(self.weight, x.dim()) + channel_view(self.bias, x.dim())

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"using_moving_average={self.using_moving_average}, using_bn={self.using_bn}, "
                f"branches={self.branches}")


class SwitchableNorm1d(_SwitchableNorm):
    """Switchable Norm over (N, C): softmax-weighted mix of LN (over C) and BN (over N)."""
    _spatial_dims = 0


class SwitchableNorm2d(_SwitchableNorm):
    """Switchable Norm over (N, C, H, W): softmax-weighted mix of IN, LN and BN statistics."""
    _spatial_dims = 2
