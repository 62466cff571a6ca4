"""``normexport bench``: op-level and model-level timings on the CPU.

Op level, for each ``normexport`` custom op of the registry, at the small shapes (fit in cache:
a single tiny sample, where per-call overhead shows, and a batch of 8 ResNet-stage maps, where
the cache-resident kernel speed shows) and two large ones (working set, bytes read + written,
>= 4x the last-level cache): a batch of (64, 56, 56) maps, whose planes, groups and samples fit
in a core's L2 so a kernel can read its input from memory once, and one huge sample
(1, 64, H, H), whose planes, groups and sample do not: statistics over a unit bigger than the
cache need a second read of it, from memory (or from the last-level cache where it is big and
not shared), so that row measures the two-read regime. All in one run with one thread count:

  native    ORT with the op library (one ``normexport::<Op>`` node; n/a when the registry's
            kernel table lists no CPU kernel or the library is not built)
  function  ORT without the library: the node's ONNX function body (float64 inside)
  stock:*   the best stock-ORT formulation with standard ONNX ops (one row per formulation)
  torch     torch eager (the layer in eval mode where its forward is the node, else the node's
            math with torch ops), torch.set_num_threads(threads)
  copy      torch ``dst.copy_(src)`` of (read + written) / 2 bytes (so a copy moves the same
            bytes as the op), torch.set_num_threads(threads); ORT Identity may alias, so no

Times are the median of at least ``repeat`` runs, and of as many as fill ``MIN_SECONDS``, after
one warm-up; GB/s = (bytes read + written) /
time, where the bytes are those of the activation inputs and outputs (parameters of C
elements are negligible). Ratios: a / b of the two times.

Model level: each network of ``normexport.graphs.GRAPHS`` exported with custom ops, in ORT
CPU with the library, without it (function bodies), and torch eager (ms per batch).

Speed claims live in this output only; tests check its structure, never its numbers.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from . import registry

OPSET = 21          # GroupNormalization-21 for the stock rows; the function bodies take 18-21
QUICK_SHAPE = (1, 8, 6, 6)
SMALL_SHAPES = ((1, 32, 16, 16), (8, 64, 56, 56))   # both fit in the last-level cache
SMALL_SHAPE = SMALL_SHAPES[0]
LLC_MULTIPLE = 4
LARGE_CHANNELS = 64
LARGE_PLANE = (56, 56)
FALLBACK_LLC = 32 << 20


# ---- machine -------------------------------------------------------------------------------

def llc_bytes() -> tuple[int, str]:
    """(size of the last-level cache in bytes, where it was read)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    best = None
    for idx in sorted(base.glob("index*")):
        try:
            level = int((idx / "level").read_text())
            kind = (idx / "type").read_text().strip()
            size = _parse_size((idx / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if kind in ("Unified", "Data") and (best is None or level > best[0]):
            best = (level, size)
    if best:
        return best[1], f"L{best[0]} of {base}"
    return FALLBACK_LLC, f"unknown (assumed {FALLBACK_LLC >> 20} MiB)"


def _parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.upper().rstrip("B")
    return int(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else int(t)


# ---- per-op recipes -------------------------------------------------------------------------
# A recipe says how to feed one node of an op at a shape (N, C, H, W), how torch computes it
# and which stock formulations to race. Ops of the registry without a recipe are still listed
# (every measurement null, with a note): add one here when adding a custom op.

@dataclass
class Case:
    acts: dict[str, np.ndarray]         # activation inputs (graph inputs)
    params: dict[str, np.ndarray]       # per-channel inputs (initializers)
    inputs: list[str]                   # the node's inputs, in order
    attrs: dict
    outputs: list[str]
    torch_fn: Callable[[], object]      # torch eager, on torch copies of acts/params
    stock: dict[str, Callable[[], tuple[list, list]]] = field(default_factory=dict)  # label -> (nodes, inits)
    torch_what: str = "layer"


def _rng(seed: int = 0):
    return np.random.default_rng(seed)


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _c(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _chan(name, v):
    """A per-channel (C,) vector as a (1, C, 1, 1) initializer for stock graphs."""
    return _c(name, _f32(v).reshape(1, -1, 1, 1))


def _t(a):
    return torch.from_numpy(a)


def _frn(shape, rng) -> Case:
    from .nn.frn import FilterResponseNorm2d
    n, c, h, w = shape
    layer = FilterResponseNorm2d(c).eval()
    with torch.no_grad():
        layer.weight.copy_(_t(_f32(0.5 + rng.random(c))))
        layer.bias.copy_(_t(_f32(rng.standard_normal(c) * 0.3)))
        layer.tau.copy_(_t(_f32(rng.standard_normal(c) * 0.3)))
    x = _f32(rng.standard_normal(shape) * 2 + 0.5)
    p = {k: getattr(layer, k).detach().numpy().copy() for k in ("weight", "bias", "tau")}
    eps = float(layer.eps)
    xt = _t(x)

    def stock():
        nodes = [helper.make_node("Mul", ["X", "X"], ["sq"]),
                 helper.make_node("ReduceMean", ["sq", "axes"], ["nu2"], keepdims=1),
                 helper.make_node("Add", ["nu2", "eps"], ["nu2e"]),
                 helper.make_node("Sqrt", ["nu2e"], ["den"]),
                 helper.make_node("Div", ["X", "den"], ["xh"]),
                 helper.make_node("Mul", ["xh", "g"], ["xg"]),
                 helper.make_node("Add", ["xg", "b"], ["xb"]),
                 helper.make_node("Max", ["xb", "t"], ["Y"])]
        return nodes, [_c("axes", np.array([2, 3], np.int64)), _c("eps", np.float32(eps)),
                       _chan("g", p["weight"]), _chan("b", p["bias"]), _chan("t", p["tau"])]
    return Case({"X": x}, {"gamma": p["weight"], "beta": p["bias"], "tau": p["tau"]},
                ["X", "gamma", "beta", "tau"], {"eps": eps, "tlu": 1}, ["Y"],
                lambda: layer(xt), {"ReduceMean chain": stock})


def _groupnorm(shape, rng) -> Case:
    n, c, h, w = shape
    g = max(1, min(8, c // 2))
    while c % g:
        g -= 1
    layer = torch.nn.GroupNorm(g, c).eval()
    scale, bias = _f32(0.5 + rng.random(c)), _f32(rng.standard_normal(c) * 0.3)
    with torch.no_grad():
        layer.weight.copy_(_t(scale))
        layer.bias.copy_(_t(bias))
    x = _f32(rng.standard_normal(shape) * 2 + 0.5)
    eps = float(layer.eps)
    xt = _t(x)

    def legacy():   # torch's legacy (TorchScript) exporter's GroupNorm
        nodes = [helper.make_node("Reshape", ["X", "gshape"], ["xg"]),
                 helper.make_node("InstanceNormalization", ["xg", "ones", "zeros"], ["xn"], epsilon=eps),
                 helper.make_node("Shape", ["X"], ["xshape"]),
                 helper.make_node("Reshape", ["xn", "xshape"], ["xr"]),
                 helper.make_node("Mul", ["xr", "s"], ["xs"]),
                 helper.make_node("Add", ["xs", "b"], ["Y"])]
        return nodes, [_c("gshape", np.array([0, g, -1], np.int64)), _c("ones", np.ones(g, np.float32)),
                       _c("zeros", np.zeros(g, np.float32)), _chan("s", scale), _chan("b", bias)]

    def gn21():
        return ([helper.make_node("GroupNormalization", ["X", "s", "b"], ["Y"], num_groups=g, epsilon=eps)],
                [_c("s", scale), _c("b", bias)])
    return Case({"X": x}, {"scale": scale, "bias": bias}, ["X", "scale", "bias"],
                {"num_groups": g, "epsilon": eps, "activation": 0}, ["Y"], lambda: layer(xt),
                {"Reshape-IN-Reshape-Mul-Add": legacy, "GroupNormalization-21": gn21})


def _switchable(shape, rng) -> Case:
    from .nn.switchable import SwitchableNorm2d
    n, c, h, w = shape
    layer = SwitchableNorm2d(c).eval()
    with torch.no_grad():
        layer.weight.copy_(_t(_f32(0.5 + rng.random(c))))
        layer.bias.copy_(_t(_f32(rng.standard_normal(c) * 0.3)))
        layer.mean_weight.copy_(_t(_f32(rng.standard_normal(3))))
        layer.var_weight.copy_(_t(_f32(rng.standard_normal(3))))
        layer.running_mean.copy_(_t(_f32(rng.standard_normal(c) * 0.1 + 0.5)))
        layer.running_var.copy_(_t(_f32(4 + rng.random(c))))
    p = {k: getattr(layer, k).detach().numpy().copy()
         for k in ("weight", "bias", "running_mean", "running_var", "mean_weight", "var_weight")}
    x = _f32(rng.standard_normal(shape) * 2 + 0.5)
    eps = float(layer.eps)
    xt = _t(x)
    wm = np.exp(p["mean_weight"] - p["mean_weight"].max())
    wm /= wm.sum()
    wv = np.exp(p["var_weight"] - p["var_weight"].max())
    wv /= wv.sum()

    def stock():    # IN stats, LN stats from them, running BN stats, softmax weights folded
        mk = helper.make_node
        nodes = [mk("ReduceMean", ["X", "sp"], ["m_in"], keepdims=1),
                 mk("Sub", ["X", "m_in"], ["d"]), mk("Mul", ["d", "d"], ["d2"]),
                 mk("ReduceMean", ["d2", "sp"], ["v_in"], keepdims=1),
                 mk("ReduceMean", ["m_in", "ch"], ["m_ln"], keepdims=1),
                 mk("Mul", ["m_in", "m_in"], ["m_in2"]), mk("Add", ["v_in", "m_in2"], ["ex2"]),
                 mk("ReduceMean", ["ex2", "ch"], ["ex2_ln"], keepdims=1),
                 mk("Mul", ["m_ln", "m_ln"], ["m_ln2"]), mk("Sub", ["ex2_ln", "m_ln2"], ["v_ln"]),
                 mk("Mul", ["m_in", "wm0"], ["a0"]), mk("Mul", ["m_ln", "wm1"], ["a1"]),
                 mk("Add", ["a0", "a1"], ["a01"]), mk("Add", ["a01", "rm_w"], ["mu"]),
                 mk("Mul", ["v_in", "wv0"], ["b0"]), mk("Mul", ["v_ln", "wv1"], ["b1"]),
                 mk("Add", ["b0", "b1"], ["b01"]), mk("Add", ["b01", "rv_w"], ["var"]),
                 mk("Add", ["var", "eps"], ["ve"]), mk("Sqrt", ["ve"], ["sd"]),
                 mk("Div", ["s", "sd"], ["k"]),                       # scale / sd: (N, C, 1, 1)
                 mk("Mul", ["mu", "k"], ["muk"]), mk("Sub", ["b", "muk"], ["shift"]),
                 mk("Mul", ["X", "k"], ["xk"]), mk("Add", ["xk", "shift"], ["Y"])]
        inits = [_c("sp", np.array([2, 3], np.int64)), _c("ch", np.array([1], np.int64)),
                 _c("wm0", np.float32(wm[0])), _c("wm1", np.float32(wm[1])),
                 _c("wv0", np.float32(wv[0])), _c("wv1", np.float32(wv[1])),
                 _chan("rm_w", p["running_mean"] * wm[2]), _chan("rv_w", p["running_var"] * wv[2]),
                 _c("eps", np.float32(eps)), _chan("s", p["weight"]), _chan("b", p["bias"])]
        return nodes, inits
    return Case({"X": x}, {"scale": p["weight"], "bias": p["bias"], "running_mean": p["running_mean"],
                           "running_var": p["running_var"], "mean_weight": p["mean_weight"],
                           "var_weight": p["var_weight"]},
                ["X", "scale", "bias", "running_mean", "running_var", "mean_weight", "var_weight"],
                {"epsilon": eps, "using_bn": 1}, ["Y"], lambda: layer(xt), {"ReduceMean chain": stock})


def _pono(shape, rng) -> Case:
    from .nn.pono import PositionalNorm
    n, c, h, w = shape
    layer = PositionalNorm(c).eval()
    x = _f32(rng.standard_normal(shape) * 2 + 0.5)
    eps, unbiased = float(layer.eps), int(layer.unbiased)
    xt = _t(x)

    def stock():    # ReduceMean-based, no LayerNormalization
        mk = helper.make_node
        nodes = [mk("ReduceMean", ["X", "ch"], ["Mean"], keepdims=1), mk("Sub", ["X", "Mean"], ["d"]),
                 mk("Mul", ["d", "d"], ["d2"]), mk("ReduceSum", ["d2", "ch"], ["ss"], keepdims=1),
                 mk("Mul", ["ss", "inv"], ["var"]), mk("Add", ["var", "eps"], ["ve"]),
                 mk("Sqrt", ["ve"], ["Std"]), mk("Div", ["d", "Std"], ["Y"])]
        return nodes, [_c("ch", np.array([1], np.int64)), _c("eps", np.float32(eps)),
                       _c("inv", np.float32(1.0 / (c - unbiased)))]
    return Case({"X": x}, {}, ["X"], {"epsilon": eps, "unbiased": unbiased}, ["Y", "Mean", "Std"],
                lambda: layer(xt), {"ReduceMean chain": stock})


def _adain(shape, rng) -> Case:
    from .nn.adain import AdaIN
    n, c, h, w = shape
    layer = AdaIN(c, alpha=1.0).eval()
    x = _f32(rng.standard_normal(shape) * 2 + 0.5)
    s = _f32(rng.standard_normal(shape) * 1.5 - 0.7)
    eps = float(layer.eps)
    xt, st = _t(x), _t(s)

    def stock():    # InstanceNormalization of the content, style moments with ReduceMean
        mk = helper.make_node
        nodes = [mk("InstanceNormalization", ["content", "ones", "zeros"], ["xn"], epsilon=eps),
                 mk("ReduceMean", ["style", "sp"], ["sm"], keepdims=1), mk("Sub", ["style", "sm"], ["sd"]),
                 mk("Mul", ["sd", "sd"], ["sd2"]), mk("ReduceMean", ["sd2", "sp"], ["sv"], keepdims=1),
                 mk("Add", ["sv", "eps"], ["sve"]), mk("Sqrt", ["sve"], ["ss"]),
                 mk("Mul", ["xn", "ss"], ["xs"]), mk("Add", ["xs", "sm"], ["Y"])]
        return nodes, [_c("ones", np.ones(c, np.float32)), _c("zeros", np.zeros(c, np.float32)),
                       _c("sp", np.array([2, 3], np.int64)), _c("eps", np.float32(eps))]
    return Case({"content": x, "style": s}, {}, ["content", "style"], {"epsilon": eps, "alpha": 1.0},
                ["Y"], lambda: layer(xt, st), {"InstanceNormalization + ReduceMean": stock})


def _spade(shape, rng) -> Case:
    n, c, h, w = shape
    x = _f32(rng.standard_normal(shape) * 2 + 0.5)
    gm = _f32(rng.standard_normal(shape) * 0.3)
    bm = _f32(rng.standard_normal(shape) * 0.3)
    rm, rv = _f32(rng.standard_normal(c) * 0.1 + 0.5), _f32(4 + rng.random(c))
    eps = 1e-5
    xt, gt, bt, rmt, rvt = map(_t, (x, gm, bm, rm, rv))

    def torch_fn():  # the node's part of SPADE.forward (its convs feed the node)
        xh = torch.nn.functional.batch_norm(xt, rmt, rvt, training=False, eps=eps)
        return xh * (1 + gt) + bt

    def stock():    # BatchNormalization (eval) + Add/Mul/Add
        mk = helper.make_node
        nodes = [mk("BatchNormalization", ["X", "ones", "zeros", "rm", "rv"], ["xh"], epsilon=eps),
                 mk("Add", ["gamma_map", "one"], ["g1"]), mk("Mul", ["xh", "g1"], ["xg"]),
                 mk("Add", ["xg", "beta_map"], ["Y"])]
        return nodes, [_c("ones", np.ones(c, np.float32)), _c("zeros", np.zeros(c, np.float32)),
                       _c("rm", rm), _c("rv", rv), _c("one", np.float32(1.0))]
    return Case({"X": x, "gamma_map": gm, "beta_map": bm}, {"running_mean": rm, "running_var": rv},
                ["X", "gamma_map", "beta_map", "running_mean", "running_var"], {"epsilon": eps, "mode": 0},
                ["Y"], torch_fn, {"BatchNormalization + Add/Mul/Add": stock}, torch_what="node math")


#: op_type -> recipe(shape (N, C, H, W), numpy Generator) -> Case
RECIPES: dict[str, Callable[[tuple, np.random.Generator], Case]] = {
    "FilterResponseNorm": _frn,
    "GroupNorm": _groupnorm,
    "SwitchableNorm": _switchable,
    "PositionalNorm": _pono,
    "AdaIN": _adain,
    "SPADE": _spade,
}


# ---- models ---------------------------------------------------------------------------------

def _vinfo(name, arr):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape))


def _model(nodes, inits, case: Case, name: str) -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in case.outputs]
    graph = helper.make_graph(nodes, name, [_vinfo(k, v) for k, v in case.acts.items()], outs,
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                helper.make_opsetid("normexport", 1)])
    m.ir_version = 10
    return m


def node_model(op_type: str, case: Case) -> onnx.ModelProto:
    """One ``normexport::<op_type>`` node with its function attached."""
    from .export import attach_functions
    node = helper.make_node(op_type, case.inputs, case.outputs, domain="normexport", **case.attrs)
    m = _model([node], [_c(k, _f32(v)) for k, v in case.params.items()], case, op_type)
    attach_functions(m)
    return m


def stock_model(case: Case, label: str) -> onnx.ModelProto:
    nodes, inits = case.stock[label]()
    m = _model(nodes, inits, case, "stock")
    del m.opset_import[1]
    return m


# ---- timing ---------------------------------------------------------------------------------

#: Each path runs at least ``repeat`` times and at least this long (seconds; the quick run uses a
#: tenth): a median of 5 runs of a 0.4 ms kernel is mostly noise (thread-pool wake-up, another
#: runtime's threads still spinning after its last call).
MIN_SECONDS = 0.25
_min_seconds = MIN_SECONDS


def median_ms(fn: Callable[[], object], repeat: int, min_seconds: float | None = None) -> float:
    min_seconds = _min_seconds if min_seconds is None else min_seconds
    fn()                                    # warm-up
    ts: list[float] = []
    while len(ts) < max(1, repeat) or (sum(ts) < min_seconds and len(ts) < 100_000):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def _ort_session(model, threads: int, use_library: bool):
    import onnxruntime as ort

    from .runtime import session
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return session(model, ["CPUExecutionProvider"], use_library=use_library, sess_options=so)


def _ort_ms(model, feeds, threads, repeat, use_library, outputs: list | None = None, bind: bool = False) -> float:
    """Median ms of one session's runs. bind: the outputs go to numpy arrays allocated once (IO
    binding), like the copy's destination, instead of buffers ORT allocates per run: on this
    project's VM the time of a memory-bound kernel moved by 5-8% (single runs up to 3x) with where
    ORT's output buffer landed."""
    s = _ort_session(model, threads, use_library)
    first = s.run(None, feeds) if (outputs is not None or bind) else None
    if outputs is not None:
        outputs.extend(first)
    if bind:
        bound = [np.full_like(o, np.nan) for o in first]
        ms = median_ms(_bound_run(s, feeds, bound), repeat)
        for a, b in zip(bound, first):      # the bound runs computed the same values as the first run
            if not np.array_equal(a, b, equal_nan=True):
                raise RuntimeError(f"bench: the IO-bound runs of {model.graph.node[0].op_type} differ from "
                                   f"its plain run (max |diff| {_max_diff([a], [b]):.3g})")
        return ms
    return median_ms(lambda: s.run(None, feeds), repeat)


#: Alternating rounds of the --baseline comparison (each round: 1 warm-up + 3 timed runs per library;
#: both sessions write into the same output arrays).
BASELINE_ROUNDS = 8


def _paired_ms(fa: Callable[[], object], fb: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """Medians of a and b and of the per-round ratio b / a, the two timed in alternating rounds
    (a, b, then b, a, ...): on a machine whose memory bandwidth drifts by tens of percent from one
    minute to the next, a ratio of two separate medians can be off by that much; the rounds see
    the same conditions."""
    ta, tb, ratio = [], [], []
    for i in range(max(2, rounds)):
        order = (fa, fb) if i % 2 == 0 else (fb, fa)
        t = {id(f): median_ms(f, 3, 0.0) for f in order}
        ta.append(t[id(fa)])
        tb.append(t[id(fb)])
        ratio.append(tb[-1] / ta[-1])
    return float(np.median(ta)), float(np.median(tb)), float(np.median(ratio))


def _library_session(model, threads: int, library: str):
    """A CPU session with the op library at ``library`` (another build than the installed one)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])


def _bound_run(sess, feeds: dict, outputs: list) -> Callable[[], None]:
    """sess.run with the inputs and outputs bound to these numpy arrays (no allocation, no copy)."""
    b = sess.io_binding()
    for name, arr in feeds.items():
        b.bind_cpu_input(name, arr)
    for o, arr in zip(sess.get_outputs(), outputs):
        b.bind_output(o.name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
    keep = (feeds, outputs)      # the binding holds raw pointers: the arrays live as long as the runner

    def run() -> None:
        assert keep
        sess.run_with_iobinding(b)
    return run


def _max_diff(a: list, b: list) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
               for x, y in zip(a, b))


def _copy_ms(nbytes: int, repeat: int) -> float:
    n = max(1, nbytes // 2 // 4)
    src = torch.randn(n)
    dst = torch.empty_like(src)
    return median_ms(lambda: dst.copy_(src), repeat)


_SERVED: dict[str, bool] = {}


def _native_available(op) -> tuple[bool, str]:
    """Whether ORT + the library runs this op's float32 node on the native kernel (checked
    once per op with ORT profiling on a tiny node: a library that does not register the op
    would silently run the function body, and the "native" row would time the fallback)."""
    from .runtime import library_path, served_by
    if "float32" not in op.kernels.get(registry.CPU, ()):
        return False, "no CPU kernel yet (registry kernel table): function path only"
    if not library_path():
        return False, "op library not built: function path only"
    if op.op_type not in _SERVED:
        case = RECIPES[op.op_type](QUICK_SHAPE, _rng())
        served = served_by(node_model(op.op_type, case), dict(case.acts), providers=[registry.CPU])
        _SERVED[op.op_type] = served[(op.op_type, registry.CPU)] > 0
    if not _SERVED[op.op_type]:
        return False, (f"the installed library does not serve normexport::{op.op_type} although the "
                       f"registry lists a CPU kernel (a stale build? reinstall): function path only")
    return True, ""


def _shape_for(recipe, bytes_target: int) -> tuple[int, int, int, int]:
    """(1, LARGE_CHANNELS, H, H) whose bytes read + written reach bytes_target: one sample whose
    planes, groups and sample are far larger than any per-core cache."""
    probe = recipe((1, LARGE_CHANNELS, 4, 4), _rng())
    per_x = _case_bytes(probe) / (LARGE_CHANNELS * 16)      # bytes per element of X
    hw = bytes_target / per_x / LARGE_CHANNELS
    h = int(math.ceil(math.sqrt(hw) / 8) * 8)
    return (1, LARGE_CHANNELS, h, h)


def _batch_shape_for(recipe, bytes_target: int) -> tuple[int, int, int, int]:
    """(N, LARGE_CHANNELS, *LARGE_PLANE) whose bytes read + written reach bytes_target: a batch of
    ordinary activations (a ResNet stage-1 map), each plane, group and sample cache-sized."""
    h, w = LARGE_PLANE
    probe = recipe((1, LARGE_CHANNELS, h, w), _rng())
    return (int(math.ceil(bytes_target / _case_bytes(probe))), LARGE_CHANNELS, h, w)


def large_shapes(recipe, bytes_target: int) -> list[tuple[int, int, int, int]]:
    """The large shapes: a batch of activations, then one huge sample."""
    return [_batch_shape_for(recipe, bytes_target), _shape_for(recipe, bytes_target)]


def _case_bytes(case: Case) -> int:
    """Activation bytes read + written (outputs: the same shapes as run)."""
    read = sum(a.nbytes for a in case.acts.values())
    x = next(iter(case.acts.values()))
    written = 0
    for o in case.outputs:   # Y: shape of X; PONO's Mean/Std: (N, 1, *spatial)
        written += x.nbytes if o == "Y" else x.nbytes // x.shape[1]
    return read + written


def bench_op(spec, size: str, shape, threads: int, repeat: int, tmp: str, baseline: str | None = None) -> dict:
    op = spec.export
    res = {"op": op.op_type, "registry": spec.name, "size": size, "shape": list(shape) if shape else None,
           "bytes": None, "measurements": {}, "ratios": {}, "notes": []}
    recipe = RECIPES.get(op.op_type)
    if recipe is None:
        res["notes"].append(f"no bench recipe for normexport::{op.op_type} (add one to "
                            f"normexport/bench.py RECIPES)")
        res["measurements"] = {k: None for k in ("native", "function", "torch", "copy")}
        return res
    case = recipe(shape, _rng(zlib.crc32(op.op_type.encode())))
    nbytes = _case_bytes(case)
    res["bytes"] = nbytes
    res["copy_method"] = "torch Tensor.copy_ of (read + written) / 2 bytes"
    res["torch_method"] = case.torch_what
    model = node_model(op.op_type, case)
    feeds = dict(case.acts)
    meas, outs = {}, {}
    ok, why = _native_available(op)
    if ok:
        outs["native"] = []
        meas["native"] = _ort_ms(model, feeds, threads, repeat, True, outs["native"], bind=True)
        # the copy right after the native kernel: on a shared machine the memory bandwidth drifts,
        # and native / copy should compare the two under the same conditions
        meas["copy"] = _copy_ms(nbytes, repeat)
        if baseline:
            sa = _ort_session(model, threads, True)
            sb = _library_session(model, threads, baseline)
            outs["baseline"] = sb.run(None, feeds)
            # both write into the same output arrays: with ORT's own output buffers, whichever session
            # was created second ran 5-8% faster on this VM (same library in both), from where its
            # buffer landed in memory, not from the kernel
            shared = [np.empty_like(o) for o in outs["baseline"]]
            a_ms, b_ms, ratio = _paired_ms(_bound_run(sa, feeds, shared), _bound_run(sb, feeds, shared),
                                           BASELINE_ROUNDS)
            res["baseline"] = {"library": baseline, "rounds": BASELINE_ROUNDS, "native_ms": a_ms,
                               "baseline_ms": b_ms, "baseline/native": ratio}
    else:
        meas["native"] = None
        res["notes"].append(why)
    outs["function"] = []
    meas["function"] = _ort_ms(model, feeds, threads, repeat, False, outs["function"])
    for label in case.stock:
        outs[f"stock:{label}"] = []
        meas[f"stock:{label}"] = _ort_ms(stock_model(case, label), feeds, threads, repeat, False,
                                         outs[f"stock:{label}"])
    with torch.inference_mode():
        y = case.torch_fn()
        outs["torch"] = [t.numpy() for t in (y if isinstance(y, (tuple, list)) else (y,))]
        meas["torch"] = median_ms(case.torch_fn, repeat)
    # every path computes the same outputs (a wrong formulation would make a bogus race)
    res["max_abs_diff_vs_function"] = {k: _max_diff(v, outs["function"]) for k, v in outs.items()
                                       if k != "function"}
    if "copy" not in meas:
        meas["copy"] = _copy_ms(nbytes, repeat)
    meas["copy"] = meas.pop("copy")   # listed last
    res["measurements"] = {k: ({"ms": v, "gbps": nbytes / (v * 1e-3) / 1e9} if v is not None else None)
                           for k, v in meas.items()}
    res["ratios"] = _ratios(meas)
    return res


def _ratios(meas: dict) -> dict:
    def r(a, b):
        return None if meas.get(a) is None or meas.get(b) is None else meas[a] / meas[b]
    out = {"native/copy": r("native", "copy"), "function/native": r("function", "native"),
           "torch/native": r("torch", "native"), "function/copy": r("function", "copy")}
    for k in meas:
        if k.startswith("stock:"):
            out[f"{k}/native"] = r(k, "native")
    return out


# ---- model level ----------------------------------------------------------------------------

def bench_graph(name: str, factory, threads: int, repeat: int, tmp: str) -> dict:
    from .export import export
    model, inputs = factory()
    path = os.path.join(tmp, f"{name}.onnx")
    export(model, inputs, path)
    names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    feeds = {n: t.numpy() for n, t in zip(names, inputs)}
    meas = {}
    from .runtime import library_path
    meas["ort_library"] = _ort_ms(path, feeds, threads, repeat, True) if library_path() else None
    meas["ort_function"] = _ort_ms(path, feeds, threads, repeat, False)
    with torch.inference_mode():
        meas["torch"] = median_ms(lambda: model(*inputs), repeat)

    def r(a, b):
        return None if meas[a] is None or meas[b] is None else meas[a] / meas[b]
    return {"graph": name, "batch": int(inputs[0].shape[0]) if inputs and inputs[0].dim() else None,
            "ms": meas, "ratios": {"ort_function/ort_library": r("ort_function", "ort_library"),
                                   "torch/ort_library": r("torch", "ort_library")}}


# ---- driver ---------------------------------------------------------------------------------

QUICK_GRAPHS = ("pono_autoencoder",)  # the fastest to export


def run(ops: list[str] | None = None, sizes: tuple[str, ...] = ("small", "large"), threads: int = 2,
        repeat: int = 5, quick: bool = False, graphs: list[str] | None = None,
        log: Callable[[str], None] | None = None, baseline: str | None = None) -> dict:
    """Run the benchmark; returns the JSON-able document (``log``: progress lines).

    ``baseline``: the path of another build of the op library (e.g. the previous commit's): its
    native kernels are timed against this build's in alternating rounds, per op and shape."""
    import onnxruntime as ort

    from .graphs import GRAPHS
    from .runtime import library_path
    log = log or (lambda s: None)
    all_ops = registry.custom_ops()
    specs = [s for s in registry.REGISTRY.values() if isinstance(s.export, registry.CustomOp)]
    if ops:
        unknown = [o for o in ops if o not in all_ops and o not in {s.name for s in specs}]
        if unknown:
            raise ValueError(f"unknown op(s) {', '.join(unknown)}; registry custom ops: "
                             f"{', '.join(all_ops)}")
        specs = [s for s in specs if s.export.op_type in ops or s.name in ops]
    if graphs is None:
        graphs = list(QUICK_GRAPHS) if quick else list(GRAPHS)
    bad = [g for g in graphs if g not in GRAPHS]
    if bad:
        raise ValueError(f"unknown graph(s) {', '.join(bad)}; known: {', '.join(GRAPHS)}")
    if baseline is not None:
        if not os.path.isfile(baseline):
            raise ValueError(f"--baseline {baseline!r} is not a file (the path of a libnormexport_ops "
                             f"build to compare with)")
        if not library_path():
            raise ValueError("--baseline needs this build's op library, and none is built")
        baseline = os.path.abspath(baseline)
    llc, llc_src = llc_bytes()
    global _min_seconds
    prev_threads, prev_min = torch.get_num_threads(), _min_seconds
    torch.set_num_threads(threads)
    _min_seconds = MIN_SECONDS / 10 if quick else MIN_SECONDS
    doc = {"threads": threads, "repeat": repeat, "min_seconds": _min_seconds, "quick": quick, "llc_bytes": llc, "llc_source": llc_src,
           "large_rule": f"bytes read + written >= {LLC_MULTIPLE} x LLC",
           "onnxruntime": ort.__version__, "torch": torch.__version__, "library": library_path(),
           "baseline_library": baseline, "ops": [], "graphs": []}
    try:
        with tempfile.TemporaryDirectory(prefix="normexport-bench-") as tmp:
            for spec in specs:
                recipe = RECIPES.get(spec.export.op_type)
                for size in (("quick",) if quick else sizes):
                    if recipe is None:
                        shapes = [None]
                    elif size == "quick":
                        shapes = [QUICK_SHAPE]
                    elif size == "small":
                        shapes = list(SMALL_SHAPES)
                    else:
                        shapes = large_shapes(recipe, LLC_MULTIPLE * llc)
                    for shape in shapes:
                        log(f"op {spec.export.op_type} {size} {shape} ...")
                        doc["ops"].append(bench_op(spec, size, shape, threads, repeat, tmp, baseline))
            for g in graphs:
                log(f"graph {g} ...")
                doc["graphs"].append(bench_graph(g, GRAPHS[g], threads, repeat, tmp))
    finally:
        torch.set_num_threads(prev_threads)
        _min_seconds = prev_min
    return doc


# ---- printing -------------------------------------------------------------------------------

def _fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def format_report(doc: dict) -> str:
    from .parity import format_table
    lines = [f"normexport bench: {doc['threads']} threads (ORT intra-op and torch), median of "
             f">= {doc['repeat']} runs filling >= {doc.get('min_seconds', 0):g} s after 1 warm-up; LLC {doc['llc_bytes'] >> 20} MiB "
             f"({doc['llc_source']}); large = {doc['large_rule']}",
             f"onnxruntime {doc['onnxruntime']}, torch {doc['torch']}, library: "
             f"{doc['library'] or 'not built'}",
             "copy = torch Tensor.copy_ moving the same bytes; GB/s = (bytes read + written) / time; "
             "x native = time / native time"]
    for r in doc["ops"]:
        shape = "x".join(map(str, r["shape"])) if r["shape"] else "-"
        b = r["bytes"] or 0
        mb = f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB" if b else "-"
        lines.append(f"\nnormexport::{r['op']}  [{r['size']}] {shape}, {mb} read + written")
        for note in r["notes"]:
            lines.append(f"  note: {note}")
        m = r["measurements"]
        nat = m.get("native")
        copy = m.get("copy")
        rows = []
        diffs = r.get("max_abs_diff_vs_function", {})
        for k, v in m.items():
            label = {"native": "native kernel (ORT + library)", "function": "function body (ORT, no library)",
                     "torch": f"torch eager ({r.get('torch_method', 'layer')})",
                     "copy": "memory copy (torch copy_)"}.get(k, k.replace("stock:", "stock ORT: "))
            ms = v["ms"] if v else None
            rows.append([label, _fmt(ms), _fmt(v["gbps"] if v else None, ".2f"),
                         _fmt(ms / nat["ms"] if ms and nat else None, ".2f"),
                         _fmt(ms / copy["ms"] if ms and copy else None, ".2f"),
                         "-" if k in ("function", "copy") else _fmt(diffs.get(k), ".1e")])
        lines.append(format_table(["path", "ms", "GB/s", "x native", "x copy", "max|diff| vs function"], rows))
        if r.get("baseline"):
            bl = r["baseline"]
            lines.append(f"baseline library, {bl['rounds']} alternating rounds: this build {bl['native_ms']:.3f} ms, "
                         f"baseline {bl['baseline_ms']:.3f} ms, baseline / this build {bl['baseline/native']:.3f} "
                         f"(> 1: this build is faster)")
    summary = [r for r in doc["ops"] if r["measurements"].get("native")]
    if summary:
        lines.append("\nsummary, native kernel against: a copy of the same bytes (time ratio, lower is better), "
                     "the best stock-ORT formulation and torch eager (speed-ups, higher is better):")
        rows = []
        with_baseline = any(r.get("baseline") for r in summary)
        for r in summary:
            rat = r["ratios"]
            stock = [v for k, v in rat.items() if k.startswith("stock:") and v is not None]
            rows.append([r["op"], r["size"], "x".join(map(str, r["shape"])),
                         _fmt(rat.get("native/copy"), ".2f"), _fmt(max(stock) if stock else None, ".2f"),
                         _fmt(rat.get("torch/native"), ".2f")])
            if with_baseline:
                rows[-1].append(_fmt((r.get("baseline") or {}).get("baseline/native"), ".3f"))
        lines.append(format_table(["op", "size", "shape", "native / copy", "best stock / native",
                                   "torch / native"] + (["baseline / native (paired)"] if with_baseline else []),
                                  rows))
        if with_baseline:
            lines.append(f"baseline library: {doc.get('baseline_library')}")
    if doc["graphs"]:
        lines.append("\nmodels (normexport.graphs, exported with custom ops), ms per batch:")
        rows = [[g["graph"], str(g["batch"]), _fmt(g["ms"]["ort_library"]), _fmt(g["ms"]["ort_function"]),
                 _fmt(g["ms"]["torch"]), _fmt(g["ratios"]["ort_function/ort_library"], ".2f"),
                 _fmt(g["ratios"]["torch/ort_library"], ".2f")] for g in doc["graphs"]]
        lines.append(format_table(["graph", "batch", "ORT + library", "ORT functions", "torch eager",
                                   "functions / library", "torch / library"], rows))
    return "\n".join(lines)
