"""Cross-process batch statistics of the conditional / style family: Switchable Norm's BN
branch, conditional BN (both forms) and SPADE with BN, each with process_group=WORLD in 2 gloo
processes holding unequal shards (3 and 5 samples), give in float64 the outputs, running
statistics, input gradients and (summed) parameter gradients of the same layer run in one
process on the concatenated global batch.

One spawn for the whole file (a module fixture); the workers save their results and the
comparisons run here.
"""

import copy
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from normexport import registry

from _dist import free_port, gloo_group, spawn

SHARDS = (3, 5)
CASES = ["switchable_norm", "conditional_bn", "conditional_bn_embedding", "spade"]
TIMEOUT_S = 120


def _set_group(layer, group):
    layer.process_group = group   # SPADE forwards it to its param_free_norm


def _run_case(name, rank):
    spec = registry.REGISTRY[name]
    gen = torch.Generator().manual_seed(5)          # identical on every rank
    layer = spec.example(4, gen).double().train()
    inputs = [t.double() if t.is_floating_point() else t for t in spec.inputs(layer, sum(SHARDS), gen)]
    lo, hi = sum(SHARDS[:rank]), sum(SHARDS[:rank + 1])

    def run(module, ins):
        ins = [t.clone().requires_grad_() if t.is_floating_point() else t.clone() for t in ins]
        y = module(*ins)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        return y, ins, weights

    # one process, global batch (process_group None: local statistics of everything)
    single = copy.deepcopy(layer)
    y_all, ins_all, w_all = run(single, inputs)
    (y_all * w_all).sum().backward()

    # this shard with statistics synchronised over WORLD
    synced = copy.deepcopy(layer)
    _set_group(synced, dist.group.WORLD)
    shard = [t[lo:hi] for t in inputs]
    y, ins, _ = run(synced, shard)
    (y * w_all[lo:hi]).sum().backward()
    grads = {}
    for pname, p in synced.named_parameters():
        g = p.grad.clone()
        dist.all_reduce(g)          # the data-parallel sum of the shards' parameter gradients
        grads[pname] = (g, dict(single.named_parameters())[pname].grad)

    # the same shard without synchronisation: what the check above must tell apart
    local = copy.deepcopy(layer)
    with torch.no_grad():
        y_local = local(*shard)

    # eval after the step: running statistics are equal too
    synced.eval()
    single.eval()
    with torch.no_grad():
        y_eval, y_eval_all = synced(*shard), single(*inputs)[lo:hi]

    pairs = {"output": (y, y_all[lo:hi]), "eval output": (y_eval, y_eval_all)}
    for i, (a, b) in enumerate(zip(ins, ins_all)):
        if a.is_floating_point():
            pairs[f"input {i} grad"] = (a.grad, b.grad[lo:hi])
    for bname, buf in synced.named_buffers():
        pairs[f"buffer {bname}"] = (buf, dict(single.named_buffers())[bname])
    for pname, (g, g_all) in grads.items():
        pairs[f"param {pname} grad"] = (g, g_all)
    out = {k: (a.detach().double().numpy(), b.detach().double().numpy()) for k, (a, b) in pairs.items()}
    out["_unsynced_diff"] = float((y_local - y_all[lo:hi]).abs().max())
    return out


def _worker(rank, world, port, out_dir):
    with gloo_group(rank, world, port, TIMEOUT_S // 2):
        results = {name: _run_case(name, rank) for name in CASES}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dist_style"))
    world = len(SHARDS)
    spawn(_worker, (world, free_port(), out_dir), world, TIMEOUT_S)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("rank", range(len(SHARDS)))
def test_synced_shard_equals_single_process_global_batch(results, name, rank):
    res = results[rank][name]
    kinds = {k.split()[0] for k in res if not k.startswith("_")}
    assert {"output", "input", "buffer", "param"} <= kinds, kinds
    for what, pair in res.items():
        if what.startswith("_"):
            continue
        got, expected = pair
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=f"{name} rank {rank}: {what}")


@pytest.mark.parametrize("name", CASES)
def test_unsynced_statistics_differ(results, name):
    """Shard-local statistics give other outputs: the equality above proves the sync."""
    assert all(results[r][name]["_unsynced_diff"] > 1e-3 for r in range(len(SHARDS)))
