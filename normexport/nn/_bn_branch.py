"""The batch-normalisation branch shared by the conditional / style family (Switchable Norm's
BN statistics, conditional BN, SPADE with BN): per-channel batch statistics in training mode
(from :func:`normexport.nn._stats.batch_mean_var`, optionally synchronised over a
``process_group``), torch's running-statistic update, running statistics in eval mode.

Not a layer of its own: a mixin for ``nn.Module`` subclasses, plus the parameter-free BN / IN
modules SPADE uses as its ``param_free_norm``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._stats import batch_mean_var, update_running_stats


class _BatchStatsMixin:
    """Running-statistic buffers and batch/running statistic selection.

    Train mode: batch statistics (global over ``process_group`` when one is set and
    torch.distributed is initialised with more than one process), running stats updated as
    torch's BatchNorm does (unbiased batch variance, ``momentum``; ``None``: cumulative average).
    Eval mode: running statistics, or batch statistics when ``track_running_stats=False``.
    """

    def _init_batch_stats(self, num_features: int, momentum: float | None,
                          track_running_stats: bool, process_group, layer_name: str | None,
                          device=None, dtype=None) -> None:
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{layer_name or type(self).__name__}: momentum must be in [0, 1] or "
                             f"None, got {momentum}")
        self.momentum = momentum
        self.track_running_stats = bool(track_running_stats)
        self.process_group = process_group
        self._layer_name = layer_name or type(self).__name__
        fk = {"device": device, "dtype": dtype}
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **fk))
            self.register_buffer("running_var", torch.ones(num_features, **fk))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        update_running_stats(self.running_mean, self.running_var, mean, var, count, self.momentum,
                             self.num_batches_tracked)

    def _batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, biased var), each of shape (C,), for this call's mode."""
        if self.training or not self.track_running_stats:
            mean, var, count = batch_mean_var(x, self.process_group, layer=self._layer_name)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, count)
            return mean, var
        return self.running_mean, self.running_var


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...) and (N, C) -> (N, C, 1, ...) for broadcasting over ndim dims."""
    if t.dim() == 1:
        return t.reshape((1, -1) + (1,) * (ndim - 2))
    return t.reshape(t.shape[:2] + (1,) * (ndim - 2))


def check_input(layer: str, x: torch.Tensor, ndim: int, channels: int, what: str = "input") -> None:
    if x.dim() != ndim:
        dims = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{layer}: expected a {ndim}-D {what} {dims}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {what} with {channels} channels, got {x.shape[1]} "
                         f"({what} shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"{layer}: {what} must be a floating tensor, got {x.dtype}")


class _ParamFreeBatchNorm2d(_BatchStatsMixin, nn.Module):
    """BN without affine parameters: (x - mean) / sqrt(var + eps), batch or running stats."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 track_running_stats: bool = True, process_group=None, layer_name: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        self._init_batch_stats(num_features, momentum, track_running_stats, process_group, layer_name,
                               device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._batch_stats(x)
        return (x - channel_view(mean, x.dim())) * torch.rsqrt(channel_view(var, x.dim()) + self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"track_running_stats={self.track_running_stats}")


class _ParamFreeInstanceNorm2d(nn.Module):
    """IN without affine parameters: per sample and channel over the spatial dims."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_normalize(x, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def instance_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mu[n, c]) / sqrt(var[n, c] + eps), biased variance over the spatial dims."""
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)
