"""``normexport.check``: does the deployed ONNX model compute what the training model computes,
on each execution provider, and if not, which layer broke?

Data flow::

    model (torch, eval) --forward hooks--> every module's output  (reference run)
    model.onnx --ORT (op library), per provider x dtype--> graph outputs (plain session)
        compare() per output (parity.py: rtol/atol, error statistics, quantiles)
    on failure (or when asked): localization
        ONNX node metadata (pkg.torch.onnx.name_scopes: the module path of every node)
        -> per module the values its nodes produce that leave it (consumed outside / graph
           outputs) -> a copy of the graph with those values as extra outputs -> ORT
        -> each mapped module's torch output vs its ONNX value, normwise error
           ||ort - torch|| / ||torch||; the first layer in graph order whose error exceeds the
           layer tolerance is the first divergence.

BN folding: export folds a BN into the preceding conv, so the ONNX conv's output is the BN
module's torch output. check folds a copy of the model the way export does
(``normexport.fold.fold_with_report``) and, for each BN folded "after" a layer whose own path
has ONNX nodes while the BN has none, maps the layer's ONNX value to the BN's torch output (the
layer's pre-BN torch output has no ONNX counterpart and is skipped). A file exported with
``fold=False`` keeps its BatchNormalization nodes in the BN's scope and maps directly.
Modules that cannot be mapped (no ONNX nodes, called more than once, non-tensor or ambiguous
outputs, shape mismatch) are listed as skipped, never reported as divergent. Values inside
function bodies (the custom nodes' fallbacks) are not reachable: a custom node is one layer.
"""

from __future__ import annotations

import ast
import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from .parity import Comparison, compare, format_table, rel_l2
from .spec import DEFAULT_TOLERANCES, Tolerance

#: normwise (||ort - torch|| / ||torch||) bound above which an intermediate tensor diverges.
#: Measured on the clean normexport.graphs networks (CPU, float32): the worst layer of any graph
#: is below 1e-6 (see tests/test_check.py), so 1e-4 leaves two orders of magnitude for deeper /
#: wider user models while a wrong eps or bias in one layer shows as 1e-3 .. 1e-1. float16: the
#: rounding of every tensor alone is ~3e-4 normwise, growing with depth.
LAYER_TOLERANCES: Mapping[str, float] = {"float32": 1e-4, "float16": 2e-2}

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}

_ONNX_TO_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
               onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


class CheckError(ValueError):
    """Bad arguments or inputs for check (missing file, input shape mismatch, provider not
    available, ...): the message names the problem."""


# ---- results ----------------------------------------------------------------------------------

@dataclass
class LayerResult:
    """One torch module's output against the ONNX value it maps to."""
    module: str                  # dotted module path (the deepest module owning the value)
    cls: str                     # its class name
    onnx_value: str              # the ONNX tensor compared
    onnx_node: str               # the node producing it
    op_type: str
    order: int                   # producing node's index in the graph (graph order)
    shape: tuple = ()
    rel_l2: float = 0.0          # ||ort - torch||_2 / ||torch||_2
    max_abs: float = 0.0
    max_scaled: float = 0.0      # max |ort - torch| / max |torch|
    tolerance: float = 0.0       # the normwise bound used
    aliases: list[str] = field(default_factory=list)   # enclosing modules with the same output
    note: str = ""               # e.g. "BN folded into stages.0.conv1"

    @property
    def diverged(self) -> bool:
        return not (self.rel_l2 <= self.tolerance)   # NaN counts as diverged

    def to_dict(self) -> dict:
        return {"module": self.module, "class": self.cls, "onnx_value": self.onnx_value,
                "onnx_node": self.onnx_node, "op_type": self.op_type, "order": self.order,
                "shape": list(self.shape), "rel_l2": _num(self.rel_l2), "max_abs": _num(self.max_abs),
                "max_scaled": _num(self.max_scaled), "tolerance": self.tolerance,
                "diverged": self.diverged, "aliases": self.aliases, "note": self.note}


@dataclass
class Localization:
    layers: list[LayerResult] = field(default_factory=list)   # graph order
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (module, why)
    first: LayerResult | None = None    # first layer beyond tolerance
    #: when no layer is beyond tolerance but an output fails: the layer whose error jumps most
    #: over the layers before it (a hint, not a verdict)
    suspect: LayerResult | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"first_divergence": self.first.to_dict() if self.first is not None else None,
                "suspect": self.suspect.to_dict() if self.suspect is not None else None,
                "layers": [r.to_dict() for r in self.layers],
                "skipped": [{"module": m, "reason": r} for m, r in self.skipped],
                "error": self.error}


@dataclass
class ProviderResult:
    provider: str
    dtype: str
    comparison: Comparison | None = None
    localization: Localization | None = None
    error: str | None = None     # the session could not be created / run
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.comparison is not None and bool(self.comparison)

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict:
        return {"provider": self.provider, "dtype": self.dtype, "passed": self.ok,
                "error": self.error, "seconds": round(self.seconds, 3),
                "outputs": [o.to_dict() for o in self.comparison.outputs] if self.comparison is not None else [],
                "localization": self.localization.to_dict() if self.localization is not None else None}


@dataclass
class CheckReport:
    onnx_path: str
    inputs: list[dict]                       # name, shape, dtype, source
    reference: str                           # "torch float32 eval" ...
    results: list[ProviderResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: extra sections (``calibration``: calibrate.GapReport, ``fp16_audit``:
    #: fp16audit.Fp16Report, ...): objects with ``.ok``, ``format()`` and ``to_dict()``
    sections: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results) and all(
            bool(getattr(s, "ok", True)) for s in self.sections.values())

    def __bool__(self) -> bool:
        return self.ok

    def first_divergence(self) -> LayerResult | None:
        """The first diverging layer of the first failing provider/dtype."""
        for r in self.results:
            if r.localization is not None and r.localization.first is not None and not r.ok:
                return r.localization.first
        return None

    def to_dict(self) -> dict:
        return {"onnx": self.onnx_path, "passed": self.ok, "reference": self.reference,
                "inputs": self.inputs, "seconds": round(self.seconds, 3), "notes": self.notes,
                "results": [r.to_dict() for r in self.results],
                "sections": {k: _section_dict(v) for k, v in self.sections.items()}}

    def format(self, layers: str = "auto") -> str:
        """Text report. ``layers``: "auto" (the per-layer table around the first divergence
        of failing runs), "all" (every mapped layer of every run), "none"."""
        lines = [f"check {self.onnx_path} against {self.reference}"]
        lines.append("inputs: " + ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))} {i['dtype']}"
                                            for i in self.inputs) + f" ({self.inputs[0]['source'] if self.inputs else ''})")
        rows = []
        for r in self.results:
            if r.error:
                rows.append([r.provider, r.dtype, "-", "", "", "", "", "", "", f"ERROR: {r.error}"])
                continue
            for o in r.comparison.outputs:
                q = o.quantiles
                rows.append([r.provider, r.dtype, o.name, f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}",
                             f"{o.max_rel:.3g}", f"{o.rel_l2:.3g}",
                             "/".join(f"{q.get(k, 0):.2g}" for k in ("p50", "p90", "p99")),
                             f"rtol={o.tolerance.rtol:g} atol={o.tolerance.atol:g}",
                             "PASS" if o else f"FAIL ({o.error or f'{o.n_bad}/{o.n_elements} elements off, worst at {o.worst_index}'})"])
        lines.append(format_table(["provider", "dtype", "output", "max abs", "mean abs", "max rel",
                                   "rel l2", "|err| p50/p90/p99", "tolerance", "result"], rows))
        for r in self.results:
            loc = r.localization
            if loc is None or layers == "none":
                continue
            if layers == "auto" and r.ok:
                continue
            lines.append("")
            head = f"{_short(r.provider)} {r.dtype}"
            if loc.error:
                lines.append(f"{head}: localization failed: {loc.error}")
                continue
            if loc.first is not None:
                f = loc.first
                lines.append(f"{head}: first divergence at layer {f.module} ({f.cls}{', ' + f.note if f.note else ''}): "
                             f"normwise error {f.rel_l2:.3g} > {f.tolerance:g} (max abs {f.max_abs:.3g}; "
                             f"ONNX {f.op_type} node {f.onnx_node}, value {f.onnx_value})")
            elif not r.ok:
                s = loc.suspect
                bound = loc.layers[0].tolerance if loc.layers else LAYER_TOLERANCES.get(r.dtype, 0)
                lines.append(f"{head}: no layer diverges beyond the normwise bound {bound:g}" + (
                    f"; suspect: {s.module} ({s.cls}), where the error jumps to {s.rel_l2:.3g}" if s else
                    "; no layer stands out (the error grows gradually: accumulated rounding, or "
                    "an output tolerance tighter than the computation allows)"))
            else:
                lines.append(f"{head}: every mapped layer within its normwise bound")
            shown = loc.layers
            if layers == "auto" and loc.first is not None:
                i = loc.layers.index(loc.first)
                shown = loc.layers[max(0, i - 3): i + 4]
            lines.append(format_table(
                ["#", "layer", "class", "onnx node", "shape", "rel l2", "max abs", "bound", ""],
                [[str(x.order), x.module, x.cls + (f" ({x.note})" if x.note else ""), x.onnx_node,
                  "x".join(map(str, x.shape)), f"{x.rel_l2:.3g}", f"{x.max_abs:.3g}", f"{x.tolerance:g}",
                  ("FIRST DIVERGENCE" if x is loc.first else "diverged") if x.diverged else ""]
                 for x in shown]))
            lines.append(f"({len(loc.layers)} layers mapped, {len(loc.skipped)} modules skipped"
                         + (": " + "; ".join(f"{m}: {w}" for m, w in loc.skipped[:4])
                            + (" ..." if len(loc.skipped) > 4 else "") if loc.skipped and layers == "all" else "")
                         + ")")
        for name, sec in self.sections.items():
            lines.append("")
            lines.append(f"[{name}] {'PASS' if getattr(sec, 'ok', True) else 'FAIL'}")
            lines.append(sec.format() if hasattr(sec, "format") else str(sec))
        lines += [f"note: {n}" for n in self.notes]
        lines.append("")
        lines.append(f"check: {'PASS' if self.ok else 'FAIL'} ({self.seconds:.1f}s)")
        return "\n".join(lines)

    __str__ = format

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG of the normwise error per layer in graph order, one line per provider x dtype,
        the bound dashed, the first divergence marked."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        runs = [r for r in self.results if r.localization is not None and r.localization.layers]
        n = max((len(r.localization.layers) for r in runs), default=0)
        fig, ax = plt.subplots(figsize=(min(4 + 0.25 * n, 30), 5.5))
        for r in runs:
            ys = [max(x.rel_l2, 1e-12) if np.isfinite(x.rel_l2) else 1e3 for x in r.localization.layers]
            (line,) = ax.plot(range(len(ys)), ys, marker="o", ms=3, label=f"{_short(r.provider)} {r.dtype}")
            ax.axhline(r.localization.layers[0].tolerance, ls="--", color=line.get_color(), lw=0.8)
            f = r.localization.first
            if f is not None:
                i = r.localization.layers.index(f)
                ax.plot([i], [ys[i]], marker="X", ms=12, color="red", ls="none")
                ax.annotate(f"first divergence: {f.module}", (i, ys[i]), textcoords="offset points",
                            xytext=(8, 8), color="red", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("||ort - torch|| / ||torch||")
        ax.set_xlabel("layer (graph order)")
        if runs:
            names = [x.module for x in max(runs, key=lambda r: len(r.localization.layers)).localization.layers]
            step = max(1, len(names) // 60)
            ax.set_xticks(range(0, len(names), step))
            ax.set_xticklabels(names[::step], rotation=90, fontsize=6)
        else:
            ax.text(0.5, 0.5, "no layer mapped", ha="center", transform=ax.transAxes)
        ax.set_title(f"normexport check {Path(self.onnx_path).name}: {'PASS' if self.ok else 'FAIL'}")
        ax.grid(True, which="both", alpha=0.3)
        if runs:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        return path


def _num(v: float):
    return float(v) if np.isfinite(v) else None


def _short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def _section_dict(sec) -> Any:
    if hasattr(sec, "to_dict"):
        return sec.to_dict()
    return {"ok": bool(getattr(sec, "ok", True)), "text": str(sec)}


# ---- providers, inputs -----------------------------------------------------------------------

def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """``["cpu", "cuda"]`` / full EP names -> EP names; CheckError naming an unavailable one."""
    import onnxruntime as ort
    avail = ort.get_available_providers()
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    out = []
    for p in providers:
        p = p.strip()
        name = PROVIDER_ALIASES.get(p.lower(), p)
        if name not in avail:
            raise CheckError(f"execution provider {p!r} ({name}) is not available in this ONNX Runtime "
                             f"({ort.__version__}); available: {', '.join(avail)}"
                             + ("; for CUDA install onnxruntime-gpu in place of onnxruntime"
                                if name == "CUDAExecutionProvider" else ""))
        if name not in out:
            out.append(name)
    if not out:
        raise CheckError("no execution provider given")
    return out


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def load_npz(path: str | os.PathLike, names: Sequence[str]) -> list[np.ndarray]:
    """Arrays of an .npz for the graph inputs ``names``: by name, else positional (arr_0, ...
    or the file's order when it holds exactly as many arrays)."""
    path = Path(path)
    if not path.is_file():
        raise CheckError(f"input file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:   # noqa: BLE001 - numpy raises several types
        raise CheckError(f"input file {path} is not a readable .npz ({type(e).__name__}: {e})") from None
    keys = list(data.files)
    if all(n in keys for n in names):
        return [data[n] for n in names]
    if len(keys) == len(names):
        order = sorted(keys, key=lambda k: int(k[4:])) if all(k.startswith("arr_") and k[4:].isdigit()
                                                              for k in keys) else keys
        return [data[k] for k in order]
    missing = [n for n in names if n not in keys]
    raise CheckError(f"input file {path} holds {keys}; the model's inputs are {list(names)} "
                     f"(missing {missing}); name the arrays after the inputs or give exactly one per input")


def _validate_inputs(arrays: list[np.ndarray], vis: list[onnx.ValueInfoProto]) -> None:
    if len(arrays) != len(vis):
        raise CheckError(f"{len(arrays)} inputs given; the model takes {len(vis)} "
                         f"({', '.join(v.name for v in vis)})")
    for a, vi in zip(arrays, vis):
        want = _dims(vi)
        elem = vi.type.tensor_type.elem_type
        if len(want) != a.ndim:
            raise CheckError(f"input {vi.name!r}: rank {a.ndim} (shape {tuple(a.shape)}) but the model "
                             f"expects rank {len(want)} ({_fmt_dims(want)})")
        for i, (d, w) in enumerate(zip(a.shape, want)):
            if isinstance(w, int) and w != d:
                raise CheckError(f"input {vi.name!r}: shape {tuple(a.shape)} but the model expects "
                                 f"({_fmt_dims(want)}): dim {i} is {d}, not {w}")
        np_t = _ONNX_TO_NP.get(elem)
        if np_t is not None and np.issubdtype(np_t, np.floating) != np.issubdtype(a.dtype, np.floating):
            raise CheckError(f"input {vi.name!r}: dtype {a.dtype} but the model expects "
                             f"{np.dtype(np_t).name}")


def _fmt_dims(dims) -> str:
    return ", ".join(str(d) if d is not None else "?" for d in dims)


# ---- fp16 conversion -------------------------------------------------------------------------

def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``proto``'s main graph: float32 graph inputs / outputs, initializers,
    Constant / ConstantOfShape values and Cast(to=float) become float16; value_info is dropped
    (re-inferred). Function bodies are left as they are (normexport's bodies are type-generic)."""
    from onnx import numpy_helper
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    m = copy.deepcopy(proto)
    g = m.graph
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == F:
            vi.type.tensor_type.elem_type = H
    for i, t in enumerate(g.initializer):
        if t.data_type == F:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == F:
                a.i = H
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        if node.op_type == "Constant":
            for a in list(node.attribute):
                if a.name == "value_float":
                    node.attribute.remove(a)
                    node.attribute.append(onnx.helper.make_attribute(
                        "value", numpy_helper.from_array(np.array(a.f, dtype=np.float16))))
                elif a.name == "value_floats":
                    node.attribute.remove(a)
                    node.attribute.append(onnx.helper.make_attribute(
                        "value", numpy_helper.from_array(np.array(a.floats, dtype=np.float16))))
    # inputs the ONNX spec types as float32 whatever the data type: cast back
    nodes, casts = [], {}
    for node in g.node:
        for idx in _FLOAT32_ONLY.get(node.op_type, ()):
            if idx < len(node.input) and node.input[idx]:
                v = node.input[idx]
                if v not in casts:   # one Cast per value, before its first use
                    casts[v] = f"{v}__normexport_f32"
                    nodes.append(onnx.helper.make_node("Cast", [v], [casts[v]], to=F,
                                                       name=f"{node.name}/cast_input{idx}_f32"))
                node.input[idx] = casts[v]
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return m


#: op type -> input indices typed tensor(float) by the ONNX spec (kept float32 by to_float16)
_FLOAT32_ONLY = {"Resize": (2,), "Upsample": (1,)}


# ---- module <-> ONNX mapping ------------------------------------------------------------------

def _node_scopes(node: onnx.NodeProto) -> list[str] | None:
    """The module paths enclosing ``node`` (outermost first, root "" included), from the
    exporter's ``pkg.torch.onnx.name_scopes``; for a ``normexport`` node without metadata, from
    its name ``<layer path>/<Op>``."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            path = ast.literal_eval(scopes)
            if isinstance(path, list) and path:
                return [str(p) for p in path[:-1]]   # the last entry is the fx node's name
        except (ValueError, SyntaxError):
            pass
    if node.domain == "normexport" and "/" in node.name:
        layer = node.name.rsplit("/", 1)[0]
        parts = layer.split(".")
        return [""] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return None


@dataclass
class _Candidate:
    module: str
    values: list[tuple[int, str, str, str]]   # (order, value, node name, op type) leaving the module
    note: str = ""


def _module_candidates(proto: onnx.ModelProto) -> tuple[dict[str, _Candidate], int]:
    """module path -> the values its nodes produce that leave it, in graph order."""
    g = proto.graph
    graph_outputs = {o.name for o in g.output}
    owner_sets: list[set[str]] = []
    n_unscoped = 0
    for node in g.node:
        sc = _node_scopes(node)
        if sc is None:
            n_unscoped += 1
        owner_sets.append(set(sc or ()))
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(g.node):
        for v in node.input:
            if v:
                consumers.setdefault(v, []).append(i)
    cands: dict[str, _Candidate] = {}
    for i, node in enumerate(g.node):
        for mod in owner_sets[i]:
            if mod == "":
                continue
            for v in node.output:
                if not v:
                    continue
                leaves = v in graph_outputs or any(mod not in owner_sets[j] for j in consumers.get(v, ()))
                if leaves:
                    cands.setdefault(mod, _Candidate(mod, [])).values.append((i, v, node.name, node.op_type))
    return cands, n_unscoped


def _fold_map(model, args) -> tuple[dict[str, str], list[str]]:
    """{layer path: BN path} for BNs that export folds after a layer (as export does: a copy)."""
    notes = []
    try:
        from .fold import fold_with_report
        _, rep = fold_with_report(model, *args)
    except Exception as e:   # noqa: BLE001 - a model fold cannot trace still checks
        return {}, [f"could not fold a copy to map folded BN layers ({type(e).__name__}: {e}); "
                    f"folded convs are compared as convs"]
    return {f.into: f.bn for f in rep.folded if f.position == "after"}, notes


class _Hooks:
    """Forward hooks on every submodule: output and call count by path."""

    def __init__(self, model):
        self.outputs: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.classes: dict[str, str] = {}
        self.handles = []
        for name, m in model.named_modules():
            if name == "":
                continue
            self.classes[name] = type(m).__name__
            self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, inputs, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.outputs[name] = _detach(output)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _detach(out):
    import torch
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().clone()
    if isinstance(out, (tuple, list)):
        return [_detach(o) for o in out]
    return None


def _torch_run(model, args, hooks: bool):
    import torch
    h = _Hooks(model) if hooks else None
    try:
        with torch.no_grad():
            out = model(*args)
    finally:
        if h is not None:
            h.remove()
    flat = _flatten(out)
    return [t.detach().cpu().numpy() for t in flat], h


def _flatten(out) -> list:
    import torch
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return []


def _plan_layers(proto, hooks: _Hooks, fold_map: dict[str, str]):
    """(plan: list of (module, candidate values, note), skipped) before any ORT run."""
    cands, n_unscoped = _module_candidates(proto)
    skipped = []
    plan = []
    bn_of = dict(fold_map)                 # layer -> BN folded after it
    for mod in hooks.classes:
        calls = hooks.calls.get(mod, 0)
        if calls == 0:
            continue                       # not called in this forward
        target, note = mod, ""
        if mod in bn_of.values() and mod not in cands:
            layer = next(k for k, v in bn_of.items() if v == mod)
            if layer in cands:
                target, note = layer, f"folded into {layer}"
            else:
                skipped.append((mod, "folded BN whose layer has no ONNX nodes"))
                continue
        elif mod in bn_of and bn_of[mod] not in cands:
            skipped.append((mod, f"output before the folded BN {bn_of[mod]}: no ONNX counterpart"))
            continue
        if calls > 1:
            skipped.append((mod, f"called {calls} times (shared module)"))
            continue
        if target not in cands:
            skipped.append((mod, "no ONNX nodes (folded, identity or optimized away)"))
            continue
        out = hooks.outputs.get(mod)
        if out is None or (isinstance(out, list) and not out):
            skipped.append((mod, "output is not a tensor"))
            continue
        plan.append((mod, cands[target].values, note))
    notes = [f"{n_unscoped} ONNX nodes carry no module scope (a file not written by the torch.export-"
             f"based exporter?); their layers cannot be localized"] if n_unscoped else []
    return plan, skipped, notes


def _with_outputs(proto: onnx.ModelProto, values: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` with ``values`` added as graph outputs (types from shape inference;
    untyped where inference does not know them)."""
    m = copy.deepcopy(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
                 + list(inferred.graph.input)}
    except Exception:   # noqa: BLE001
        known = {}
    have = {o.name for o in m.graph.output}
    for v in values:
        if v in have:
            continue
        vi = known.get(v)
        if vi is not None and vi.type.tensor_type.elem_type:
            out = onnx.helper.make_tensor_value_info(v, vi.type.tensor_type.elem_type, None)
        else:
            out = onnx.helper.make_empty_tensor_value_info(v)
        m.graph.output.append(out)
        have.add(v)
    return m


def _layer_error(actual, expected) -> tuple[float, float, float]:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    fin = np.isfinite(e)
    if not np.array_equal(np.isnan(a), np.isnan(e)):
        return float("nan"), float("nan"), float("nan")
    a, e = a[fin], e[fin]
    if e.size == 0:
        return 0.0, 0.0, 0.0
    d = np.abs(a - e)
    max_abs = float(d.max()) if np.isfinite(d).all() else float("inf")
    scale = float(np.abs(e).max())
    return rel_l2(a, e) if np.isfinite(d).all() else float("inf"), max_abs, (max_abs / scale if scale else
                                                                           (0.0 if max_abs == 0 else float("inf")))


def _add_layer(by_value, mod, cls, match, ref, ys, note, layer_rtol) -> None:
    order, value, node, op = match      # the last matching value in graph order
    depth = lambda m: m.count(".") + 1
    prev = by_value.get(value)
    if prev is not None:
        # the same ONNX value: keep the deepest module, the others are aliases (containers)
        if depth(mod) > depth(prev.module):
            prev.aliases.append(prev.module)
            prev.module, prev.cls = mod, cls
            prev.note = note or prev.note
        else:
            prev.aliases.append(mod)
        return
    r = LayerResult(mod, cls, value, node, op, order, tuple(ref.shape), tolerance=layer_rtol, note=note)
    r.rel_l2, r.max_abs, r.max_scaled = _layer_error(ys[value], ref)
    by_value[value] = r


def localize(proto: onnx.ModelProto, hooks: _Hooks, fold_map: dict[str, str], feeds: dict,
             provider: str, dtype: str, layer_rtol: float, session_factory: Callable,
             output_failed: bool = True) -> Localization:
    """Compare every mapped module's torch output with its ONNX value (see the module doc)."""
    loc = Localization()
    plan, loc.skipped, _ = _plan_layers(proto, hooks, fold_map)
    values = sorted({v for _, vals, _ in plan for _, v, _, _ in vals})
    if not plan:
        loc.error = "no torch module could be mapped to an ONNX value"
        return loc
    try:
        sess = session_factory(_with_outputs(proto, values), provider)
        names = [o.name for o in sess.get_outputs()]
        ys = dict(zip(names, sess.run(None, feeds)))
    except Exception as e:   # noqa: BLE001 - ORT raises its own types
        loc.error = f"running the graph with intermediate outputs failed: {type(e).__name__}: {e}"
        return loc
    by_value: dict[str, LayerResult] = {}
    for mod, vals, note in plan:
        out = hooks.outputs[mod]
        single = not isinstance(out, list)
        tensors = [out] if single else out
        for k, t in enumerate(tensors):
            label = mod if single else f"{mod}[{k}]"
            if not hasattr(t, "is_floating_point") or not t.is_floating_point():
                if single:
                    loc.skipped.append((label, "output is not a floating tensor"))
                continue
            ref = t.double().numpy()
            match = [(o, v, n, op) for o, v, n, op in vals if v in ys and tuple(np.shape(ys[v])) == ref.shape]
            if not match:
                loc.skipped.append((label, f"no ONNX value leaving its nodes has the torch output's "
                                           f"shape {tuple(ref.shape)}"))
                continue
            if not single:
                # one of several outputs: only a shape no other output of the module shares
                same = [u for u in tensors if hasattr(u, "shape") and tuple(u.shape) == tuple(ref.shape)]
                if len(same) > 1 or len({v for _, v, _, _ in match}) > 1:
                    loc.skipped.append((label, f"output {k} of {len(tensors)}: its shape does not "
                                               f"identify one ONNX value"))
                    continue
            _add_layer(by_value, label, hooks.classes[mod], max(match), ref, ys, note, layer_rtol)
    loc.layers = sorted(by_value.values(), key=lambda r: r.order)
    loc.first = next((r for r in loc.layers if r.diverged), None)
    if loc.first is None and output_failed and loc.layers:
        # the largest jump over the running maximum of the layers before (floor: 1% of the
        # bound), named only when it is >= 3x: otherwise the error grew gradually (rounding)
        best, run_max = None, layer_rtol / 100
        for r in loc.layers:
            ratio = r.rel_l2 / run_max if np.isfinite(r.rel_l2) else float("inf")
            if best is None or ratio > best[0]:
                best = (ratio, r)
            run_max = max(run_max, r.rel_l2)
        loc.suspect = best[1] if best and best[0] >= 3 else None
    return loc


# ---- check ---------------------------------------------------------------------------------------

def _as_tensors(args):
    import torch
    if isinstance(args, (torch.Tensor, np.ndarray)):
        args = (args,)
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = torch.from_numpy(np.ascontiguousarray(a))
        out.append(a)
    return tuple(out)


def check(model, args, onnx_path: str | os.PathLike | onnx.ModelProto, *,
          providers: Sequence[str] | str | None = None, dtypes: Sequence[str] | str = ("float32",),
          rtol: float | None = None, atol: float | None = None,
          tolerance: Mapping[str, Tolerance] | Tolerance | None = None,
          localize_layers: bool | str = "auto", layer_rtol: float | Mapping[str, float] | None = None,
          reference: str = "float32", use_library: bool = True,
          sections: Mapping[str, Any] | None = None, input_source: str | None = None) -> CheckReport:
    """Run ``model`` (torch, eval mode) and ``onnx_path`` (ONNX Runtime with the op library) on
    the same inputs, for each provider x dtype, and compare every output.

    args: the forward arguments (tensors or numpy arrays, one per graph input, in order), or
        the path of an .npz holding them (by graph input name, or one array per input).
    providers: EP names or "cpu" / "cuda" (default CPU); an unavailable one raises CheckError.
    dtypes: "float32" (the graph as it is) and/or "float16" (ORT on a float16 conversion of
        the graph, against the same torch reference, with float16 tolerances).
    rtol / atol: override either number of the NORMS.md default of each dtype; ``tolerance``: a
        Tolerance for every output (wins over rtol/atol), or {output name: Tolerance} for
        some (the others: rtol/atol or the default).
    localize_layers: "auto" (on failure), True (always: every layer's error, for the plot),
        False (never).
    layer_rtol: normwise bound of an intermediate layer (default LAYER_TOLERANCES per dtype).
    reference: "float32" (the model as it is) or "float64" (a float64 copy, inputs cast).
    sections: extra report sections (objects with ok / format() / to_dict()).
    input_source: how the inputs were made, for the report (e.g. "random, seed 0").
    Returns a CheckReport (truthy when every output of every run passes)."""
    import torch

    t0 = time.perf_counter()
    from .runtime import session
    if isinstance(onnx_path, onnx.ModelProto):
        proto, label = onnx_path, "<in-memory model>"
    else:
        p = Path(onnx_path)
        if not p.is_file():
            raise CheckError(f"ONNX file {p} does not exist")
        try:
            proto = onnx.load(p)
        except Exception as e:   # noqa: BLE001
            raise CheckError(f"{p} is not a readable ONNX model ({type(e).__name__}: {e})") from None
        label = str(p)
    if any(m.training for m in model.modules()):
        raise CheckError("the model is in training mode; call model.eval() (check compares the "
                         "inference forward that export exports)")
    dtypes = [dtypes] if isinstance(dtypes, str) else list(dtypes)
    for d in dtypes:
        if d not in DEFAULT_TOLERANCES:
            raise CheckError(f"dtype {d!r}: check runs {', '.join(DEFAULT_TOLERANCES)}")
    if reference not in ("float32", "float64"):
        raise CheckError(f"reference {reference!r}: float32 (the model as it is) or float64")
    eps = resolve_providers(providers)
    vis = _graph_inputs(proto)
    source = "given tensors"
    if isinstance(args, (str, os.PathLike)):
        source = f"from {args}"
        arrays = load_npz(args, [v.name for v in vis])
        args = _as_tensors(arrays)
    else:
        args = _as_tensors(args)
        arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in args]
    _validate_inputs(arrays, vis)
    source = input_source or source

    report = CheckReport(onnx_path=label, reference=f"torch {reference} eval", inputs=[
        {"name": v.name, "shape": list(a.shape), "dtype": str(a.dtype), "source": source}
        for v, a in zip(vis, arrays)])
    ref_model, ref_args = model, args
    if reference == "float64":
        ref_model = copy.deepcopy(model).double()
        ref_args = tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    # the torch run happens where the model lives (a CUDA model: inputs moved there)
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), None)
    if device is not None and device.type != "cpu":
        ref_args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in ref_args)
    want_layers = localize_layers is True or localize_layers == "auto"
    expected, hooks = _torch_run(ref_model, ref_args, hooks=want_layers)
    fold_map: dict[str, str] = {}
    if want_layers:
        fold_map, notes = _fold_map(model, args)
        report.notes += notes
        _, _, notes = _plan_layers(proto, hooks, fold_map)
        report.notes += notes
    out_names = [o.name for o in proto.graph.output]
    if len(expected) != len(out_names):
        raise CheckError(f"the model returns {len(expected)} tensors; the ONNX graph has "
                         f"{len(out_names)} outputs ({', '.join(out_names)})")

    def session_factory(m, provider):
        return session(m, [provider], use_library=use_library)

    for dtype in dtypes:
        default = DEFAULT_TOLERANCES[dtype]
        base = Tolerance(rtol=default.rtol if rtol is None else rtol, atol=default.atol if atol is None else atol)
        if isinstance(tolerance, Mapping):   # named outputs; the others: rtol/atol or the default
            tol = {n: tolerance.get(n, base) for n in out_names}
        else:
            tol = tolerance if tolerance is not None else base
        lrt = (layer_rtol.get(dtype, LAYER_TOLERANCES[dtype]) if isinstance(layer_rtol, Mapping)
               else layer_rtol if layer_rtol is not None else LAYER_TOLERANCES[dtype])
        graph = to_float16(proto) if dtype == "float16" else proto
        feeds = {}
        for v, a in zip(vis, arrays):
            if np.issubdtype(a.dtype, np.floating):
                want = _ONNX_TO_NP.get(graph.graph.input[[i.name for i in graph.graph.input].index(v.name)]
                                       .type.tensor_type.elem_type, np.float32)
                a = a.astype(want)
            feeds[v.name] = a
        for ep in eps:
            r = ProviderResult(provider=ep, dtype=dtype)
            t1 = time.perf_counter()
            try:
                sess = session_factory(graph, ep)
                ys = sess.run(None, feeds)
            except Exception as e:   # noqa: BLE001
                r.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                r.seconds = time.perf_counter() - t1
                report.results.append(r)
                continue
            r.comparison = compare(ys, expected, label=f"{_short(ep)} {dtype}", tolerance=tol,
                                   dtype=dtype, names=out_names)
            if localize_layers is True or (localize_layers == "auto" and not r.comparison):
                r.localization = localize(graph, hooks, fold_map, feeds, ep, dtype, lrt,
                                          session_factory, output_failed=not r.comparison)
            r.seconds = time.perf_counter() - t1
            report.results.append(r)
    for k, v in (sections or {}).items():
        report.sections[k] = v
    report.seconds = time.perf_counter() - t0
    return report
