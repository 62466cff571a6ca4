"""Batch Renormalization (NORMS.md row 3).

Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
Models", NeurIPS 2017 (arXiv:1702.03275), Algorithm 1.

Training, per channel, with the batch statistics mu_B, sigma_B and the running mu, sigma::

    sigma_B = sqrt(var_B + eps)                       (var_B: biased batch variance)
    sigma   = sqrt(running_var + eps)                 (running std *with* eps)
    r = stop_gradient(clip(sigma_B / sigma, 1/r_max, r_max))
    d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta

then the running statistics are updated with momentum (after r and d were computed from the
pre-update values, as in the paper and TensorFlow's implementation). Inference is plain BN:
``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``. With r_max=1, d_max=0 the
training forward is exactly BN's.

Choices (paper vs. official code, and ours):

- **Running statistics: mean and variance (not std).** The paper's Algorithm 1 averages the
  std (``sigma += alpha (sigma_B - sigma)``); TensorFlow's ``renorm=True`` keeps a separate
  moving std ``renorm_stddev`` of ``sqrt(var_B + eps)`` for r/d and a separate
  ``moving_variance`` for inference. We keep BN's ``running_mean``/``running_var`` (torch's
  update: unbiased batch variance, ``new = (1 - momentum) old + momentum batch``) and use
  ``sigma = sqrt(running_var + eps)`` both in r/d and at inference. This makes the layer's
  state dict and inference form exactly BN's (a BN checkpoint loads, the layer folds like
  BN), and with r, d unclipped the training output equals the inference output of the
  pre-update running statistics *exactly* (the point of the method:
  ``(x - mu_B)/sigma_B * sigma_B/sigma + (mu_B - mu)/sigma = (x - mu)/sigma``).
  sigma >= sqrt(eps) > 0 always, which is what TF's ``max(renorm_stddev, sqrt(eps))`` ensures.
- **Default momentum 0.01** (TF's ``renorm_momentum=0.99``; torch BN's default is 0.1): the
  running statistics are used *in training* here, so they should be smooth.
- **r_max / d_max** are constants or schedules ``step -> value`` (any callable, e.g.
  :class:`LinearRamp`); ``step`` is ``num_batches_tracked`` before this call, i.e. the number of
  earlier training forward calls (the step counter is BN's ``num_batches_tracked`` buffer, so
  it is saved and restored with the state dict). :func:`batch_renorm_warmup` gives the
  paper's schedule (§4.1): r_max = 1, d_max = 0 (plain BN) for the first 5000 steps, then
  relaxed to r_max = 3 at 40k steps and d_max = 5 at 25k steps. The paper says "gradually
  relaxed" without the curve: we ramp linearly. The constructor's defaults are the paper's
  final values r_max=3, d_max=5; for training from scratch use
  ``BatchRenorm2d(C, **batch_renorm_warmup())``.
- ``momentum=None`` gives torch BN's cumulative average.
- ``process_group``: mu_B and var_B over the global batch of that group (exact, see
  :func:`normexport.nn._stats.batch_mean_var`); None = this process only (unlike torch's
  SyncBatchNorm, where None means WORLD).
- Batch size 1 in training mode is refused (ValueError), also with spatial dims.
"""

from __future__ import annotations

from typing import Callable, Union

import torch

from ._batchnorm_base import _BatchStatNorm

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "LinearRamp", "batch_renorm_warmup"]

Schedule = Union[float, Callable[[int], float]]


class LinearRamp:
    """A schedule ``step -> value``: ``start_value`` up to ``start_step``, then linear to
    ``end_value`` reached at ``end_step``, constant afterwards. Picklable (unlike a lambda),
    so layers holding it can be saved whole."""

    def __init__(self, start_value: float, end_value: float, start_step: int, end_step: int):
        if end_step < start_step:
            raise ValueError(f"LinearRamp: end_step ({end_step}) < start_step ({start_step})")
        self.start_value, self.end_value = float(start_value), float(end_value)
        self.start_step, self.end_step = int(start_step), int(end_step)

    def __call__(self, step: int) -> float:
        if step <= self.start_step:
            return self.start_value
        if step >= self.end_step:
            return self.end_value
        f = (step - self.start_step) / (self.end_step - self.start_step)
        return self.start_value + f * (self.end_value - self.start_value)

    def __repr__(self) -> str:
        return (f"LinearRamp({self.start_value} -> {self.end_value}, steps {self.start_step} -> "
                f"{self.end_step})")


def batch_renorm_warmup(r_max: float = 3.0, d_max: float = 5.0, start_step: int = 5000,
                        r_max_end_step: int = 40000, d_max_end_step: int = 25000
                        ) -> dict[str, LinearRamp]:
    """The paper's r_max/d_max warm-up (Ioffe 2017, §4.1) as constructor keyword arguments:
    r_max = 1 and d_max = 0 (plain BN) for the first ``start_step`` = 5000 steps, then linear
    ramps reaching ``r_max`` = 3 at step 40k and ``d_max`` = 5 at step 25k.

    ``BatchRenorm2d(64, **batch_renorm_warmup())``; scale the step counts to your schedule.
    """
    return {"r_max": LinearRamp(1.0, r_max, start_step, r_max_end_step),
            "d_max": LinearRamp(0.0, d_max, start_step, d_max_end_step)}


class _BatchRenormNd(_BatchStatNorm):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.01,
                 affine: bool = True, r_max: Schedule = 3.0, d_max: Schedule = 5.0,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, process_group, device, dtype)
        self.r_max = r_max
        self.d_max = d_max
        self.limits(0)  # validate constants early

    def limits(self, step: int | None = None) -> tuple[float, float]:
        """(r_max, d_max) at ``step`` (default: the step of the next training call)."""
        if step is None:
            step = int(self.num_batches_tracked)
        r_max = float(self.r_max(step)) if callable(self.r_max) else float(self.r_max)
        d_max = float(self.d_max(step)) if callable(self.d_max) else float(self.d_max)
        if not r_max >= 1.0 or not d_max >= 0.0:
            raise ValueError(f"{type(self).__name__}: need r_max >= 1 and d_max >= 0, got "
                             f"r_max={r_max}, d_max={d_max} at step {step}")
        return r_max, d_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        r_max, d_max = self.limits(
            int(self.num_batches_tracked) if callable(self.r_max) or callable(self.d_max) else 0)
        mean, var, count = self._batch_stats(x)
        std_b = torch.sqrt(var + self.eps)
        with torch.no_grad():
            std = torch.sqrt(self.running_var + self.eps).to(std_b.dtype)
            r = torch.clamp(std_b / std, 1.0 / r_max, r_max)
            d = torch.clamp((mean - self.running_mean.to(mean.dtype)) / std, -d_max, d_max)
        self._update_running(mean, var, count)
        # y = gamma * ((x - mu_B) * r / sigma_B + d) + beta
        scale = r / std_b
        shift = d
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        n = x.dim()
        return (x - self._channel(mean, n)) * self._channel(scale, n) + self._channel(shift, n)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max!r}, d_max={self.d_max!r}"


class BatchRenorm1d(_BatchRenormNd):
    """Batch Renormalization over (N, C) or (N, C, L). See the module docstring."""
    _input_dims = (2, 3)


class BatchRenorm2d(_BatchRenormNd):
    """Batch Renormalization over (N, C, H, W). See the module docstring."""
    _input_dims = (4,)


class BatchRenorm3d(_BatchRenormNd):
    """Batch Renormalization over (N, C, D, H, W). See the module docstring."""
    _input_dims = (5,)
