"""float16 audit of the norm layers: which can run in float16, which must stay in float32 and why.

``fp16_audit(model, args)`` runs ``model(*args)`` once in its own precision (float32 or float64;
eval mode, flags restored) with forward hooks on every norm layer of the registry
(:func:`normexport.registry.spec_for`), and for each layer call measures, in float64:

- max |x| of the floating inputs and of the outputs, against float16's largest finite value
  65504 (a value beyond it is inf in float16);
- the statistic the layer computes at run time over its reduction (``_reduction`` below: BN
  family in eval: none, its statistics are constants; LN: the normalised trailing dims; GN:
  each group; IN / FRN / AdaIN / CIN / SPADE-IN: each plane; PONO: the channels at each
  position; Switchable Norm: IN and LN; LRN: the channel window; cosine norm: the receptive
  field): its largest variance (FRN: mean of squares) and its largest *sum of squares*, which
  a float16 kernel that accumulates in float16 would form (normexport's kernels and ORT's
  accumulate in float32, so that one is a note, not a verdict);
- BN-family layers (running statistics used in eval, also Switchable Norm's BN branch, SPADE's
  param-free BN, IN with running stats): the running variance, the folded scale
  ``s = |gamma| / sqrt(var + eps)`` and shift ``t = beta - mean s`` that export folds into the
  neighbouring conv (a verdict for the layers export folds; a note for SN / SPADE, whose custom
  op reads the running statistics), against 65504, and ``var + eps`` against float16's smallest normal
  6.1e-5 (below it sqrt(var + eps) is subnormal in float16: precision lost, noted);
  for every BN-family layer also the variance of the data actually reaching it;
- the layer run with float16 storage, float32 arithmetic (its input, parameters and buffers
  rounded to float16, the output rounded to float16: the "float16 with float32 accumulation"
  of NORMS.md) against the layer in float64 on the unrounded input: the error per output
  channel relative to that channel's largest |value| (floored at 1e-3 of the output's
  largest value, and at float16's ulp at 1, ~1e-3).

Verdict per layer: ``keep float32`` when any of: a non-finite or beyond-65504 input/output, a
run-time variance or a BN running / data variance beyond 65504, a folded scale or shift beyond
65504, a float16-storage error above NORMS.md's float16 rtol (1e-2) or a non-finite float16
output where float64 is finite; otherwise ``ok`` (with notes). A layer called several times is
judged on its worst call.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fp16_audit", "Fp16Report", "Fp16Row", "FP16_MAX", "FP16_TINY", "FP16_RTOL"]

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -14              # smallest normal float16, 6.1e-5
FP16_ULP1 = 2.0 ** -10              # float16 spacing at 1.0
FP16_RTOL = 1e-2                    # NORMS.md float16 tolerance


# ---- per-layer statistics ---------------------------------------------------------------------

def _bn_stats(m: nn.Module):
    """(running_mean, running_var, eps, gamma or None, beta or None) when ``m``'s eval form uses
    running statistics, else None."""
    src = m
    if hasattr(m, "param_free_norm") and isinstance(getattr(m.param_free_norm, "running_var", None), torch.Tensor):
        src = m.param_free_norm          # SPADE in BN mode: parameter-free BN, then modulation
    rm, rv = getattr(src, "running_mean", None), getattr(src, "running_var", None)
    if not isinstance(rm, torch.Tensor) or not isinstance(rv, torch.Tensor):
        return None
    if src is m and isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
        return None
    w = getattr(m, "weight", None) if src is m else None
    b = getattr(m, "bias", None) if src is m else None
    w = w if isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == rm.numel() else None
    b = b if isinstance(b, torch.Tensor) and b.dim() == 1 and b.numel() == rm.numel() else None
    return rm, rv, float(src.eps), w, b


#: registry entries whose export stores BN's folded per-channel scale / shift
_FOLDED = frozenset({"batchnorm", "syncbatchnorm", "batch_renorm", "cmbn", "cross_iteration_bn",
                     "conditional_bn", "conditional_bn_embedding", "instancenorm"})


def _grouped(x: torch.Tensor, reduce_dims) -> tuple[float, float]:
    """(largest biased variance, largest sum of squares) over groups reduced over ``reduce_dims``."""
    var = x.var(dim=reduce_dims, correction=0) if x.numel() else x.new_zeros(())
    sumsq = x.square().sum(dim=reduce_dims) if x.numel() else x.new_zeros(())
    return float(var.max()) if var.numel() else 0.0, float(sumsq.max()) if sumsq.numel() else 0.0


def _reduction(spec_name: str, m: nn.Module, args) -> list[tuple[str, float, float]]:
    """The statistics the layer computes at run time (eval mode): [(what, largest variance or
    mean square, largest sum of squares)] from its float64 inputs."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() else None
    if x is None or x.dim() < 1 or not x.numel():
        return []
    sp = tuple(range(2, x.dim()))
    out = []
    if spec_name in ("batchnorm", "syncbatchnorm", "batch_renorm", "cmbn", "cross_iteration_bn",
                     "conditional_bn", "conditional_bn_embedding", "weightnorm"):
        return out                        # running statistics / data-free
    if spec_name == "instancenorm" and _bn_stats(m) is not None:
        return out
    if spec_name == "spade" and getattr(m, "norm", "") == "batch":
        return out
    if spec_name == "layernorm":
        k = len(m.normalized_shape)
        v, s = _grouped(x, tuple(range(x.dim() - k, x.dim())))
        out.append(("variance over the normalised dims", v, s))
    elif spec_name == "groupnorm":
        g = x.reshape(x.shape[0], m.num_groups, -1)
        v, s = _grouped(g, (2,))
        out.append(("variance per group", v, s))
    elif spec_name == "frn":
        ms = x.square().mean(dim=sp) if sp else x.square()
        out.append(("mean of squares per plane", float(ms.max()), float(x.square().sum(dim=sp).max()) if sp
                    else float(ms.max())))
    elif spec_name in ("instancenorm", "conditional_in", "spade") and sp:
        v, s = _grouped(x, sp)
        out.append(("variance per plane", v, s))
    elif spec_name == "adain" and sp:
        v, s = _grouped(x, sp)
        out.append(("variance per content plane", v, s))
        y = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
        if y is not None and y.is_floating_point() and y.dim() > 2:
            v, s = _grouped(y, tuple(range(2, y.dim())))
            out.append(("variance per style plane", v, s))
    elif spec_name == "pono" and x.dim() > 1:
        v, s = _grouped(x, (1,))
        out.append(("variance over channels per position", v, s))
    elif spec_name == "switchable_norm":
        if sp:
            v, s = _grouped(x, sp)
            out.append(("IN variance per plane", v, s))
        v, s = _grouped(x, tuple(range(1, x.dim())))
        out.append(("LN variance per sample", v, s))
    elif spec_name == "lrn" and x.dim() >= 3:
        sq = x.square().reshape(x.shape[0], 1, x.shape[1], -1)
        n = m.size
        win = F.avg_pool2d(F.pad(sq, (0, 0, n // 2, (n - 1) // 2)), (n, 1), stride=1) * n
        out.append(("sum of squares over the channel window", float(win.max()) / n, float(win.max())))
    elif spec_name == "cosine_conv2d" and x.dim() == 4:
        ones = x.new_ones((1, x.shape[1]) + tuple(m.kernel_size))
        sq = F.conv2d(x.square(), ones, stride=m.stride, padding=m.padding, dilation=m.dilation)
        k = x.shape[1] * math.prod(m.kernel_size)
        out.append(("squared norm per receptive field", float(sq.max()) / k, float(sq.max())))
    elif spec_name == "cosine_linear":
        sq = x.square().sum(-1)
        out.append(("squared norm per sample", float(sq.max()) / x.shape[-1], float(sq.max())))
    else:                                 # unknown reduction: the whole sample (an upper bound)
        v, s = _grouped(x.reshape(x.shape[0], -1), (1,)) if x.dim() > 1 else _grouped(x, (0,))
        out.append(("variance per sample (upper bound)", v, s))
    return out


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _cast(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        return tuple(_cast(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_cast(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast(v, fn) for k, v in obj.items()}
    return obj


def _absmax(ts) -> float:
    vals = [float(t.detach().abs().max()) for t in ts if t.is_floating_point() and t.numel()]
    return max(vals) if vals else 0.0


def _round16(t: torch.Tensor) -> torch.Tensor:
    """float16 storage of a float32 tensor: overflow -> inf, as a cast does."""
    return t.to(torch.float32).to(torch.float16).to(torch.float32)


# ---- the report -----------------------------------------------------------------------------

@dataclass
class Fp16Row:
    path: str
    layer: str
    calls: int = 0
    input_absmax: float = 0.0
    output_absmax: float = 0.0
    stat: str = ""                        # what the run-time statistic is
    stat_max: float | None = None         # largest run-time variance / mean square
    sumsq_max: float | None = None        # largest sum of squares of that reduction
    running_var_max: float | None = None
    data_var_max: float | None = None     # BN family: per-channel variance of the data reaching it
    var_eps_min: float | None = None      # BN family: min over channels of running var + eps
    scale_max: float | None = None        # BN family: max |gamma| / sqrt(var + eps)
    shift_max: float | None = None        # BN family: max |beta - mean s|
    fp16_error: float | None = None       # float16-storage error (module docstring)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def keep_float32(self) -> bool:
        return bool(self.reasons)

    @property
    def verdict(self) -> str:
        return "keep float32" if self.reasons else "ok"

    def to_dict(self) -> dict:
        g = lambda v: None if v is None else (float(v) if math.isfinite(v) else str(v))
        return {"path": self.path, "layer": self.layer, "calls": self.calls,
                "input_absmax": g(self.input_absmax), "output_absmax": g(self.output_absmax),
                "stat": self.stat, "stat_max": g(self.stat_max), "sumsq_max": g(self.sumsq_max),
                "running_var_max": g(self.running_var_max), "data_var_max": g(self.data_var_max),
                "var_eps_min": g(self.var_eps_min), "scale_max": g(self.scale_max),
                "shift_max": g(self.shift_max), "fp16_error": g(self.fp16_error),
                "verdict": self.verdict, "reasons": list(self.reasons), "notes": list(self.notes)}


def _n(v) -> str:
    return "-" if v is None else format(v, ".3g")


@dataclass
class Fp16Report:
    """Per norm layer in forward order; truthy (``ok``) when every layer can run in float16."""
    rows: list[Fp16Row]

    @property
    def ok(self) -> bool:
        return not any(r.reasons for r in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def keep_float32(self) -> list[Fp16Row]:
        return [r for r in self.rows if r.reasons]

    def row(self, path: str) -> Fp16Row:
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(path)

    def format(self) -> str:
        from .parity import format_table
        rows = [[r.path or "<root>", r.layer, _n(r.input_absmax), _n(r.output_absmax),
                 _n(r.stat_max if r.stat_max is not None else r.data_var_max), _n(r.sumsq_max),
                 _n(r.running_var_max), _n(r.scale_max), _n(r.fp16_error),
                 r.verdict + (": " + "; ".join(r.reasons) if r.reasons else "")] for r in self.rows]
        table = format_table(["layer", "type", "max|in|", "max|out|", "max var", "max sum x^2",
                              "max running var", "max folded scale", "fp16 error", "verdict"], rows)
        notes = [f"note: {r.path}: {n}" for r in self.rows for n in r.notes]
        keep = self.keep_float32
        tail = ("every norm layer can run in float16" if not keep else
                f"keep in float32: {', '.join(r.path or '<root>' for r in keep)}")
        head = (f"float16 audit (largest float16 {FP16_MAX:g}, smallest normal {FP16_TINY:.3g}; fp16 error: "
                f"float16 storage / float32 arithmetic vs float64, limit {FP16_RTOL:g})")
        return "\n".join([head, table] + notes + [tail])

    def to_dict(self) -> dict:
        return {"ok": self.ok, "fp16_max": FP16_MAX, "fp16_tiny": FP16_TINY, "rtol": FP16_RTOL,
                "keep_float32": [r.path for r in self.keep_float32],
                "rows": [r.to_dict() for r in self.rows]}

    def __str__(self) -> str:
        return self.format()


# ---- the audit --------------------------------------------------------------------------------

def _fp16_error(y64, y16) -> tuple[float, bool]:
    """(largest per-channel relative error, float16 produced non-finite where float64 is finite)."""
    worst, nonfinite = 0.0, False
    for a, b in zip(_tensors(y64), _tensors(y16)):
        if not a.is_floating_point() or not a.numel():
            continue
        a = a.detach().to(torch.float64)
        b = b.detach().to(torch.float64)
        fin = torch.isfinite(a)
        if bool((fin & ~torch.isfinite(b)).any()):
            nonfinite = True
            continue
        a, b = torch.where(fin, a, 0.0), torch.where(fin, b, 0.0)
        if a.dim() >= 2:
            ch = a.transpose(0, 1).reshape(a.shape[1], -1)
            d = (b - a).abs().transpose(0, 1).reshape(a.shape[1], -1).max(1).values
        else:
            ch = a.reshape(1, -1)
            d = (b - a).abs().reshape(1, -1).max(1).values
        scale = ch.abs().max(1).values
        floor = max(1e-3 * float(a.abs().max()), FP16_ULP1)
        worst = max(worst, float((d / scale.clamp_min(floor)).max()))
    return worst, nonfinite


class _Auditor:
    def __init__(self, path: str, module: nn.Module, spec_name: str):
        self.row = Fp16Row(path, type(module).__name__)
        self.module = module
        self.spec_name = spec_name
        self.busy = False
        self._m64 = self._m16 = None

    def copies(self):
        if self._m64 is None:
            self._m64 = copy.deepcopy(self.module).to(torch.float64)
            m16 = copy.deepcopy(self.module)
            with torch.no_grad():
                for t in list(m16.parameters()) + list(m16.buffers()):
                    if t.is_floating_point():
                        t.copy_(_round16(t).to(t.dtype))
            self._m16 = m16.to(torch.float32)
            for m in (self._m64, self._m16):
                m.eval()
                for sub in m.modules():          # the copies carry no hooks of ours
                    sub._forward_hooks.clear()
                    sub._forward_pre_hooks.clear()
        return self._m64, self._m16

    def __call__(self, module, args, kwargs, output):
        if self.busy:
            return
        self.busy = True
        try:
            with torch.no_grad():
                self._audit(args, kwargs, output)
        finally:
            self.busy = False

    def _audit(self, args, kwargs, output):
        r = self.row
        r.calls += 1
        ins = _tensors(args) + _tensors(kwargs)
        outs = _tensors(output)
        in_max, out_max = _absmax(ins), _absmax(outs)
        r.input_absmax = max(r.input_absmax, in_max)
        r.output_absmax = max(r.output_absmax, out_max)
        if not all(bool(torch.isfinite(t).all()) for t in ins if t.is_floating_point()):
            _add(r.reasons, "non-finite input")
        elif in_max > FP16_MAX:
            _add(r.reasons, f"input beyond float16 range (max |x| {in_max:.4g} > {FP16_MAX:g})")
        if out_max > FP16_MAX:
            _add(r.reasons, f"output beyond float16 range (max |y| {out_max:.4g} > {FP16_MAX:g})")
        a64 = _cast(args, lambda t: t.detach().to(torch.float64))
        for what, v, s in _reduction(self.spec_name, self.module, a64):
            r.stat = what
            r.stat_max = v if r.stat_max is None else max(r.stat_max, v)
            r.sumsq_max = s if r.sumsq_max is None else max(r.sumsq_max, s)
            if v > FP16_MAX:
                _add(r.reasons, f"{what} {v:.4g} beyond float16 range")
            elif s > FP16_MAX:
                _add(r.notes, f"sum of squares ({what}) reaches {s:.4g} > {FP16_MAX:g}: a float16 "
                              f"kernel needs float32 accumulation (normexport's and ORT's have it)")
        bn = _bn_stats(self.module)
        if bn is not None:
            self._audit_bn(bn, a64, folded=self.spec_name in _FOLDED)
        m64, m16 = self.copies()
        try:
            y64 = m64(*a64, **_cast(kwargs, lambda t: t.detach().to(torch.float64)))
            y16 = _cast(m16(*_cast(args, lambda t: _round16(t)),
                            **_cast(kwargs, lambda t: _round16(t))), _round16)
        except Exception as e:   # a layer that refuses the rounded input (e.g. inf) says why
            _add(r.reasons, f"the layer fails with float16-rounded inputs ({type(e).__name__}: {e})")
            return
        err, nonfinite = _fp16_error(y64, y16)
        r.fp16_error = err if r.fp16_error is None else max(r.fp16_error, err)
        if nonfinite:
            _add(r.reasons, "float16 run gives inf/NaN where float64 is finite")
        if err > FP16_RTOL:
            _add(r.reasons, f"float16 run error {err:.3g} > {FP16_RTOL:g} (relative, per channel)")

    def _audit_bn(self, bn, a64, folded: bool):
        """``folded``: export turns the layer into the per-channel scale / shift (BN family,
        conditional BN's BN part, IN with running statistics), so they are stored tensors and
        an overflow is a verdict; otherwise (Switchable Norm's BN branch, SPADE's BN: inside a
        custom op that reads the running statistics) a note."""
        r = self.row
        verdict = r.reasons if folded else r.notes
        rm, rv, eps, w, b = (t.detach().to(torch.float64).cpu() if isinstance(t, torch.Tensor) else t
                             for t in bn)
        rv_max = float(rv.max()) if rv.numel() else 0.0
        r.running_var_max = rv_max
        if rv_max > FP16_MAX:
            c = int(rv.argmax())
            _add(r.reasons, f"running variance {rv_max:.4g} (channel {c}) beyond float16 range")
        x = a64[0] if a64 and isinstance(a64[0], torch.Tensor) else None
        if x is not None and x.dim() >= 2 and x.shape[1] == rv.numel() and x.numel():
            dv = x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, correction=0)
            r.data_var_max = max(r.data_var_max or 0.0, float(dv.max()))
            if float(dv.max()) > FP16_MAX:
                c = int(dv.argmax())
                _add(r.reasons, f"variance of the input {float(dv.max()):.4g} (channel {c}) beyond "
                                f"float16 range")
        ve = rv + eps
        r.var_eps_min = float(ve.min()) if ve.numel() else None
        s = (w.abs() if w is not None else torch.ones_like(rv)) / ve.sqrt()
        t = (b if b is not None else torch.zeros_like(rv)) - rm * s * (w.sign() if w is not None else 1)
        r.scale_max = float(s.max()) if s.numel() else None
        r.shift_max = float(t.abs().max()) if t.numel() else None
        if s.numel() and float(s.max()) > FP16_MAX:
            c = int(s.argmax())
            _add(verdict, f"folded scale gamma/sqrt(var+eps) {float(s[c]):.4g} (channel {c}: var "
                            f"{float(rv[c]):.3g}, gamma {float(w[c]) if w is not None else 1.0:.4g}) "
                            f"beyond float16 range")
        if t.numel() and float(t.abs().max()) > FP16_MAX:
            c = int(t.abs().argmax())
            _add(verdict, f"folded shift beta - mean*scale {float(t[c]):.4g} (channel {c}) beyond "
                            f"float16 range")
        if ve.numel() and float(ve.min()) < FP16_TINY:
            c = int(ve.argmin())
            _add(r.notes, f"near-zero variance (channel {c}: var + eps = {float(ve[c]):.3g} < {FP16_TINY:.3g}, "
                          f"subnormal in float16; folded scale {float(s[c]):.4g}): keep the folded "
                          f"weights, not var, in float16")


def _add(lst: list[str], msg: str) -> None:
    if msg not in lst:
        lst.append(msg)


def fp16_audit(model: nn.Module, args) -> Fp16Report:
    """float16 audit of every registry norm layer of ``model`` on one forward ``model(*args)``
    (``args``: a tensor or a tuple of tensors); see the module docstring for what is measured
    and when a layer must stay in float32. The model runs in eval mode; flags are restored."""
    from . import registry
    if not isinstance(model, nn.Module):
        raise TypeError(f"fp16_audit: expected a torch.nn.Module, got {type(model).__name__}")
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    auditors, order = [], []
    for path, m in model.named_modules():
        spec = registry.spec_for(m)
        if spec is not None:
            auditors.append(_Auditor(path, m, spec.name))
    if not auditors:
        raise ValueError(f"fp16_audit: {type(model).__name__} has no norm layer of the registry")
    handles = []

    def first_call(a):
        def hook(module, args, kwargs, output):
            if a not in order:
                order.append(a)
            a(module, args, kwargs, output)
        return hook

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for a in auditors:
            handles.append(a.module.register_forward_hook(first_call(a), with_kwargs=True))
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        for m, f in flags:
            m.training = f
    rows = [a.row for a in order] + [a.row for a in auditors if a not in order]
    for a in auditors:
        if a not in order:
            a.row.notes.append("not called by this input")
    return Fp16Report(rows)
