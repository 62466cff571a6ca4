"""Running statistics of the BN family: the train/infer gap, and precise-BN recalibration.

A BN-family layer normalises with batch statistics in training and with its running buffers
at inference. When the buffers are stale (weights changed after the last training step, a
checkpoint surgery, too few or too small batches, momentum too slow) the exported model
computes something the trained model never did. Two tools:

- :func:`train_infer_gap`: one eval-mode pass over calibration batches; for every BN-family
  layer (forward order) the exact statistics of its input over all the batches against its
  running buffers, as normalised gaps, and a flag when a gap exceeds the thresholds.
- :func:`recalibrate`: precise BN. The running buffers are replaced by the exact population
  statistics of each layer's input over all the calibration samples (per-batch float64 count,
  mean and M2 combined with Chan et al.'s parallel formula, which equals the float64
  statistics of the concatenated data), not a momentum average.

BN-family layers (``bn_family_layers``): every layer with running buffers that inference uses
in place of batch statistics, found by class, each with the statistic its buffers estimate:

=================================================  =============================================
torch ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``       per-channel mean, *unbiased* variance over
(``track_running_stats=True``)                      (N, *spatial) (torch's running_var update)
normexport ``BatchRenorm``, ``CmBN``,                the same (``_stats.update_running_stats``;
``CrossIterationBatchNorm2d``                       CmBN: of whole accumulation steps)
``ConditionalBatchNorm2d`` and the categorical      the same (shared statistics; the condition
form                                                only changes gamma / beta)
``SwitchableNorm1d/2d`` BN branch                   the same with ``using_moving_average=True``;
                                                    with the paper's batch average
                                                    (``False``) the *biased* pooled variance
``SPADE(norm="batch")``                             its ``param_free_norm`` submodule (that path
                                                    is reported), unbiased as BN
torch ``InstanceNorm1d/2d/3d``                       per channel, the average over instances of
(``track_running_stats=True``)                      the instance mean and of the *unbiased*
                                                    instance variance (torch's update of IN's
                                                    running stats, which eval uses)
=================================================  =============================================

Mode (what "layer k's input" means): **sequential eval mode**. Every forward runs with all
layers in eval mode. The first pass measures every layer with the original buffers (the
"before" gap) and recalibrates the first layer in forward order; then each following layer k
gets its own pass over the batches, made with layers 1..k-1 already recalibrated (the pass
stops as soon as layer k has seen its input, so it costs on average half a forward). The
result is the fixed point: after recalibration the running statistics of *every* layer equal
the exact statistics of the input that layer receives from the deployed (eval-mode) model on
the calibration data, so :func:`train_infer_gap` on the same data reports zero gaps, and
recalibrating again changes nothing (beyond float rounding).

Wu & Johnson 2021 ("Rethinking 'Batch' in BatchNorm", sec. 3) compute PreciseBN in one pass
with the model in training mode, i.e. the population statistics of the features as training
computes them (each layer normalising with mini-batch statistics upstream). That is cheaper (one
pass) but its layer-k statistics are not those of the inference model's layer-k input: the
difference shrinks with the batch size, and is exactly the train/infer gap this module is
about. We pay L/2 forwards per batch (L = number of layers) for exactness;
``recalibrate(..., sequential=False)`` is the one-pass variant (eval mode), exact for a layer
whose upstream layers' buffers were already right. Training-mode
forwards would also advance layer state (CmBN accumulation, Cross-Iteration BN history,
``num_batches_tracked``, dropout masks), which eval mode never touches.

A layer called several times per forward (shared module) is estimated from all its calls;
its later calls see its own pre-recalibration buffers through its earlier calls (no fixed point
is attempted for such self-dependence; it is rare and the report says ``calls``).

Only ``running_mean`` and ``running_var`` are written (cast to their dtype);
``num_batches_tracked``, CmBN's accumulation, Cross-Iteration BN's history and every other
buffer and parameter stay as they were, and each module's train/eval flag is restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .nn._stats import combine_moments

__all__ = ["train_infer_gap", "recalibrate", "bn_family_layers", "load_batches", "GapReport",
           "GapRow", "RecalibrationReport", "RecalibrationRow", "BNLayer", "DEFAULT_MEAN_THRESHOLD",
           "DEFAULT_VAR_THRESHOLD"]

#: flag a layer when max over channels |mu_batch - mu_run| / sqrt(var_run + eps) exceeds this
DEFAULT_MEAN_THRESHOLD = 0.5
#: ... or when max over channels |log((var_batch + eps) / (var_run + eps))| exceeds this (ln 2:
#: a factor 2 in variance, 1.41 in scale)
DEFAULT_VAR_THRESHOLD = math.log(2.0)


# ---- which layers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BNLayer:
    """One BN-family layer: module path, the module, and the statistic its buffers estimate:
    ``"unbiased"`` / ``"biased"`` (per-channel population variance with / without Bessel's
    correction) or ``"instance"`` (mean over instances of the unbiased instance variance)."""
    path: str
    module: nn.Module
    kind: str

    @property
    def layer(self) -> str:
        name = type(self.module).__name__
        return "SPADE (param-free BN)" if name == "_ParamFreeBatchNorm2d" else name

    @property
    def eps(self) -> float:
        return float(self.module.eps)


def _kind(m: nn.Module) -> str | None:
    from .nn._batchnorm_base import _BatchStatNorm
    from .nn._bn_branch import _BatchStatsMixin
    from .nn.switchable import _SwitchableNorm
    rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    if not isinstance(rm, torch.Tensor) or not isinstance(rv, torch.Tensor):
        return None
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, _BatchStatNorm)):
        return "unbiased"
    if isinstance(m, _BatchStatsMixin):
        if isinstance(m, _SwitchableNorm) and not m.using_moving_average:
            return "biased"
        return "unbiased"
    if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
        return "instance"
    return None


def bn_family_layers(model: nn.Module) -> list[BNLayer]:
    """Every BN-family layer with running statistics in ``model`` (module registration order;
    the tools below report forward order)."""
    out = []
    for path, m in model.named_modules():
        kind = _kind(m)
        if kind is not None:
            out.append(BNLayer(path, m, kind))
    return out


# ---- batches --------------------------------------------------------------------------------

def _as_args(item, index: int) -> tuple:
    if isinstance(item, torch.Tensor):
        return (item,)
    if isinstance(item, np.ndarray):
        return (torch.from_numpy(item),)
    if isinstance(item, (tuple, list)) and item and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in item):
        return tuple(torch.from_numpy(t) if isinstance(t, np.ndarray) else t for t in item)
    raise TypeError(f"calibration batch {index}: expected a tensor or a tuple of tensors (the model's "
                    f"positional inputs), got {type(item).__name__}")


def load_batches(batches, num_batches: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """The calibration batches as a list of argument tuples (at most ``num_batches``)."""
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        raise TypeError("calibration batches: expected an iterable of batches (a list of tensors or "
                        "of tuples of tensors), got a single tensor; wrap it in a list")
    out = []
    for i, item in enumerate(batches):
        if num_batches is not None and i >= num_batches:
            break
        out.append(_as_args(item, i))
    if not out:
        raise ValueError("no calibration batches")
    return out


def _device(model: nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


# ---- statistics -----------------------------------------------------------------------------

class _Moments:
    """Exact float64 per-channel statistics of every value a layer's input took, combined over
    batches with Chan et al.'s parallel formula; for ``instance`` layers also the sums of the
    instance means and unbiased instance variances. Also the spread of the per-batch means."""

    def __init__(self):
        self.n = 0            # values per channel
        self.mean = None
        self.m2 = None
        self.inst = 0         # instances (IN)
        self.inst_mean = None
        self.inst_var = None
        self.batches = 0      # Welford over per-batch means (batch noise)
        self.bmean = None
        self.bm2 = None
        self.calls = 0

    def add(self, x: torch.Tensor, layer: str, instance: bool = False) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{layer}: expected an input (N, C, *), got {shape}")
        self.calls += 1
        c = x.shape[1]
        n = x.numel() // c if c else 0
        if n == 0:
            return
        xd = x.detach().to(torch.float64)
        dims = [0] + list(range(2, xd.dim()))
        var_b, mean_b = torch.var_mean(xd, dim=dims, correction=0)
        m2_b = var_b * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean_b, m2_b
        else:
            counts = torch.tensor([[float(self.n)], [float(n)]], dtype=torch.float64)
            _, self.mean, self.m2 = combine_moments(counts, torch.stack([self.mean, mean_b]),
                                                    torch.stack([self.m2, m2_b]))
            self.n += n
        if instance and xd.dim() > 2:
            s = math.prod(xd.shape[2:])
            iv, im = torch.var_mean(xd.flatten(2), dim=2, correction=1 if s > 1 else 0)
            add_m, add_v = im.sum(0), iv.sum(0)
            self.inst_mean = add_m if self.inst_mean is None else self.inst_mean + add_m
            self.inst_var = add_v if self.inst_var is None else self.inst_var + add_v
            self.inst += xd.shape[0]
        self.batches += 1
        if self.bmean is None:
            self.bmean, self.bm2 = mean_b.clone(), torch.zeros_like(mean_b)
        else:
            d = mean_b - self.bmean
            self.bmean = self.bmean + d / self.batches
            self.bm2 = self.bm2 + d * (mean_b - self.bmean)

    def estimate(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) float64 in the convention of the layer's running buffers."""
        if kind == "instance":
            if not self.inst:
                raise ValueError("instance statistics need inputs with spatial dims")
            return self.inst_mean / self.inst, self.inst_var / self.inst
        biased = self.m2 / self.n
        if kind == "biased":
            return self.mean, biased
        return self.mean, self.m2 / max(self.n - 1, 1)

    def population_var(self) -> torch.Tensor:
        return self.m2 / self.n

    def batch_std(self) -> torch.Tensor | None:
        return (self.bm2 / (self.batches - 1)).sqrt() if self.batches > 1 else None


class _Stop(BaseException):
    """Ends a recalibration pass once the layer being measured has seen its input (a
    BaseException so that a model's ``except Exception`` does not swallow it)."""


def _collect(model: nn.Module, batches, layers: Sequence[BNLayer], *, stop: BNLayer | None = None,
             order: list | None = None) -> dict[str, _Moments]:
    """One eval-mode pass: the input statistics of ``layers``. ``order`` (a list) receives the
    paths in first-call order. ``stop``: end each forward after that layer's (first) input."""
    acc = {l.path: _Moments() for l in layers}
    handles = []
    seen: set[str] = set()

    def make_hook(l: BNLayer):
        def hook(module, args):
            if order is not None and l.path not in seen:
                seen.add(l.path)
                order.append(l.path)
            if not args:
                raise ValueError(f"{l.path} ({l.layer}): called without a positional input")
            acc[l.path].add(args[0], f"{l.path} ({l.layer})", l.kind == "instance")
            if stop is not None and l.path == stop.path:
                raise _Stop()
        return hook

    for l in layers:
        handles.append(l.module.register_forward_pre_hook(make_hook(l)))
    device = _device(model)
    try:
        with torch.no_grad():
            for args in batches:
                try:
                    model(*(a.to(device) for a in args))
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return acc


# ---- the gap --------------------------------------------------------------------------------

@dataclass
class GapRow:
    """One layer: calibration-set statistics of its input vs its running buffers (float64
    numpy arrays per channel) and the normalised gaps."""
    path: str
    layer: str
    kind: str
    channels: int
    count: int                    # values per channel seen (instances for kind "instance")
    calls: int                    # forward calls of the layer over the calibration set
    batch_mean: np.ndarray | None
    batch_var: np.ndarray | None
    running_mean: np.ndarray
    running_var: np.ndarray
    mean_gap_max: float = float("nan")    # max_c |mu_b - mu_r| / sqrt(var_r + eps)
    mean_gap_mean: float = float("nan")
    var_log_ratio_max: float = float("nan")  # max_c |log((var_b + eps) / (var_r + eps))|
    var_log_ratio_mean: float = float("nan")  # mean_c of the signed log ratio
    output_effect: float = float("nan")   # max_c RMS of (normalised eval output - with batch stats)
    batch_noise: float = float("nan")     # max_c std over batches of mu_b / sqrt(var_r + eps)
    worst_channel: int = -1
    flagged: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        f = lambda a: None if a is None else [float(v) for v in a]
        g = lambda v: None if v is None or not math.isfinite(v) else float(v)
        return {"path": self.path, "layer": self.layer, "kind": self.kind, "channels": self.channels,
                "count": self.count, "calls": self.calls, "batch_mean": f(self.batch_mean),
                "batch_var": f(self.batch_var), "running_mean": f(self.running_mean),
                "running_var": f(self.running_var), "mean_gap_max": g(self.mean_gap_max),
                "mean_gap_mean": g(self.mean_gap_mean), "var_log_ratio_max": g(self.var_log_ratio_max),
                "var_log_ratio_mean": g(self.var_log_ratio_mean), "output_effect": g(self.output_effect),
                "batch_noise": g(self.batch_noise), "worst_channel": self.worst_channel,
                "flagged": self.flagged, "reason": self.reason}


def _num(v: float, fmt: str = ".3g") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


@dataclass
class GapReport:
    """Per BN-family layer in forward order. Truthy (``ok``) when no layer is flagged."""
    rows: list[GapRow]
    mean_threshold: float = DEFAULT_MEAN_THRESHOLD
    var_threshold: float = DEFAULT_VAR_THRESHOLD
    batches: int = 0

    @property
    def ok(self) -> bool:
        return not any(r.flagged for r in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def flagged(self) -> list[GapRow]:
        return [r for r in self.rows if r.flagged]

    def row(self, path: str) -> GapRow:
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(path)

    def format(self) -> str:
        from .parity import format_table
        rows = [[r.path or "<root>", r.layer, str(r.count), _num(r.mean_gap_max), _num(r.mean_gap_mean),
                 _num(r.var_log_ratio_max), _num(r.output_effect), _num(r.batch_noise),
                 ("FLAG: " + r.reason) if r.flagged else "ok"] for r in self.rows]
        head = (f"train/infer gap over {self.batches} calibration batches (eval-mode inputs; flag: mean "
                f"gap > {self.mean_threshold:g} running sigma or |log var ratio| > {self.var_threshold:.3g})")
        table = format_table(["layer", "type", "values/ch", "mean gap max", "mean gap avg",
                              "|log var ratio| max", "output effect", "batch noise", "result"], rows)
        n = len(self.flagged)
        return f"{head}\n{table}\n{'ok' if not n else f'{n} layer(s) flagged'}"

    def to_dict(self) -> dict:
        return {"ok": self.ok, "batches": self.batches, "mean_threshold": self.mean_threshold,
                "var_threshold": self.var_threshold, "rows": [r.to_dict() for r in self.rows]}

    def __str__(self) -> str:
        return self.format()


def _gap_row(l: BNLayer, mom: _Moments | None, mean_threshold: float, var_threshold: float) -> GapRow:
    m = l.module
    rm = m.running_mean.detach().to(torch.float64).cpu()
    rv = m.running_var.detach().to(torch.float64).cpu()
    row = GapRow(l.path, l.layer, l.kind, int(rm.numel()), 0, 0, None, None, rm.numpy(), rv.numpy())
    if mom is None or mom.mean is None or (l.kind == "instance" and not mom.inst):
        row.calls = mom.calls if mom else 0
        row.flagged = True
        row.reason = "not called by the calibration data" if not row.calls else "no values seen"
        return row
    mean_b, var_b = (t.cpu() for t in mom.estimate(l.kind))
    row.count = mom.inst if l.kind == "instance" else mom.n
    row.calls = mom.calls
    row.batch_mean, row.batch_var = mean_b.numpy(), var_b.numpy()
    eps = l.eps
    s_r = (rv + eps).sqrt()
    s_b = (var_b + eps).sqrt()
    gap = (mean_b - rm).abs() / s_r
    logr = torch.log((var_b + eps) / (rv + eps))
    # RMS over the data of z_eval - z_batch, z = (x - mu) / sqrt(var + eps): the difference is
    # x (1/s_r - 1/s_b) + mu_b/s_b - mu_r/s_r per channel, x of population mean / variance mu_p, v_p
    mu_p, v_p = mom.mean.cpu(), mom.population_var().cpu()
    a = 1 / s_r - 1 / s_b
    d_mean = mu_p * a + mean_b / s_b - rm / s_r
    effect = (d_mean.square() + v_p * a.square()).sqrt()
    row.mean_gap_max = float(gap.max())
    row.mean_gap_mean = float(gap.mean())
    row.var_log_ratio_max = float(logr.abs().max())
    row.var_log_ratio_mean = float(logr.mean())
    row.output_effect = float(effect.max())
    bs = mom.batch_std()
    if bs is not None:
        row.batch_noise = float((bs.cpu() / s_r).max())
    score = torch.maximum(gap / mean_threshold, logr.abs() / var_threshold)
    score = torch.nan_to_num(score, nan=float("inf"))
    row.worst_channel = int(score.argmax())
    reasons = []
    if not (row.mean_gap_max <= mean_threshold):
        c = int(gap.nan_to_num(float("inf")).argmax())
        reasons.append(f"mean off by {row.mean_gap_max:.3g} running sigma (channel {c}: batch "
                       f"{float(mean_b[c]):.4g} vs running {float(rm[c]):.4g})")
    if not (row.var_log_ratio_max <= var_threshold):
        c = int(logr.abs().nan_to_num(float("inf")).argmax())
        reasons.append(f"variance off by a factor {math.exp(float(logr[c])):.3g} (channel {c}: batch "
                       f"{float(var_b[c]):.4g} vs running {float(rv[c]):.4g})")
    row.flagged = bool(reasons)
    row.reason = "; ".join(reasons)
    return row


def _check_thresholds(mean_threshold: float, var_threshold: float) -> None:
    if not (mean_threshold > 0 and var_threshold > 0):
        raise ValueError(f"thresholds must be > 0, got mean {mean_threshold}, var {var_threshold}")


def _gap_pass(model, batches, layers, mean_threshold, var_threshold):
    order: list[str] = []
    acc = _collect(model, batches, layers, order=order)
    by_path = {l.path: l for l in layers}
    ordered = [by_path[p] for p in order] + [l for l in layers if l.path not in order]
    report = GapReport([_gap_row(l, acc[l.path], mean_threshold, var_threshold) for l in ordered],
                       mean_threshold, var_threshold, len(batches))
    return report, ordered, acc


class _EvalMode:
    """Every module in eval mode for the block, each module's own flag restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False


def _require_layers(model: nn.Module) -> list[BNLayer]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    layers = bn_family_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BN-family layer with running statistics "
                         f"(BatchNorm, SyncBatchNorm, BatchRenorm, CmBN, Cross-Iteration BN, the BN "
                         f"branch of Switchable Norm, conditional BN, SPADE in BN mode, InstanceNorm "
                         f"with track_running_stats): nothing to measure or recalibrate")
    return layers


def train_infer_gap(model: nn.Module, batches: Iterable, *, num_batches: int | None = None,
                    mean_threshold: float = DEFAULT_MEAN_THRESHOLD,
                    var_threshold: float = DEFAULT_VAR_THRESHOLD) -> GapReport:
    """Per BN-family layer, in forward order: the exact statistics of the layer's input over the
    calibration ``batches`` (an iterable of tensors or tuples of tensors, the model's positional
    inputs) with the model in eval mode (each layer's input is what the deployed model feeds it)
    against its running buffers, in the convention of the buffers (see the module docstring).

    Measures per layer: max / mean over channels of ``|mu_b - mu_r| / sqrt(var_r + eps)``; the
    log ratio ``log((var_b + eps) / (var_r + eps))``; the output effect, max over channels of the
    RMS over the calibration values of the difference between the normalised eval output
    ``(x - mu_r) / sqrt(var_r + eps)`` and the one with calibration statistics (before gamma,
    in units of the normalised output's spread, exact for BN); the batch noise (std over batches
    of the batch means, in running sigmas: gaps of that size are sampling noise). A layer is
    flagged when its mean gap exceeds ``mean_threshold`` or its |log ratio| ``var_threshold``,
    or when the data never reached it. The model's train/eval flags are restored."""
    _check_thresholds(mean_threshold, var_threshold)
    layers = _require_layers(model)
    data = load_batches(batches, num_batches)
    with _EvalMode(model):
        report, _, _ = _gap_pass(model, data, layers, mean_threshold, var_threshold)
    return report


# ---- recalibration --------------------------------------------------------------------------

@dataclass
class RecalibrationRow:
    path: str
    layer: str
    kind: str
    recalibrated: bool
    count: int
    before: GapRow
    after: GapRow
    max_mean_change: float = 0.0   # max_c |new - old running mean| / sqrt(old var + eps)

    def to_dict(self) -> dict:
        return {"path": self.path, "layer": self.layer, "kind": self.kind,
                "recalibrated": self.recalibrated, "count": self.count,
                "max_mean_change": self.max_mean_change, "before": self.before.to_dict(),
                "after": self.after.to_dict()}


@dataclass
class RecalibrationReport:
    """What :func:`recalibrate` did, per layer in forward order, with the gap before and after.
    Truthy (``ok``) when the gap after recalibration flags no layer."""
    rows: list[RecalibrationRow]
    before: GapReport
    after: GapReport
    batches: int = 0
    samples: int = 0
    passes: int = 0
    mode: str = "sequential eval"

    @property
    def ok(self) -> bool:
        return self.after.ok

    def __bool__(self) -> bool:
        return self.ok

    def format(self) -> str:
        from .parity import format_table
        rows = []
        for r in self.rows:
            b, a = r.before, r.after
            rows.append([r.path or "<root>", r.layer, "yes" if r.recalibrated else "no (not selected)",
                         str(r.count), f"{_num(b.mean_gap_max)} -> {_num(a.mean_gap_max)}",
                         f"{_num(b.var_log_ratio_max)} -> {_num(a.var_log_ratio_max)}",
                         f"{_num(b.output_effect)} -> {_num(a.output_effect)}",
                         ("FLAG: " + a.reason) if a.flagged else ("ok" if not b.flagged else "fixed")])
        head = (f"recalibration ({self.mode}, exact population statistics) over {self.batches} "
                f"batches / {self.samples} samples, {self.passes} passes")
        table = format_table(["layer", "type", "recalibrated", "values/ch", "mean gap before -> after",
                              "|log var ratio| before -> after", "output effect before -> after",
                              "result"], rows)
        fixed = sum(1 for r in self.rows if r.before.flagged and not r.after.flagged)
        tail = (f"flagged before: {len(self.before.flagged)}, after: {len(self.after.flagged)}"
                f" (fixed {fixed})")
        return f"{head}\n{table}\n{tail}"

    def to_dict(self) -> dict:
        return {"ok": self.ok, "mode": self.mode, "batches": self.batches, "samples": self.samples,
                "passes": self.passes, "rows": [r.to_dict() for r in self.rows],
                "before": self.before.to_dict(), "after": self.after.to_dict()}

    def __str__(self) -> str:
        return self.format()


def _select(model: nn.Module, layers: list[BNLayer], modules) -> list[BNLayer]:
    if modules is None:
        return layers
    if isinstance(modules, (str, nn.Module)):
        modules = [modules]
    by_path = {l.path: l for l in layers}
    by_id = {id(l.module): l for l in layers}
    chosen = []
    for m in modules:
        if isinstance(m, str):
            if m not in by_path:
                try:
                    sub = model.get_submodule(m)
                except AttributeError:
                    raise ValueError(f"recalibrate: the model has no module {m!r}") from None
                raise ValueError(f"recalibrate: {m!r} ({type(sub).__name__}) is not a BN-family layer "
                                 f"with running statistics; BN-family layers: "
                                 f"{', '.join(by_path) or 'none'}")
            chosen.append(by_path[m])
        elif isinstance(m, nn.Module):
            inner = getattr(m, "param_free_norm", None)     # SPADE: its parameter-free BN
            if id(m) not in by_id and inner is not None and id(inner) in by_id:
                m = inner
            if id(m) not in by_id:
                raise ValueError(f"recalibrate: {type(m).__name__} module is not a BN-family layer "
                                 f"of this model")
            chosen.append(by_id[id(m)])
        else:
            raise TypeError(f"recalibrate: modules takes module paths or modules, got {type(m).__name__}")
    return chosen


@torch.no_grad()
def _write(l: BNLayer, mom: _Moments) -> None:
    mean, var = mom.estimate(l.kind)
    m = l.module
    m.running_mean.copy_(mean.to(device=m.running_mean.device, dtype=m.running_mean.dtype))
    m.running_var.copy_(var.to(device=m.running_var.device, dtype=m.running_var.dtype))


def recalibrate(model: nn.Module, batches: Iterable, *, num_batches: int | None = None,
                modules=None, sequential: bool = True, mean_threshold: float = DEFAULT_MEAN_THRESHOLD,
                var_threshold: float = DEFAULT_VAR_THRESHOLD) -> RecalibrationReport:
    """Precise BN, in place: the running statistics of BN-family layers := the exact population
    statistics of their inputs over the calibration ``batches`` (an iterable of tensors or
    tuples of tensors, the model's positional inputs; the first ``num_batches`` are used and
    kept in memory, since the method makes several passes).

    Exactness: per batch, count / mean / M2 in float64, combined across batches with Chan's
    parallel formula, which equals the float64 statistics of the concatenated data; the
    variance is unbiased (``M2 / (n - 1)``) or biased as the layer's own running update makes
    it (module docstring table). Sequential eval mode: layer k is measured on inputs produced
    with layers 1..k-1 already recalibrated (module docstring: why not one training-mode pass).

    ``sequential=False``: one eval-mode pass only, every layer measured on inputs produced with
    the *old* upstream buffers: exact for the first layer and for layers whose upstream layers
    already had (nearly) exact statistics, cheaper by a factor ~L/2, and the report's "after"
    gap shows what it left (a stale layer upstream leaves its downstream layers off).

    ``modules``: module paths or modules (SPADE: its ``param_free_norm``) to recalibrate
    (default: every BN-family layer); the others are left alone and only reported. Writes ``running_mean`` / ``running_var`` only;
    train/eval flags restored. Returns a :class:`RecalibrationReport` with the gap before and
    after (``train_infer_gap`` on the same batches); raises ValueError for a model without
    BN-family layers or a selected layer the data never reaches (nothing is written then)."""
    _check_thresholds(mean_threshold, var_threshold)
    layers = _require_layers(model)
    chosen = {l.path for l in _select(model, layers, modules)}
    data = load_batches(batches, num_batches)
    with _EvalMode(model):
        before, ordered, acc = _gap_pass(model, data, layers, mean_threshold, var_threshold)
        missing = [f"{r.path} ({r.layer}): {r.reason}" for r in before.rows
                   if r.path in chosen and (r.calls == 0 or r.count == 0)]
        if missing:
            raise ValueError("recalibrate: the calibration data does not reach " + "; ".join(missing)
                             + " (nothing was changed)")
        old = {l.path: (l.module.running_mean.detach().to(torch.float64).cpu().clone(),
                        l.module.running_var.detach().to(torch.float64).cpu().clone()) for l in layers}
        todo = [l for l in ordered if l.path in chosen]
        passes = 1
        counts = {}
        for i, l in enumerate(todo):
            if i == 0 or not sequential:
                mom = acc[l.path]   # nothing recalibrated upstream yet: the first pass is exact
            else:
                single = acc[l.path].calls == len(data)   # one call per forward: stop after it
                mom = _collect(model, data, [l], stop=l if single else None)[l.path]
                passes += 1
            _write(l, mom)
            counts[l.path] = mom.inst if l.kind == "instance" else mom.n
        after, _, _ = _gap_pass(model, data, layers, mean_threshold, var_threshold)
        passes += 1
    after_rows = {r.path: r for r in after.rows}
    rows = []
    for b in before.rows:
        l_old_mean, l_old_var = old[b.path]
        eps = next(l.eps for l in layers if l.path == b.path)
        a = after_rows[b.path]
        change = float(((torch.from_numpy(a.running_mean) - l_old_mean).abs()
                        / (l_old_var + eps).sqrt()).max()) if b.path in chosen else 0.0
        rows.append(RecalibrationRow(b.path, b.layer, b.kind, b.path in chosen, counts.get(b.path, b.count),
                                     b, a, change))
    samples = sum(int(args[0].shape[0]) if args[0].dim() else 1 for args in data)
    return RecalibrationReport(rows, before, after, len(data), samples, passes,
                               "sequential eval" if sequential else "one-pass eval")
