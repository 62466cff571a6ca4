"""64-bit indexing of the native CPU kernels: every ``normexport`` op on float16 tensors of more
than 2**31 elements (4 GiB and more), against the float64 references of ``normexport.reference``.

What is proven. An int32 element offset wraps at 2**31 elements, an int32 / uint32 byte offset at
2**30 / 2**31 float16 elements. Each case runs one node over a tensor of 2**31 + 22528 elements
made of many small samples (3072 elements each; 3072 does not divide 2**30 or 2**31, so one sample
straddles each boundary) and compares, for every output of the op, the first samples, the samples
around element 2**30 (byte 2**31), those straddling and following element 2**31 (byte 2**32),
a few random ones and the very last sample with the float64 reference computed from that sample's
data alone (every op here normalizes within a sample; the per-channel parameters are shared).
A kernel that computes or stores an offset in 32 bits reads or writes the wrong sample there
(or crashes). The checked output samples are set to NaN before each run, so a sample the kernel
never wrote fails too.

Why the data differ per sample. If every sample held the same values, a kernel reading the
wrong sample would still produce the right numbers. A scale and an offset per sample are not
enough either: GroupNorm, SwitchableNorm, PositionalNorm's Y and AdaIN's content normalization
remove them. So each sample is a random float16 base block whose bits are changed per sample:
the mantissa (10 bits) and the sign XOR a per-sample mask and the exponent moves by -2..2. That
changes every statistic (not only scale and shift), needs no float32 / float64 temporary of the
tensor's size, and fills 4 GiB in about a second (integer operations on cache-sized chunks).

Cost. A case needs its inputs + outputs in memory (about 8.6 GB; SPADE, whose modulation maps have
X's shape, 17.2 GB) and is skipped, saying so, only where /proc/meminfo's MemAvailable is short.
Cases run one at a time and release their arrays (also on failure) before the next one.
Where one buffer serves several layouts (channels-last, both SPADE modes) the same memory is run
again with another node, so the extra paths cost no memory and no fill (SwitchableNorm of rank 2
too: its one-element planes take a path without per-plane scratch). The inputs are bound to ORT with IOBinding (no copy), and so are the outputs (no ORT-side
output plus numpy copy)."""

import gc
import os
import traceback

import numpy as np
import pytest
from onnx import helper

import normexport
from normexport.export import attach_functions
from normexport.reference import frn as frn_ref
from normexport.reference import pono as pono_ref
from normexport.reference import standard
from normexport.reference import style as style_ref

BOUNDARY = 2 ** 31                 # elements; int32 element offsets wrap here
BYTE_BOUNDARY = 2 ** 31 // 2       # float16 elements at 2**31 bytes (int32 byte offsets wrap)
SAMPLE = 3072                      # elements per sample (N stride) in every case
N = BOUNDARY // SAMPLE + 8         # samples: N * SAMPLE = 2**31 + 22528, 7 of them past 2**31
HEADROOM = 512 * 2 ** 20           # bytes for ORT, the references and the interpreter
F16 = np.float16


def tol(name):
    return normexport.registry.REGISTRY[name].tolerances["float16"]


def mem_available():
    """Bytes the kernel can still give this process without swapping (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def require_memory(nbytes):
    avail = mem_available()
    need = nbytes + HEADROOM
    if avail is not None and avail < need:
        pytest.skip(f"needs {need / 1e9:.1f} GB free ({nbytes / 1e9:.1f} GB of inputs + outputs), "
                    f"{avail / 1e9:.1f} GB available")


def fill(a, block, seed, hi=8.0):
    """Fill float16 ``a`` (size a multiple of ``block``) row by row of ``block`` elements: a random
    base block (magnitudes in [hi / 128, hi]) with, per row, the sign and mantissa bits XOR a
    random mask and the exponent moved by -2..2 (a factor 1/4..4). Chunks of ~256K elements; no
    temporary of the array's size."""
    bits = a.reshape(-1, block).view(np.uint16)
    rows = bits.shape[0]
    r = np.random.default_rng(seed)
    v = r.standard_normal(block)
    base = (np.sign(v) * np.clip(np.abs(v) * hi / 4, hi / 128, hi)).astype(F16).view(np.uint16)
    mask = r.integers(0, 1024, rows, dtype=np.uint16) | (r.integers(0, 2, rows, dtype=np.uint16) << np.uint16(15))
    shift = ((r.integers(-2, 3, rows) << 10) & 0xFFFF).astype(np.uint16)   # mod 2**16: -2 -> 0xF800
    mask, shift = mask[:, None], shift[:, None]
    step = max(1, (1 << 18) // block)
    for i in range(0, rows, step):
        j = min(rows, i + step)
        d = bits[i:j]
        np.bitwise_xor(base, mask[i:j], out=d)
        np.add(d, shift[i:j], out=d)             # exponent field 8..18 (+-2): no Inf, no subnormal
    return a


def small(n, seed, lo=0.5, hi=1.5):
    return np.random.default_rng(seed).uniform(lo, hi, n).astype(F16)


def checked_samples():
    """First samples, the samples around the byte and element boundaries, random ones, the last."""
    picks = {0, 1, 2, N - 2, N - 1}
    for b in (BYTE_BOUNDARY, BOUNDARY):
        k = b // SAMPLE                                         # the sample holding element b
        picks |= set(range(k - 2, k + 4))
    picks |= set(np.random.default_rng(7).integers(0, N, 6).tolist())
    idx = np.array(sorted(picks))
    starts = idx * SAMPLE
    assert ((starts < BOUNDARY) & (starts + SAMPLE > BOUNDARY)).sum() == 1 and (starts >= BOUNDARY).sum() >= 4
    assert idx[-1] == N - 1 and N * SAMPLE > BOUNDARY
    return idx


IDX = checked_samples()


def op_model(op_type, inputs, outputs, **attrs):
    """One float16 ``normexport`` node; ``inputs`` maps each input name to its rank."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(F16))
    vis = [helper.make_tensor_value_info(n, elem, [f"{n}_{i}" for i in range(r)]) for n, r in inputs.items()]
    node = helper.make_node(op_type, list(inputs), list(outputs), domain="normexport", name=f"{op_type}_node",
                            **attrs)
    graph = helper.make_graph([node], op_type, vis, [helper.make_tensor_value_info(o, elem, None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert attach_functions(model) == [op_type]
    return model


def run_bound(model, inputs, outputs):
    """Run on the native kernel with every input and output bound to its numpy buffer (no copy).
    The outputs' checked samples are NaN first: a sample the kernel does not write fails."""
    op_type = model.graph.node[0].op_type
    tiny = {k: (v[:2] if v.ndim > 1 else v) for k, v in inputs.items()}
    served = normexport.served_by(model, tiny, providers=["CPUExecutionProvider"])
    assert served[(op_type, "CPUExecutionProvider")] == 1, served     # the native kernel, not the body
    for y in outputs.values():
        y[IDX] = np.nan
    s = normexport.session(model, ["CPUExecutionProvider"], use_library=True)
    b = s.io_binding()
    for name, a in inputs.items():
        assert a.flags.c_contiguous
        b.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
    for name, a in outputs.items():
        b.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
    s.run_with_iobinding(b)


def at(a):
    """The checked samples of ``a`` as float64 (a copy of a few samples)."""
    return a[IDX].astype(np.float64)


def assert_close(label, actual, expected, tolerance):
    names = ["Y", "Mean", "Std"][:len(expected)]
    result = normexport.compare([at(a) for a in actual], expected, tolerance=tolerance, label=label, names=names)
    assert result, f"{result}\n(row i of these arrays is sample IDX[i]; IDX = {IDX.tolist()})"


def f32(v):
    return float(np.float32(v))       # attributes are float32 in the node


def nchw(a):
    return np.moveaxis(a, -1, 1)


def nhwc(a):
    return np.moveaxis(a, 1, -1)


# ---- the cases (each owns its arrays through ``mem``) -------------------------------------------

def channels_first_and_last(x, y):
    """(channels_last, X view, Y view, C, float64 X of the checked samples in NCHW, to_layout) for
    the buffers as allocated and again as channels-last (N, 6, 8, 64)."""
    for last in (0, 1):
        shape = (N, 6, 8, 64) if last else x.shape
        xs, ys = x.reshape(shape), y.reshape(shape)
        yield (last, xs, ys, shape[-1] if last else shape[1], nchw(at(xs)) if last else at(xs),
               nhwc if last else (lambda e: e))


def case_frn(mem):
    """FilterResponseNorm, (N, 4, 24, 32): planes of 768; again as channels-last (N, 6, 8, 64)."""
    x = fill(mem.setdefault("X", np.empty((N, 4, 24, 32), F16)), SAMPLE, 1)
    y = mem.setdefault("Y", np.empty_like(x))
    eps = 1e-6
    for last, xs, ys, c, xi, layout in channels_first_and_last(x, y):
        p = {"gamma": small(c, 2), "beta": small(c, 3, -0.5, 0.5), "tau": small(c, 4, -1.0, 0.0)}
        q = {k: v.astype(np.float64) for k, v in p.items()}
        m = op_model("FilterResponseNorm", {"X": 4, "gamma": 1, "beta": 1, "tau": 1}, ["Y"], eps=eps, tlu=1,
                     channels_last=last)
        run_bound(m, {"X": xs, **p}, {"Y": ys})
        e = frn_ref.filter_response_norm(xi, q["gamma"], q["beta"], q["tau"], f32(eps))
        assert_close(f"FRN channels_last={last}", [ys], [layout(e)], tol("frn"))


def case_groupnorm(mem):
    """GroupNorm, (N, 8, 16, 24), 4 groups of 768; again as channels-last (N, 6, 8, 64)."""
    x = fill(mem.setdefault("X", np.empty((N, 8, 16, 24), F16)), SAMPLE, 11)
    y = mem.setdefault("Y", np.empty_like(x))
    eps = 1e-5
    for last, xs, ys, c, xi, layout in channels_first_and_last(x, y):
        p = {"scale": small(c, 12), "bias": small(c, 13, -0.5, 0.5)}
        q = {k: v.astype(np.float64) for k, v in p.items()}
        m = op_model("GroupNorm", {"X": 4, "scale": 1, "bias": 1}, ["Y"], num_groups=4, epsilon=eps,
                     channels_last=last)
        run_bound(m, {"X": xs, **p}, {"Y": ys})
        e = standard.group_norm(xi, 4, q["scale"], q["bias"], f32(eps))
        assert_close(f"GroupNorm channels_last={last}", [ys], [layout(e)], tol("groupnorm"))


def case_positional_norm(mem):
    """PositionalNorm, (N, 32, 8, 12): statistics over 32 channels at each of 96 positions per
    sample; outputs Y (N, 32, 8, 12), Mean and Std (N, 1, 8, 12)."""
    x = fill(mem.setdefault("X", np.empty((N, 32, 8, 12), F16)), SAMPLE, 21)
    outs = {"Y": mem.setdefault("Y", np.empty_like(x)), "Mean": mem.setdefault("Mean", np.empty((N, 1, 8, 12), F16)),
            "Std": mem.setdefault("Std", np.empty((N, 1, 8, 12), F16))}
    eps = 1e-5
    run_bound(op_model("PositionalNorm", {"X": 4}, list(outs), epsilon=eps, unbiased=1), {"X": x}, outs)
    e = pono_ref.positional_norm(at(x), f32(eps), True)
    assert_close("PositionalNorm", list(outs.values()), list(e), tol("pono"))


def sn_params(c, k, seed):
    r = np.random.default_rng(seed)
    return {"scale": small(c, seed), "bias": small(c, seed + 1, -0.5, 0.5),
            "running_mean": small(c, seed + 2, -0.5, 0.5), "running_var": small(c, seed + 3, 0.5, 4.0),
            "mean_weight": r.standard_normal(k).astype(F16), "var_weight": r.standard_normal(k).astype(F16)}


def case_switchable_norm(mem):
    """SwitchableNorm with BN (running statistics), (N, 4, 24, 32): IN over planes of 768, LN over
    samples of 3072; again as rank 2, (N, 3072): one-element planes, LN and BN branches."""
    x = fill(mem.setdefault("X", np.empty((N, 4, 24, 32), F16)), SAMPLE, 31)
    y = mem.setdefault("Y", np.empty_like(x))
    eps = 1e-3
    for rank, c, branches in ((4, 4, ("in", "ln", "bn")), (2, SAMPLE, ("ln", "bn"))):
        xs, ys = (x, y) if rank == 4 else (x.reshape(N, SAMPLE), y.reshape(N, SAMPLE))
        p = sn_params(c, len(branches), 32)
        q = {k: v.astype(np.float64) for k, v in p.items()}
        m = op_model("SwitchableNorm", {"X": rank, **{k: 1 for k in p}}, ["Y"], epsilon=eps, using_bn=1)
        run_bound(m, {"X": xs, **p}, {"Y": ys})
        e, _ = style_ref.switchable_norm(at(xs), q["scale"], q["bias"], q["mean_weight"], q["var_weight"],
                                         f32(eps), branches, False, running_mean=q["running_mean"],
                                         running_var=q["running_var"])
        assert_close(f"SwitchableNorm rank {rank}", [ys], [e], tol("switchable_norm"))


def case_adain(mem):
    """AdaIN, content (N, 4, 24, 32), style (N, 4, 6, 8) (another spatial size), alpha 0.75; again
    as channels-last: content (N, 6, 8, 64), style (N, 1, 3, 64)."""
    x = fill(mem.setdefault("content", np.empty((N, 4, 24, 32), F16)), SAMPLE, 41)
    s = fill(mem.setdefault("style", np.empty((N, 4, 6, 8), F16)), 192, 42, hi=2.0)
    y = mem.setdefault("Y", np.empty_like(x))
    eps, alpha = 1e-5, 0.75
    for last in (0, 1):
        xs, ss, ys = ((x.reshape(N, 6, 8, 64), s.reshape(N, 1, 3, 64), y.reshape(N, 6, 8, 64)) if last
                      else (x, s, y))
        m = op_model("AdaIN", {"content": 4, "style": 4}, ["Y"], epsilon=eps, alpha=alpha, channels_last=last)
        run_bound(m, {"content": xs, "style": ss}, {"Y": ys})
        xi, si = (nchw(at(xs)), nchw(at(ss))) if last else (at(xs), at(ss))
        e = style_ref.adaptive_instance_norm(xi, si, f32(eps), f32(alpha))
        assert_close(f"AdaIN channels_last={last}", [ys], [nhwc(e) if last else e], tol("adain"))


def case_spade(mem):
    """SPADE, X / gamma_map / beta_map / Y (N, 4, 24, 32): mode 1 (instance statistics of planes of
    768), then mode 0 (running statistics, the flat element-range path) on the same buffers."""
    x = fill(mem.setdefault("X", np.empty((N, 4, 24, 32), F16)), SAMPLE, 51)
    g = fill(mem.setdefault("gamma_map", np.empty_like(x)), SAMPLE, 52, hi=1.0)
    b = fill(mem.setdefault("beta_map", np.empty_like(x)), SAMPLE, 53, hi=1.0)
    y = mem.setdefault("Y", np.empty_like(x))
    stats = {"running_mean": small(4, 54, -1.0, 1.0), "running_var": small(4, 55, 1.0, 16.0)}
    rm, rv = (v.astype(np.float64) for v in stats.values())
    eps = 1e-5
    xi, gi, bi = at(x), at(g), at(b)
    for mode in (1, 0):
        m = op_model("SPADE", {"X": 4, "gamma_map": 4, "beta_map": 4, "running_mean": 1, "running_var": 1}, ["Y"],
                     epsilon=eps, mode=mode)
        run_bound(m, {"X": x, "gamma_map": g, "beta_map": b, **stats}, {"Y": y})
        x_hat = (style_ref.batch_norm_with(xi, rm, rv, f32(eps)) if mode == 0
                 else style_ref.instance_norm(xi, f32(eps)))
        assert_close(f"SPADE mode={mode}", [y], [x_hat * (1 + gi) + bi], tol("spade"))


F16_BYTES = N * SAMPLE * 2
CASES = {                    # name: (case, bytes of inputs + outputs)
    "FilterResponseNorm": (case_frn, 2 * F16_BYTES),
    "GroupNorm": (case_groupnorm, 2 * F16_BYTES),
    "PositionalNorm": (case_positional_norm, 2 * F16_BYTES + 2 * (F16_BYTES // 32)),
    "SwitchableNorm": (case_switchable_norm, 2 * F16_BYTES),
    "AdaIN": (case_adain, 2 * F16_BYTES + N * 192 * 2),
    "SPADE": (case_spade, 4 * F16_BYTES),
}


@pytest.mark.parametrize("op", list(CASES))
def test_tensor_over_2_31_elements(op, library):
    case, nbytes = CASES[op]
    require_memory(nbytes)
    mem = {}
    try:
        case(mem)
        assert sum(a.nbytes for a in mem.values()) == nbytes        # the memory the skip rule budgets
    except BaseException as e:
        # a failure's traceback keeps the case's frames (and their arrays) alive: release them
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        mem.clear()
        gc.collect()
