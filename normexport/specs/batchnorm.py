"""Registry entries: the batch-statistics family (NORMS.md rows 2-6).

BatchNorm and Sync BN are torch's own layers; Batch Renorm, Cross-Iteration BN and CmBN are
normexport.nn's. Their inference form is BN: ``export=Fold("bn")``.

The examples carry non-trivial parameters *and* running buffers (eval differs from train),
and, for the stateful layers, a non-trivial state, so that the one forward call of the generic
tests exercises the method, not just BN:
- Batch Renorm: r and d clipped (r != 1, d != 0) on every channel, at both bounds;
- CmBN: the call is the last mini-batch of an accumulation step (union statistics with the
  step so far, running-statistic update, reset);
- Cross-Iteration BN: past burn-in with two stored iterations whose compensation moves the
  statistics, with the variance constraint active on one channel; its preceding conv is
  frozen, so the call uses the window but records nothing (see the layer's docstring).

min_train_batch: torch's BatchNorm / SyncBatchNorm accept a batch of 1 in training mode when
a sample has more than one value per channel (N*H*W > 1), so their entries say 1 (torch's
behaviour, not changed here); normexport's layers refuse a batch of 1 (2).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import reference
from ..nn import batch_renorm, cmbn, cross_iteration_bn
from ..spec import Fold, NormSpec, Reference, np64

_ref = reference.batchnorm

# spatial sizes by input rank (odd sizes on purpose)
_SPATIAL = {2: (), 3: (9,), 4: (7, 5), 5: (3, 5, 3)}


def _rank(m: nn.Module) -> int:
    if isinstance(m, (nn.BatchNorm1d, batch_renorm.BatchRenorm1d, cmbn.CmBN1d)):
        return 3
    if isinstance(m, (nn.BatchNorm3d, batch_renorm.BatchRenorm3d, cmbn.CmBN3d)):
        return 5
    return 4


def _randomize(m: nn.Module, gen: torch.Generator, nbt: int = 3) -> None:
    c = m.num_features
    with torch.no_grad():
        if m.weight is not None:
            m.weight.copy_(0.5 + torch.rand(c, generator=gen))
            m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen) * 1.5)
        m.num_batches_tracked.fill_(nbt)


def _inputs(m, batch: int, gen: torch.Generator):
    shape = (batch, m.num_features) + _SPATIAL[_rank(m)]
    return (torch.randn(shape, generator=gen) * 2 + 0.5,)


def _affine(m):
    return np64(m.weight), np64(m.bias)


# ---- BatchNorm, SyncBatchNorm (rows 2, 4) -------------------------------------------------

def _no_running_stats(m) -> bool:
    """torch's rule: without running statistics (track_running_stats=False) eval uses batch
    statistics. (normexport's BN-family layers always keep running statistics.)"""
    return m.running_mean is None or m.running_var is None


def _bn_reference(m: nn.modules.batchnorm._BatchNorm, inputs, training: bool) -> Reference:
    (x,) = inputs
    w, b = _affine(m)
    use_batch = training or m.running_mean is None
    if not use_batch:
        return Reference((_ref.batch_norm_eval(x, w, b, np64(m.running_mean), np64(m.running_var),
                                               m.eps),))
    if m.running_mean is None or not training:  # batch statistics, no buffers to update
        y, _ = _ref.batch_norm_train(x, w, b, 0.0, 1.0, 0, 0.0, m.eps)
        return Reference((y,))
    y, bufs = _ref.batch_norm_train(x, w, b, np64(m.running_mean), np64(m.running_var),
                                    int(m.num_batches_tracked), m.momentum, m.eps)
    return Reference((y,), bufs)


def _bn_example(channels: int, gen: torch.Generator) -> nn.BatchNorm2d:
    m = nn.BatchNorm2d(channels)
    _randomize(m, gen)
    return m


def _syncbn_example(channels: int, gen: torch.Generator) -> nn.SyncBatchNorm:
    m = nn.SyncBatchNorm(channels)
    _randomize(m, gen)
    return m


BATCHNORM = NormSpec(
    name="batchnorm", title="BatchNorm (torch)", row=2,
    layers=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    example=_bn_example, inputs=_inputs, reference=_bn_reference,
    export=Fold("bn"), min_train_batch=1, eval_batch_stats=_no_running_stats,
)

SYNCBATCHNORM = NormSpec(
    name="syncbatchnorm", title="Sync BN / Cross-GPU BN (torch SyncBatchNorm)", row=4,
    layers=(nn.SyncBatchNorm,),
    example=_syncbn_example, inputs=_inputs, reference=_bn_reference,
    export=Fold("bn"), min_train_batch=1, eval_batch_stats=_no_running_stats,
)


# ---- Batch Renormalization (row 3) --------------------------------------------------------

def _brn_reference(m: batch_renorm._BatchRenormNd, inputs, training: bool) -> Reference:
    (x,) = inputs
    w, b = _affine(m)
    if not training:
        return Reference((_ref.batch_norm_eval(x, w, b, np64(m.running_mean), np64(m.running_var),
                                               m.eps),))
    r_max, d_max = m.limits()
    y, bufs, _, _ = _ref.batch_renorm_train(x, w, b, np64(m.running_mean), np64(m.running_var),
                                            int(m.num_batches_tracked), m.momentum, m.eps,
                                            r_max, d_max)
    return Reference((y,), bufs)


def _brn_example(channels: int, gen: torch.Generator) -> batch_renorm.BatchRenorm2d:
    m = batch_renorm.BatchRenorm2d(channels, momentum=0.1, r_max=1.5, d_max=0.5)
    _randomize(m, gen, nbt=7)
    with torch.no_grad():
        m.running_mean.copy_(torch.randn(channels, generator=gen) * 0.2)
        m.running_var.copy_(0.6 + torch.rand(channels, generator=gen) * 0.8)
    return m


def _brn_inputs(m, batch: int, gen: torch.Generator):
    """Channels alternate between spread 0.3, mean -2 and spread 3, mean +2.5: with running
    std in [0.77, 1.18] and |running mean| small, r is clipped to 1/r_max or r_max and d to
    -d_max or d_max on every channel (both bounds of each occur). Clipped, r and d are locally
    constant, so the layer's stop-gradient is their true derivative and the generic gradcheck
    is exact; the unclipped regime (where the paper's gradient deliberately differs from the
    derivative) is tested in tests/test_batchnorm.py."""
    c = m.num_features
    shape = (batch, c) + _SPATIAL[_rank(m)]
    view = (1, c) + (1,) * (len(shape) - 2)
    odd = torch.arange(c) % 2 == 1
    scale = torch.where(odd, 3.0, 0.3).reshape(view)
    shift = torch.where(odd, 2.5, -2.0).reshape(view)
    return (torch.randn(shape, generator=gen) * scale + shift,)


BATCH_RENORM = NormSpec(
    name="batch_renorm", title="Batch Renormalization", row=3,
    layers=(batch_renorm._BatchRenormNd,),
    example=_brn_example, inputs=_brn_inputs, reference=_brn_reference,
    export=Fold("bn"), min_train_batch=2,
)


# ---- CmBN (row 6) -------------------------------------------------------------------------

def _cmbn_reference(m: cmbn._CmBNNd, inputs, training: bool) -> Reference:
    (x,) = inputs
    w, b = _affine(m)
    if not training:
        return Reference((_ref.batch_norm_eval(x, w, b, np64(m.running_mean), np64(m.running_var),
                                               m.eps),))
    y, bufs = _ref.cmbn_train_from_state(
        x, w, b, np64(m.running_mean), np64(m.running_var), int(m.num_batches_tracked), m.momentum,
        m.eps, m.accumulation_steps, int(m.acc_batches), int(m.acc_count), np64(m.acc_mean),
        np64(m.acc_var))
    return Reference((y,), bufs)


def _cmbn_example(channels: int, gen: torch.Generator) -> cmbn.CmBN2d:
    """Mid-step: 2 of 3 mini-batches (of 4 samples each) already accumulated."""
    m = cmbn.CmBN2d(channels, accumulation_steps=3)
    _randomize(m, gen)
    with torch.no_grad():
        m.acc_batches.fill_(2)
        m.acc_count.fill_(2 * 4 * 7 * 5)
        m.acc_mean.copy_(torch.randn(channels, generator=gen) * 0.5 + 0.5)
        m.acc_var.copy_(1.0 + torch.rand(channels, generator=gen) * 4)
    return m


CMBN = NormSpec(
    name="cmbn", title="Cross mini-Batch Normalization (YOLOv4 CmBN)", row=6,
    layers=(cmbn._CmBNNd,),
    example=_cmbn_example, inputs=_inputs, reference=_cmbn_reference,
    export=Fold("bn"), min_train_batch=2,
)


# ---- Cross-Iteration BN (row 5) -----------------------------------------------------------

def _cibn_history(m: cross_iteration_bn.CrossIterationBatchNorm2d) -> dict:
    return {"mean": np64(m.hist_mean), "sqmean": np64(m.hist_sqmean),
            "grad_mean": np64(m.hist_grad_mean), "grad_sqmean": np64(m.hist_grad_sqmean),
            "weight": np64(m.hist_weight)}


def _cibn_reference(m: cross_iteration_bn.CrossIterationBatchNorm2d, inputs,
                    training: bool) -> Reference:
    (x,) = inputs
    w, b = _affine(m)
    if not training:
        return Reference((_ref.batch_norm_eval(x, w, b, np64(m.running_mean), np64(m.running_var),
                                               m.eps),))
    cross = m.window > 1 and int(m.num_batches_tracked) >= m.burn_in
    theta = np64(m.preceding_weight()) if cross else None
    # the examples' preceding conv is frozen: this call cannot record its gradients
    y, bufs, _ = _ref.cross_iteration_bn_train(
        x, w, b, np64(m.running_mean), np64(m.running_var), int(m.num_batches_tracked),
        m.momentum, m.eps, m.window, m.burn_in, m.rho, theta, _cibn_history(m), grads=None)
    return Reference((y,), bufs)


def _cibn_example(channels: int, gen: torch.Generator) -> cross_iteration_bn.CrossIterationBatchNorm2d:
    conv = nn.Conv2d(3, channels, 3, padding=1, bias=False).requires_grad_(False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.3)
    m = cross_iteration_bn.CrossIterationBatchNorm2d(channels, window=3, burn_in=2, source=conv)
    _randomize(m, gen, nbt=4)
    w = conv.weight.detach()
    L = 2
    with torch.no_grad():
        mean = torch.randn(L, channels, generator=gen) * 0.3 + 0.5
        sqmean = mean.square() + 0.3 + torch.rand(L, channels, generator=gen) * 2
        g_mean = torch.randn((L, *w.shape), generator=gen) * 0.5
        g_sq = torch.randn((L, *w.shape), generator=gen) * 0.5
        hist_w = w.unsqueeze(0) + torch.randn((L, *w.shape), generator=gen) * 0.15
        # channel 0 of the newest entry: mean unchanged by the compensation, mean of squares
        # pulled below mean^2 -> the variance constraint is active there
        g_mean[0, 0] = 0
        g_sq[0, 0] = -2 * (w[0] - hist_w[0, 0])
        sqmean[0, 0] = mean[0, 0] ** 2 + 0.02
    m.hist_mean, m.hist_sqmean = mean, sqmean
    m.hist_grad_mean, m.hist_grad_sqmean, m.hist_weight = g_mean, g_sq, hist_w
    return m


def _cibn_inputs(m, batch: int, gen: torch.Generator):
    return (torch.randn((batch, m.num_features, 7, 5), generator=gen) * 1.5 + 0.5,)


CROSS_ITERATION_BN = NormSpec(
    name="cross_iteration_bn", title="Cross-Iteration Batch Normalization", row=5,
    layers=(cross_iteration_bn.CrossIterationBatchNorm2d,),
    example=_cibn_example, inputs=_cibn_inputs, reference=_cibn_reference,
    export=Fold("bn"), min_train_batch=2,
)
