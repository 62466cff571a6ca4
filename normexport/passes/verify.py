"""Verification of a rewrite: the original and the rewritten graph run in ONNX Runtime on the
same inputs, output by output, within a normwise tolerance.

Inputs (:func:`make_feeds`): one array per graph input that is not an initializer, shaped from
the graph. A symbolic (or unknown) dim 0 is the batch and defaults to 2 (so is any dim whose
symbol also names some input's dim 0); any other symbolic dim needs ``input_shapes={"name":
(...)}`` and is otherwise an error naming the input and the dim. Float inputs are N(0, 1),
integer inputs small non-negative integers (0..2: safe as indices and sizes), bool inputs
random. Or the caller gives the feeds (``feeds=`` / ``--inputs feeds.npz``).

Runs (:func:`verify`): the original once (ORT with the op library and its graph optimizations
off, so that it runs as written: ORT would otherwise fuse Conv + BatchNormalization on its own;
if ORT cannot load or run it, ONNX's reference evaluator, and the comparison says so); the rewritten graph with the op
library and, when it holds ``normexport`` nodes, also without it (the nodes then run their ONNX
function bodies): both must agree with the original.

Criterion, per output: ``max |actual - expected| <= atol + rtol * max |expected|``: normwise,
not elementwise. Folding a BN into a conv rounds ``s W`` once instead of rounding ``W x`` then
``s (W x) + t``: the error of an output element is relative to the size of the terms of its
sum, not to the element itself, so an element near zero by cancellation can show a large
elementwise relative error while the graph is as exact as float32 allows. The bound is applied
with :func:`normexport.parity.compare_arrays` (the project's one comparator) as an elementwise
check with ``rtol' = 0, atol' = atol + rtol max|expected|``. Defaults by output element type:
float32 rtol 1e-4 / atol 1e-5, float16 (and bfloat16) rtol 1e-2 / atol 1e-3 (a float16 graph
rounds every intermediate to 11 bits), float64 rtol 1e-9 / atol 1e-12; integer and bool
outputs must be equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from ..parity import Comparison, compare_arrays
from ..spec import Tolerance
from .base import PassError

#: (rtol, atol) of the normwise criterion by output element type
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (1e-2, 1e-3),
    "float64": (1e-9, 1e-12),
}
DEFAULT_BATCH = 2


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (initializers listed as inputs excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _batch_symbols(inputs) -> set[str]:
    out = set()
    for i in inputs:
        dims = i.type.tensor_type.shape.dim if i.type.HasField("tensor_type") else []
        if dims and dims[0].dim_param:
            out.add(dims[0].dim_param)
    return out


def input_specs(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None = None
                ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, numpy dtype) of every fed input; raises PassError naming the input and dim
    that has no size."""
    input_shapes = dict(input_shapes or {})
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise PassError(f"input shape given for {', '.join(map(repr, unknown))}, which the graph does "
                        f"not take as input (its inputs: {', '.join(sorted(names)) or 'none'})")
    batch_syms = _batch_symbols(inputs)
    specs = {}
    for i in inputs:
        if not i.type.HasField("tensor_type"):
            raise PassError(f"graph input '{i.name}' is not a tensor ({i.type.WhichOneof('value')}): "
                            f"give the feeds with --inputs")
        tt = i.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise PassError(f"graph input '{i.name}' has element type "
                            f"{onnx.TensorProto.DataType.Name(tt.elem_type)}, for which no random "
                            f"input is drawn: give the feeds with --inputs") from None
        if dtype.kind in "OSU":
            raise PassError(f"graph input '{i.name}' is a string tensor: give the feeds with --inputs")
        if not tt.HasField("shape"):
            if i.name not in input_shapes:
                raise PassError(f"graph input '{i.name}' has no shape in the graph: give it with "
                                f"--input-shape {i.name}=DxDx...")
            specs[i.name] = (tuple(int(d) for d in input_shapes[i.name]), dtype)
            continue
        dims = list(tt.shape.dim)
        if i.name in input_shapes:
            given = tuple(int(d) for d in input_shapes[i.name])
            if len(given) != len(dims):
                raise PassError(f"input shape {given} for '{i.name}' has rank {len(given)}, the graph "
                                f"says rank {len(dims)}")
            for k, (g, d) in enumerate(zip(given, dims)):
                if d.HasField("dim_value") and d.dim_value != g:
                    raise PassError(f"input shape {given} for '{i.name}': dim {k} is fixed to "
                                    f"{d.dim_value} in the graph")
                if g < 0:
                    raise PassError(f"input shape {given} for '{i.name}': dims must be >= 0")
            specs[i.name] = (given, dtype)
            continue
        shape = []
        for k, d in enumerate(dims):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif k == 0 or (d.dim_param and d.dim_param in batch_syms):
                shape.append(DEFAULT_BATCH)
            else:
                sym = f"'{d.dim_param}'" if d.dim_param else "unknown"
                raise PassError(f"graph input '{i.name}' dim {k} is symbolic ({sym}): give the input's "
                                f"shape with every dim a number, e.g. --input-shape {i.name}="
                                + "x".join(str(int(x.dim_value)) if x.HasField("dim_value")
                                           else str(DEFAULT_BATCH) if j == 0 else f"<{x.dim_param or 'dim' + str(j)}>"
                                           for j, x in enumerate(dims)))
        specs[i.name] = (tuple(shape), dtype)
    return specs


def make_feeds(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None = None, *,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``model`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in input_specs(model, input_shapes).items():
        if dtype.kind == "f" or dtype.name == "bfloat16":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[name] = rng.integers(0, 3, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.random(shape) < 0.5
        elif dtype.kind == "c":
            feeds[name] = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        else:
            raise PassError(f"graph input '{name}' has dtype {dtype}, for which no random input is drawn")
    return feeds


def load_feeds(path: str | os.PathLike, model: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    """Feeds from an ``.npz`` file (one array per input name); checked against ``model``."""
    p = Path(path)
    if not p.is_file():
        raise PassError(f"inputs file {str(p)!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
    except Exception as e:
        raise PassError(f"inputs file {str(p)!r} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if model is not None:
        check_feeds(model, feeds, source=str(p))
    return feeds


def check_feeds(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], source: str = "feeds") -> None:
    names = [i.name for i in graph_inputs(model)]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise PassError(f"{source}: " + "; ".join(
            ([f"no array for input(s) {', '.join(map(repr, missing))}"] if missing else []) +
            ([f"arrays for {', '.join(map(repr, extra))}, which the graph does not take"] if extra else [])))
    for i in graph_inputs(model):
        if not i.type.HasField("tensor_type"):
            continue
        tt, a = i.type.tensor_type, np.asarray(feeds[i.name])
        try:
            want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            want = None
        if want is not None and a.dtype != want:
            raise PassError(f"{source}: input '{i.name}' is {a.dtype}, the graph takes {want}")
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if len(dims) != a.ndim:
                raise PassError(f"{source}: input '{i.name}' has shape {a.shape}, the graph takes rank {len(dims)}")
            for k, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value != a.shape[k]:
                    raise PassError(f"{source}: input '{i.name}' has shape {a.shape}: dim {k} must be "
                                    f"{d.dim_value}")


def tolerance_for(dtype: np.dtype, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    dtype = np.dtype(dtype)
    if dtype.kind not in "fc" and dtype.name != "bfloat16":
        return 0.0, 0.0
    r, a = DEFAULT_TOLERANCES.get(dtype.name, DEFAULT_TOLERANCES["float32"])
    return (r if rtol is None else float(rtol)), (a if atol is None else float(atol))


@dataclass
class OutputCheck:
    """One output of one run compared with the original (normwise)."""

    name: str
    max_abs: float
    max_expected: float
    bound: float            # atol + rtol * max|expected|
    rtol: float
    atol: float
    passed: bool
    error: str | None = None

    def to_dict(self) -> dict:
        fin = lambda v: float(v) if np.isfinite(v) else None   # strict JSON has no inf / NaN
        return {"name": self.name, "max_abs": fin(self.max_abs), "max_expected": fin(self.max_expected),
                "bound": fin(self.bound), "rtol": self.rtol, "atol": self.atol, "passed": self.passed,
                "error": self.error}


@dataclass
class Verification:
    """The rewritten graph (one path: ``"library"`` or ``"function"``) against the original."""

    label: str              # e.g. "after fold-bn-after"
    path: str               # "library" (op library registered) or "function" (no library)
    reference: str          # what ran the original: "onnxruntime" or "onnx.reference"
    outputs: list[OutputCheck] = field(default_factory=list)
    comparison: Comparison | None = None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def to_dict(self) -> dict:
        return {"label": self.label, "path": self.path, "reference": self.reference,
                "passed": self.passed, "outputs": [o.to_dict() for o in self.outputs]}


def has_custom_nodes(model: onnx.ModelProto) -> bool:
    from ..ops import DOMAIN
    return any(n.domain == DOMAIN for n in model.graph.node)


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, use_library: bool = True,
              optimize: bool = True) -> list[np.ndarray]:
    """Outputs of ``model`` in ONNX Runtime (CPU). ``optimize=False``: ORT's graph optimizations
    off (ORT would otherwise fuse Conv + BatchNormalization itself), so the graph runs as written."""
    import onnxruntime as ort

    from ..runtime import session
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = session(model, ["CPUExecutionProvider"], use_library=use_library, sess_options=so)
    return sess.run(None, dict(feeds))


def run_original(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Outputs of the original graph and what computed them: ORT, else ONNX's reference
    evaluator; PassError when neither can."""
    try:
        return run_model(model, feeds, optimize=False), "onnxruntime"
    except Exception as ort_err:
        try:
            from onnx.reference import ReferenceEvaluator
            return list(ReferenceEvaluator(model).run(None, dict(feeds))), "onnx.reference"
        except Exception as ref_err:
            raise PassError(f"cannot run the original graph to verify the rewrite: onnxruntime: "
                            f"{_first_line(ort_err)}; onnx.reference: {_first_line(ref_err)} (use "
                            f"--no-verify to rewrite without verification)") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def compare_outputs(actual: list, expected: list, names: list[str], *, rtol=None, atol=None
                    ) -> tuple[list[OutputCheck], Comparison]:
    checks, comps = [], []
    for name, a, e in zip(names, actual, expected):
        e = np.asarray(e)
        r, t = tolerance_for(e.dtype, rtol, atol)
        finite = np.isfinite(e.astype(np.float64)) if e.size else np.zeros(0, bool)
        max_e = float(np.abs(e.astype(np.float64)[finite]).max()) if finite.any() else 0.0
        bound = t + r * max_e
        c = compare_arrays(a, e, Tolerance(rtol=0.0, atol=bound), name)
        comps.append(c)
        checks.append(OutputCheck(name, float(c.max_abs), max_e, bound, r, t, bool(c), c.error))
    return checks, Comparison("", comps)


def verify(rewritten: onnx.ModelProto, expected: list[np.ndarray], feeds: Mapping[str, np.ndarray], *,
           label: str, reference: str = "onnxruntime", rtol=None, atol=None) -> list[Verification]:
    """Run ``rewritten`` (with the library; also without it when it holds normexport nodes) and
    compare with the original's outputs ``expected``. A run that fails is a failed check."""
    names = [o.name for o in rewritten.graph.output]
    paths = ["library"] + (["function"] if has_custom_nodes(rewritten) else [])
    out = []
    for path in paths:
        v = Verification(label, path, reference)
        try:
            try:
                got = run_model(rewritten, feeds, use_library=(path == "library"))
            except Exception:
                if reference != "onnx.reference":
                    raise
                # ORT could not run the original either (e.g. a float64 Conv): same engine for both
                from onnx.reference import ReferenceEvaluator
                got = list(ReferenceEvaluator(rewritten).run(None, dict(feeds)))
                v.path = f"{path} (onnx.reference)"
        except Exception as e:
            v.outputs.append(OutputCheck("<run>", float("inf"), 0.0, 0.0, 0.0, 0.0, False,
                                         f"the rewritten graph does not run in onnxruntime: {_first_line(e)}"))
            out.append(v)
            continue
        if len(got) != len(expected):
            v.outputs.append(OutputCheck("<outputs>", float("inf"), 0.0, 0.0, 0.0, 0.0, False,
                                         f"{len(got)} outputs, the original has {len(expected)}"))
        else:
            v.outputs, v.comparison = compare_outputs(got, expected, names, rtol=rtol, atol=atol)
            v.comparison.label = f"{label} [{path}]"
        out.append(v)
    return out
