"""Cross mini-Batch Normalization, CmBN (NORMS.md row 6).

Bochkovskiy, Wang & Liao, "YOLOv4: Optimal Speed and Accuracy of Object Detection", 2020
(arXiv:2004.10934), §3.3 and Figure 4; darknet's ``batch_normalize=2``
(``fast_v_cbn_gpu``).

One *accumulation step* (an optimizer step with gradient accumulation) consists of
``accumulation_steps`` mini-batches B_1..B_K (K = 4 in the paper). Mini-batch B_t is
normalized with the statistics of everything seen so far in the step::

    U_t     = B_1 ∪ ... ∪ B_t            (per channel, over N and the spatial dims)
    mu_t    = mean(U_t),   var_t = biased variance of U_t
    y       = gamma * (x - mu_t) / sqrt(var_t + eps) + beta

B_1 is normalized as by BN. Only the current mini-batch carries gradient; the statistics of
B_1..B_{t-1} enter as constants (their graphs are gone when each mini-batch is backwarded on
its own, which is how gradient accumulation works). After B_K the running statistics are
updated like BN's with the statistics of the whole step U_K (unbiased variance with U_K's
count, torch's momentum convention) and the accumulation restarts. Inference is plain BN.

How to train with it: run ``accumulation_steps`` training forward calls (one per mini-batch,
each followed by ``loss.backward()``), then ``optimizer.step(); optimizer.zero_grad()`` --
weights, scale and shift change only after the last mini-batch, as the paper's figure shows.
The layer counts its training forward calls to know where it is in the step
(``accumulated_batches``); if your loop does not match (an extra training forward, a skipped
batch, a resumed run), call :meth:`reset_accumulation` at the start of each step. Eval-mode
calls do not count.

Choices (paper / darknet vs. ours):

- **Union statistics, count-weighted**, combined exactly (Chan et al.'s parallel formula).
  darknet averages the per-mini-batch mean and E[x^2] with equal weights (its per-mini-batch
  E[x^2] divides by n - 1 and is floored at mean^2) and takes ``max(0, E[x^2] - mean^2)``:
  for equal mini-batch sizes the same up to that n / (n - 1) factor and rounding.
- **Running statistics once per accumulation step** with the whole step's statistics (so a
  full step updates them exactly as BN on the concatenated mini-batches would).
  darknet updates its rolling mean/variance after every mini-batch with the statistics
  accumulated so far (its "only after the last mini-batch" condition is commented out).
- ``num_batches_tracked`` counts running-statistic updates (accumulation steps), so
  ``momentum=None`` averages over steps.
- With ``accumulation_steps=1`` the layer is exactly BN.
- The accumulation state (``acc_batches``, ``acc_count``, ``acc_mean``, ``acc_var``) is in
  non-persistent buffers: not saved (checkpoints are taken between steps).
- ``process_group``: each mini-batch's statistics over the global batch of that group
  (exact); None = this process only (unlike torch's SyncBatchNorm).
- Batch size 1 in training mode is refused (ValueError), also with spatial dims.
"""

from __future__ import annotations

import torch

from ._batchnorm_base import _BatchStatNorm

__all__ = ["CmBN1d", "CmBN2d", "CmBN3d", "CmBN"]


class _CmBNNd(_BatchStatNorm):
    def __init__(self, num_features: int, accumulation_steps: int = 4, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, process_group, device, dtype)
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"{type(self).__name__}: accumulation_steps must be an int >= 1, "
                             f"got {accumulation_steps!r}")
        self.accumulation_steps = accumulation_steps
        fk = {"device": device, "dtype": dtype}
        # mini-batches already accumulated in the current step, values per channel in them,
        # and their mean / biased variance
        self.register_buffer("acc_batches", torch.tensor(0, dtype=torch.long, device=device),
                             persistent=False)
        self.register_buffer("acc_count", torch.tensor(0, dtype=torch.long, device=device),
                             persistent=False)
        self.register_buffer("acc_mean", torch.zeros(num_features, **fk), persistent=False)
        self.register_buffer("acc_var", torch.zeros(num_features, **fk), persistent=False)

    @property
    def accumulated_batches(self) -> int:
        """Mini-batches already accumulated in the current step (0 .. accumulation_steps-1)."""
        return int(self.acc_batches)

    @torch.no_grad()
    def reset_accumulation(self) -> None:
        """Start a new accumulation step (discard the statistics accumulated so far)."""
        self.acc_batches.zero_()
        self.acc_count.zero_()
        self.acc_mean.zero_()
        self.acc_var.zero_()

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        self.reset_accumulation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        mean_b, var_b, n_b = self._batch_stats(x)
        n_a = int(self.acc_count)
        if int(self.acc_batches) == 0 or n_a == 0:
            mean, var, n = mean_b, var_b, n_b
        else:  # union of the accumulated part (constants) and this mini-batch
            mean_a = self.acc_mean.to(mean_b.dtype)
            var_a = self.acc_var.to(var_b.dtype)
            n = n_a + n_b
            delta = mean_b - mean_a
            mean = mean_a + delta * (n_b / n)
            var = (var_a * n_a + var_b * n_b + delta.square() * (n_a * n_b / n)) / n
        with torch.no_grad():
            if int(self.acc_batches) + 1 >= self.accumulation_steps:
                self._update_running(mean, var, n)
                self.reset_accumulation()
            else:
                self.acc_batches.add_(1)
                self.acc_count.fill_(n)
                self.acc_mean.copy_(mean)
                self.acc_var.copy_(var)
        return self._normalize(x, mean, var)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", accumulation_steps={self.accumulation_steps}"


class CmBN1d(_CmBNNd):
    """CmBN over (N, C) or (N, C, L). See the module docstring."""
    _input_dims = (2, 3)


class CmBN2d(_CmBNNd):
    """CmBN over (N, C, H, W) (YOLOv4's case). See the module docstring."""
    _input_dims = (4,)


class CmBN3d(_CmBNNd):
    """CmBN over (N, C, D, H, W). See the module docstring."""
    _input_dims = (5,)


#: the paper's name, for the 2-D (conv feature map) case
CmBN = CmBN2d
