"""Batch statistics shared by every batch-statistics layer (BN family, Switchable Norm's BN
branch, conditional BN, SPADE with BN), optionally synchronised across processes.

Cross-process statistics (NORMS.md row 4, MegDet's Cross-GPU BN) are exact: every process
contributes its count, mean and sum of squared deviations (M2); these are all-gathered and
combined with Chan et al.'s parallel formula

    N = sum n_i,   mean = sum n_i mean_i / N,   M2 = sum (M2_i + n_i (mean_i - mean)^2)

which equals the statistics of the concatenated global batch (no E[x^2] - E[x]^2
cancellation). The all-gather is torch.distributed.nn's, so gradients flow to every process's
contribution, as with torch's SyncBatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _is_distributed(process_group) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def batch_mean_var(x: torch.Tensor, process_group=None, *, layer: str = "batch norm",
                   min_count: int = 2) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance of ``x`` (N, C, *) over every dim but 1.

    With a ``process_group`` (``torch.distributed.group.WORLD`` for all processes) and an
    initialised process group of more than one process, the statistics cover the batches of
    all its processes; ``None`` gives local statistics.
    Returns ``(mean[C], var[C], count)`` with ``count`` the global number of values per
    channel. Raises ValueError, naming ``layer``, when ``count < min_count``.
    """
    if x.dim() < 2:
        raise ValueError(f"{layer}: expected input (N, C, *), got shape {tuple(x.shape)}")
    dims = [0] + list(range(2, x.dim()))
    local_count = x.numel() // x.shape[1] if x.shape[1] else 0
    if process_group is None or not _is_distributed(process_group):
        if local_count < min_count:
            raise ValueError(f"{layer}: batch statistics need more than one value per channel in "
                             f"training mode, got input shape {tuple(x.shape)} (use batch > 1, or "
                             f"eval mode)")
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        return mean, var, local_count

    import torch.distributed.nn.functional as dnn
    if local_count:
        var, mean = torch.var_mean(x, dim=dims, correction=0)
    else:  # an empty shard still takes part in the collective (and in its backward: the
        # zeros stay attached to x's graph, else the other processes' backward would wait)
        mean = var = x.sum(dim=dims)
    n = x.new_full((1,), float(local_count))
    packed = torch.cat([n, mean, var * local_count])                 # (1 + 2C,)
    gathered = torch.stack(dnn.all_gather(packed, group=process_group))  # (P, 1 + 2C)
    c = x.shape[1]
    counts, means, m2s = gathered[:, :1], gathered[:, 1:1 + c], gathered[:, 1 + c:]
    total = counts.sum()
    count = int(total.item())
    if count < min_count:
        raise ValueError(f"{layer}: batch statistics need more than one value per channel in "
                         f"training mode, the global batch has {count} (input shape "
                         f"{tuple(x.shape)} on this process)")
    _, g_mean, g_m2 = combine_moments(counts, means, m2s)
    return g_mean, g_m2 / total, count


def combine_moments(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al.'s parallel formula: the pooled ``(count, mean, M2)`` of P groups, given each
    group's value count ``counts`` (P, 1), per-channel ``means`` (P, C) and sums of squared
    deviations ``m2s`` (P, C). Exact (no E[x^2] - E[x]^2); the one implementation the
    cross-process statistics and ``normexport.calibrate``'s precise BN share."""
    total = counts.sum(0)
    mean = (counts * means).sum(0) / total
    return total, mean, (m2s + counts * (means - mean) ** 2).sum(0)


@torch.no_grad()
def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor,
                         mean: torch.Tensor, var: torch.Tensor, count: int,
                         momentum: float | None, num_batches_tracked: torch.Tensor | None) -> None:
    """torch's BatchNorm update: running = (1 - m) running + m batch, with the unbiased batch
    variance ``var * count / (count - 1)``; ``momentum=None`` gives the cumulative average
    (m = 1 / num_batches_tracked)."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    m = momentum if momentum is not None else 1.0 / float(num_batches_tracked)
    unbiased = var * (count / max(count - 1, 1))
    running_mean.mul_(1 - m).add_(mean.detach().to(running_mean.dtype), alpha=m)
    running_var.mul_(1 - m).add_(unbiased.detach().to(running_var.dtype), alpha=m)
