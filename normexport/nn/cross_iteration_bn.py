"""Cross-Iteration Batch Normalization, CBN (NORMS.md row 5).

Yao, Cao, Zheng, Huang & Lin, "Cross-Iteration Batch Normalization", CVPR 2021
(arXiv:2002.05712); official code: github.com/Howal/Cross-iterationBatchNorm
(``mmdet/models/utils/CBN.py``, ``CBatchNorm2d``).

The layer normalizes the output x of a conv whose weight is theta_t at iteration t. It keeps,
for each of the last k-1 iterations t-tau, the per-channel mean mu and mean of squares nu
(= E[x^2]) of that iteration's batch, their gradients d mu / d theta and d nu / d theta
(taken at that iteration), and theta_{t-tau}. The old statistics are carried to the current
weights by a first-order Taylor step in the weights::

    mu_{t-tau}(theta_t) = mu_{t-tau} + rho * <d mu_{t-tau}/d theta, theta_t - theta_{t-tau}>
    nu_{t-tau}(theta_t) = nu_{t-tau} + rho * <d nu_{t-tau}/d theta, theta_t - theta_{t-tau}>

(per output channel c, the inner product runs over theta[c]: channel c of a conv depends only
on its filter theta[c]) and combined with the current batch's statistics, the variance kept >= 0::

    mu_bar  = 1/k' sum_tau mu_{t-tau}(theta_t)
    nu_bar  = 1/k' sum_tau max(nu_{t-tau}(theta_t), mu_{t-tau}(theta_t)^2)
    var_bar = nu_bar - mu_bar^2                       (>= 0 by Jensen; clamped at 0 for rounding)
    y = gamma * (x - mu_bar) / sqrt(var_bar + eps) + beta

with k' = 1 + the number of stored iterations (<= k). Only the current batch's statistics
carry gradient (the old ones and the compensation are constants, as in the official code).
Inference is plain BN with the running statistics.

Wiring: the layer needs the preceding layer's weight theta. Give it ``source=`` the preceding
module (a Conv2d, grouped/depthwise included: anything with a ``.weight`` whose dim 0 indexes
this layer's channels, output channel c depending only on weight[c]) or a zero-argument
callable returning that weight, or call
:meth:`attach` later. The reference is not registered as a submodule or parameter (no
duplicate parameters, no state-dict keys); a ``copy.deepcopy`` of the whole model keeps it
pointing to the copied conv. ConvTranspose (weight dim 0 = input channels) is not supported.
The gradients d mu/d theta, d nu/d theta are taken with ``torch.autograd.grad`` through the
autograd graph from theta to x (retain_graph=True), exactly as the official code does.

Choices (paper vs. official code, and ours):

- **Variance constraint** as in the paper: each compensated nu is clamped at mu^2. The
  official code instead drops an old iteration from both averages when its compensated
  variance is negative.
- **BN conventions**: biased variance of the batch and eps inside the square root, so that
  during burn-in / with k=1 the layer is exactly BN and its inference form folds as BN. The
  official code normalizes with ``sqrt(unbiased var) + eps`` (``out_p=False`` default).
- **Running statistics** are updated from the *current* batch only, as BN does (torch's
  momentum convention, unbiased variance) -- as the official code does.
- **Burn-in**: the first ``burn_in`` training calls (``num_batches_tracked`` < burn_in) are
  plain BN and record nothing (official ``two_stage=True``; its gradual ``two_stage=False``
  variant is not provided). ``num_batches_tracked`` counts every training call.
- **When the current gradient is unavailable** (no grad mode, input not requiring grad, or a
  frozen weight) the window statistics from the stored history are still used (the stored
  gradients suffice for their compensation), but the current iteration is not recorded.
  The official code falls back to plain BN whenever the input does not require grad.
- ``rho`` scales the compensation (official ``rho``); ``rho=0`` is the paper's naive
  uncompensated cross-iteration baseline.
- **History is not saved** (non-persistent buffers ``hist_*``); it refills over k-1
  iterations after a restart. Memory: 3 (k-1) copies of the preceding weight per layer
  (official code: the same).
- ``process_group``: the current statistics over the global batch (exact), and the stored
  gradients are those of the global statistics (local contributions weighted by the local
  share of the batch and all-reduced), so every process keeps the same history.
  None = this process only.
- Batch size 1 in training mode is refused (ValueError), also with spatial dims.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.distributed as dist
from torch import nn

from ._batchnorm_base import _BatchStatNorm
from ._stats import _is_distributed

__all__ = ["CrossIterationBatchNorm2d"]

WeightSource = Union[nn.Module, Callable[[], torch.Tensor], None]


class CrossIterationBatchNorm2d(_BatchStatNorm):
    """Cross-Iteration BN over (N, C, H, W). See the module docstring.

    Args:
        num_features: C.
        window: k, the number of iterations whose statistics are combined (current + k-1
            previous). The official configs use k = 4 ("buffer3"), also the default here.
        burn_in: training calls of plain BN before cross-iteration statistics start.
        rho: compensation factor (1 = the paper's Taylor step, 0 = no compensation).
        source: the preceding layer (module with ``.weight``) or a callable returning its
            weight; required once cross-iteration statistics start (after ``burn_in``).
    """
    _input_dims = (4,)

    def __init__(self, num_features: int, window: int = 4, burn_in: int = 0, rho: float = 1.0,
                 source: WeightSource = None, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, process_group, device, dtype)
        name = type(self).__name__
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"{name}: window must be an int >= 1, got {window!r}")
        if not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"{name}: burn_in must be an int >= 0, got {burn_in!r}")
        self.window = window
        self.burn_in = burn_in
        self.rho = float(rho)
        self.attach(source)
        fk = {"device": device, "dtype": dtype}
        # newest first: per iteration mean, mean of squares, their gradients w.r.t. the
        # preceding weight, and that weight
        self.register_buffer("hist_mean", torch.zeros(0, num_features, **fk), persistent=False)
        self.register_buffer("hist_sqmean", torch.zeros(0, num_features, **fk), persistent=False)
        self.register_buffer("hist_grad_mean", None, persistent=False)
        self.register_buffer("hist_grad_sqmean", None, persistent=False)
        self.register_buffer("hist_weight", None, persistent=False)

    # -- wiring -----------------------------------------------------------------------------
    def attach(self, source: WeightSource) -> "CrossIterationBatchNorm2d":
        """Set the preceding layer (module with ``.weight``) or a callable returning its weight."""
        if source is not None and not (isinstance(source, nn.Module) or callable(source)):
            raise TypeError(f"{type(self).__name__}: source must be a module with .weight or a "
                            f"callable returning the weight, got {type(source).__name__}")
        if isinstance(source, nn.Module) and not isinstance(getattr(source, "weight", None), torch.Tensor):
            raise TypeError(f"{type(self).__name__}: source module {type(source).__name__} has no "
                            f".weight tensor")
        object.__setattr__(self, "_source", source)  # not a submodule: no duplicate parameters
        return self

    def preceding_weight(self) -> torch.Tensor:
        name = type(self).__name__
        src = self._source
        if src is None:
            raise RuntimeError(f"{name}: cross-iteration statistics need the preceding layer's "
                               f"weight: pass source=<the conv before this layer> or call "
                               f".attach(conv)")
        w = src.weight if isinstance(src, nn.Module) else src()
        if not isinstance(w, torch.Tensor) or w.dim() < 1 or w.shape[0] != self.num_features:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{name}: the preceding weight must have dim 0 = {self.num_features} "
                             f"(one filter per channel of this layer), got {shape}")
        return w

    @torch.no_grad()
    def reset_history(self) -> None:
        """Forget the stored iterations (e.g. after changing the preceding weight by hand)."""
        self.hist_mean = self.hist_mean[:0]
        self.hist_sqmean = self.hist_sqmean[:0]
        self.hist_grad_mean = self.hist_grad_sqmean = self.hist_weight = None

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        self.reset_history()

    @property
    def history_length(self) -> int:
        return int(self.hist_mean.shape[0])

    # -- forward ----------------------------------------------------------------------------
    def _stat_grads(self, x, weight, mean_b, var_b, count):
        """d mu / d theta and d nu / d theta of the (global) batch statistics, detached."""
        name = type(self).__name__
        distributed = self.process_group is not None and _is_distributed(self.process_group)
        if distributed:
            # local contributions: mu = sum_p n_p/N mu_p, nu likewise
            dims = [0] + list(range(2, x.dim()))
            n_local = x.numel() // x.shape[1]
            if n_local:
                var_l, mean_l = torch.var_mean(x, dim=dims, correction=0)
                targets = (mean_l, var_l + mean_l.square())
            share = n_local / count
        else:
            n_local, share = 1, 1.0
            targets = (mean_b, var_b + mean_b.square())
        grads = []
        for t in targets if n_local else ():
            try:
                (g,) = torch.autograd.grad(t.sum(), weight, retain_graph=True)
            except RuntimeError as e:
                raise ValueError(f"{name}: the preceding weight (shape {tuple(weight.shape)}) "
                                 f"does not produce this layer's input in the autograd graph; "
                                 f"attach the conv that feeds this layer ({e})") from None
            grads.append(g.detach() * share)
        if not n_local:
            grads = [torch.zeros_like(weight), torch.zeros_like(weight)]
        if distributed:
            packed = torch.stack(grads)
            dist.all_reduce(packed, group=self.process_group)
            grads = list(packed.unbind(0))
        return grads

    def _compensated(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored (mu, nu) carried to ``weight``, with nu >= mu^2: (L, C) each."""
        L, c = self.hist_mean.shape
        delta = weight.detach().to(self.hist_weight.dtype).unsqueeze(0) - self.hist_weight
        mu = self.hist_mean + self.rho * (self.hist_grad_mean * delta).reshape(L, c, -1).sum(2)
        nu = self.hist_sqmean + self.rho * (self.hist_grad_sqmean * delta).reshape(L, c, -1).sum(2)
        return mu, torch.maximum(nu, mu.square())

    @torch.no_grad()
    def _record(self, mean_b, nu_b, g_mean, g_sqmean, weight) -> None:
        keep = self.window - 1
        w = weight.detach().to(self.hist_mean.dtype).clone()
        g_mean, g_sqmean = g_mean.to(w.dtype), g_sqmean.to(w.dtype)
        if self.hist_weight is None or self.hist_weight.shape[1:] != w.shape or self.history_length == 0:
            self.reset_history()
            empty = w.new_zeros((0, *w.shape))
            old = (self.hist_mean, self.hist_sqmean, empty, empty, empty)
        else:
            old = (self.hist_mean, self.hist_sqmean, self.hist_grad_mean, self.hist_grad_sqmean,
                   self.hist_weight)
        new = (mean_b.detach().to(w.dtype), nu_b.detach().to(w.dtype), g_mean, g_sqmean, w)
        (self.hist_mean, self.hist_sqmean, self.hist_grad_mean, self.hist_grad_sqmean,
         self.hist_weight) = (torch.cat([n[None], o])[:keep] for n, o in zip(new, old))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        step = int(self.num_batches_tracked)
        mean_b, var_b, count = self._batch_stats(x)
        mean, var = mean_b, var_b
        if self.window > 1 and step >= self.burn_in:
            weight = self.preceding_weight()
            nu_b = var_b + mean_b.square()
            if self.history_length:
                mu_old, nu_old = self._compensated(weight)
                k = 1 + mu_old.shape[0]
                mean = (mean_b + mu_old.sum(0).to(mean_b.dtype)) / k
                nu = (nu_b + nu_old.sum(0).to(nu_b.dtype)) / k
                var = (nu - mean.square()).clamp_min(0.0)
            if torch.is_grad_enabled() and x.requires_grad and weight.requires_grad:
                g_mean, g_sqmean = self._stat_grads(x, weight, mean_b, var_b, count)
                self._record(mean_b, nu_b, g_mean, g_sqmean, weight)
        self._update_running(mean_b, var_b, count)
        return self._normalize(x, mean, var)

    def extra_repr(self) -> str:
        src = self._source
        src = "none" if src is None else type(src).__name__
        return (super().extra_repr() + f", window={self.window}, burn_in={self.burn_in}, "
                f"rho={self.rho}, source={src}")
