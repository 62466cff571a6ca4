"""Cross-process batch statistics (NORMS.md row 4) with 2 real processes (gloo, CPU, float64):
each synced layer with ``process_group=WORLD``, every rank holding part of the global batch
(unequal parts), gives the outputs, running statistics and input gradients of the same layer
run in one process on the concatenated batch; parameter gradients summed over the ranks give
the single-process ones. One spawn for the whole file; each rank compares against its own
single-process run of the same layer (no process group) on the whole batch."""


import pytest
import torch
import torch.distributed as dist
from torch import nn

from _dist import free_port, gloo_group, spawn

WORLD_SIZE = 2
TIMEOUT_S = 90
F64 = torch.float64


def _assert_same(got, expected, what):
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13, msg=lambda m: f"{what}: {m}")


def _shard(x, split, rank):
    start = sum(split[:rank])
    return x[start:start + split[rank]]


def _data(seed, shape):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64) * 1.7 + 0.4


def _check_batch_mean_var(rank, world):
    from normexport.nn._stats import batch_mean_var
    for split in ((3, 5), (0, 8)):
        x = _data(1, (8, 3, 5, 4))
        xs = x.clone().requires_grad_()
        mean, var, count = batch_mean_var(xs, None)
        a, b = torch.tensor([0.3, -1.2, 0.7], dtype=F64), torch.tensor([1.1, 0.4, -0.5], dtype=F64)
        (a @ mean + b @ var).backward()  # the sum of the ranks' losses below

        xl = _shard(x, split, rank).clone().requires_grad_()
        mean_l, var_l, count_l = batch_mean_var(xl, world)
        assert count_l == count == 8 * 20
        _assert_same(mean_l, mean, f"batch_mean_var {split}: mean")
        _assert_same(var_l, var, f"batch_mean_var {split}: var")
        share = (0.25, 0.75)[rank]  # this rank's part of the global loss
        (share * (a @ mean_l + b @ var_l)).backward()
        _assert_same(xl.grad, _shard(xs.grad, split, rank), f"batch_mean_var {split}: d x")


def _compare_runs(rank, world, make, split, batches, what, before_step=None):
    """Run ``make()`` single-process on each whole batch and ``make()`` with process_group on
    this rank's shard; compare outputs, buffers, input and (summed) parameter gradients."""
    single = make(None)
    synced = make(world)
    for i, x in enumerate(batches):
        if before_step is not None:
            before_step(single, synced, i)
        xs = x.clone().requires_grad_()
        ys = single(xs)
        gy = _data(100 + i, ys.shape)
        (ys * gy).sum().backward()
        xl = _shard(x, split, rank).clone().requires_grad_()
        yl = synced(xl)
        (yl * _shard(gy, split, rank)).sum().backward()
        tag = f"{what} {split} call {i}"
        _assert_same(yl, _shard(ys, split, rank), f"{tag}: output")
        _assert_same(xl.grad, _shard(xs.grad, split, rank), f"{tag}: d input")
        for (name, b_s), (_, b_l) in zip(single.named_buffers(), synced.named_buffers()):
            _assert_same(b_l, b_s, f"{tag}: buffer {name}")
    for (name, p_s), (_, p_l) in zip(single.named_parameters(), synced.named_parameters()):
        g = p_l.grad.clone()
        dist.all_reduce(g, group=world)
        _assert_same(g, p_s.grad, f"{what} {split}: d {name} summed over ranks")


def _check_batch_renorm(rank, world):
    from normexport.nn import BatchRenorm2d

    def make(pg):
        m = BatchRenorm2d(3, momentum=0.2, r_max=1.3, d_max=0.4, process_group=pg, dtype=F64)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([0.7, 1.2, 0.9]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            m.running_var.copy_(torch.tensor([0.5, 1.0, 6.0]))
        return m.train()

    batches = [_data(10 + i, (8, 3, 5, 3)) for i in range(3)]
    for split in ((3, 5), (4, 4), (1, 7)):
        _compare_runs(rank, world, make, split, batches, "BatchRenorm2d")
    # a global batch of 2 with one sample per rank works; a global batch of 1 is refused on
    # every rank (no hang)
    _compare_runs(rank, world, make, (1, 1), [_data(20, (2, 3, 4, 4))], "BatchRenorm2d")
    with pytest.raises(ValueError, match="global batch of at least 2"):
        make(world)(_shard(_data(21, (1, 3, 4, 4)), (1, 0), rank))


def _check_cmbn(rank, world):
    from normexport.nn import CmBN2d

    def make(pg):
        m = CmBN2d(3, accumulation_steps=2, momentum=0.3, process_group=pg, dtype=F64)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([0.7, 1.2, 0.9]))
            m.running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
        return m.train()

    batches = [_data(30 + i, (8, 3, 3, 5)) for i in range(5)]  # 2.5 accumulation steps
    _compare_runs(rank, world, make, (3, 5), batches, "CmBN2d")


def _check_cross_iteration_bn(rank, world):
    from normexport.nn import CrossIterationBatchNorm2d

    def make(pg):
        torch.manual_seed(0)
        conv = nn.Conv2d(2, 3, 3, padding=1, dtype=F64)
        norm = CrossIterationBatchNorm2d(3, window=3, burn_in=1, momentum=0.2, source=conv,
                                         process_group=pg, dtype=F64)
        return nn.Sequential(conv, norm).train()

    def change_weights(single, synced, i):  # the same deterministic update in both runs
        if i:
            delta = _data(50 + i, single[0].weight.shape) * 0.05
            with torch.no_grad():
                single[0].weight.add_(delta)
                synced[0].weight.add_(delta)

    batches = [_data(40 + i, (8, 2, 5, 4)) for i in range(5)]
    _compare_runs(rank, world, make, (3, 5), batches, "CrossIterationBatchNorm2d",
                  before_step=change_weights)


def _check_torch_syncbn_is_gpu_only(rank, world):
    # why normexport's layers carry their own process_group: torch's SyncBatchNorm refuses
    # CPU tensors as soon as a process group is initialised (the registry entry for it runs
    # single-process, where torch falls back to plain BN)
    with pytest.raises(ValueError, match="GPU"):
        nn.SyncBatchNorm(3).train()(_data(60, (4, 3, 3, 3)).float())


def _worker(rank, port):
    with gloo_group(rank, WORLD_SIZE, port, TIMEOUT_S) as world:
        _check_batch_mean_var(rank, world)
        _check_batch_renorm(rank, world)
        _check_cmbn(rank, world)
        _check_cross_iteration_bn(rank, world)
        _check_torch_syncbn_is_gpu_only(rank, world)
        dist.barrier()


def test_synced_layers_equal_single_process_on_the_global_batch():
    spawn(_worker, (free_port(),), WORLD_SIZE, TIMEOUT_S)
