"""Common base of normexport's batch-statistics layers (Batch Renorm, Cross-Iteration BN,
CmBN): parameters, running buffers, input checks, the eval path and the batch-size check.

The layers keep exactly torch BatchNorm's state-dict keys (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``) with BN's meaning, so a BN
checkpoint loads into them and their inference form is plain BN (folded like BN). Their extra
training-time state (Cross-Iteration BN's history, CmBN's accumulation) lives in
non-persistent buffers: it moves with ``.to()``, is not saved.

They deliberately do not subclass ``torch.nn.modules.batchnorm._BatchNorm``: torch utilities
that match that class (``SyncBatchNorm.convert_sync_batchnorm``, quantization fusers) would
silently replace them with plain BN. Cross-process statistics come from the ``process_group``
argument instead (see :mod:`normexport.nn._stats`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._stats import batch_mean_var, update_running_stats


class _BatchStatNorm(nn.Module):
    #: accepted input ranks (x.dim()); subclasses set it
    _input_dims: tuple[int, ...] = (4,)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, process_group=None, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum}")
        fk = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.process_group = process_group
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **fk))
            self.bias = nn.Parameter(torch.zeros(num_features, **fk))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **fk))
        self.register_buffer("running_var", torch.ones(num_features, **fk))
        self.register_buffer("num_batches_tracked",
                             torch.tensor(0, dtype=torch.long, device=device))

    # -- state ------------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    # -- helpers for forward ----------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() not in self._input_dims:
            want = " or ".join(f"{d}-D" for d in self._input_dims)
            raise ValueError(f"{name}: expected a {want} input (N, C, ...), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels (dim 1), got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")

    def _batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-channel mean and biased variance over the (global) batch, and the (global)
        number of values per channel. Refuses a (global) batch of fewer than 2 samples."""
        name = type(self).__name__
        if self.process_group is None and x.shape[0] < 2:
            raise ValueError(f"{name}: batch statistics need a batch of at least 2 samples in "
                             f"training mode, got input shape {tuple(x.shape)} (use batch > 1, or "
                             f"eval mode)")
        mean, var, count = batch_mean_var(x, self.process_group, layer=name)
        per_sample = math.prod(x.shape[2:])
        if per_sample and count // per_sample < 2:  # the same on every process: no deadlock
            raise ValueError(f"{name}: batch statistics need a global batch of at least 2 "
                             f"samples in training mode, got {count // per_sample} (input shape "
                             f"{tuple(x.shape)} on this process)")
        return mean, var, count

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        update_running_stats(self.running_mean, self.running_var, mean, var, count,
                             self.momentum, self.num_batches_tracked)

    def _channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.reshape((1, -1) + (1,) * (ndim - 2))

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` with per-channel mean/var."""
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        y = (x - self._channel(mean, x.dim())) * self._channel(scale, x.dim())
        return y + self._channel(self.bias, x.dim()) if self.affine else y

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: BN with the running statistics (torch's own kernel)."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        if self.process_group is not None:
            s += ", process_group=set"
        return s
