"""Float64 numpy convolution by explicit patches, shared by the references (weight norm,
cosine conv, DMS). Written from the definition, independent of torch."""

import numpy as np

_NP_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _tuple(v, n):
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def pad_amounts(padding, kernel, dilation):
    """[(before, after)] per spatial dim for an int/tuple padding or "same"/"valid"."""
    n = len(kernel)
    if padding == "valid":
        return [(0, 0)] * n
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(p, p) for p in _tuple(padding, n)]


def patches(x, kernel, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """Receptive fields of ``x`` (N, C, *spatial): array (N, *out, C, *kernel) where entry
    [n, o..., c, k...] = padded_x[n, c, o*stride + k*dilation]."""
    x = np.asarray(x, np.float64)
    nsp = x.ndim - 2
    kernel, stride, dilation = _tuple(kernel, nsp), _tuple(stride, nsp), _tuple(dilation, nsp)
    pads = pad_amounts(padding, kernel, dilation)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, mode=_NP_PAD_MODES[padding_mode])
    out = [(xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(nsp)]
    res = np.empty((x.shape[0], *out, x.shape[1], *kernel))
    for k in np.ndindex(*kernel):
        window = tuple(slice(k[i] * dilation[i], k[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i])
                       for i in range(nsp))
        # xp[n, c, o*stride + k*dilation] for every o: (N, C, *out) -> (N, *out, C)
        res[(Ellipsis, *k)] = np.moveaxis(xp[(slice(None), slice(None), *window)], 1, -1)
    return res


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """N-d convolution (cross-correlation, as torch and ONNX define it) of x (N, C, *spatial)
    with w (O, C/groups, *kernel), by explicit patches."""
    w = np.asarray(w, np.float64)
    nsp = w.ndim - 2
    p = patches(x, w.shape[2:], stride, padding, dilation, padding_mode)   # (N, *out, C, *k)
    o_per_g, c_per_g = w.shape[0] // groups, w.shape[1]
    outs = []
    for g in range(groups):
        pg = p[(Ellipsis, slice(g * c_per_g, (g + 1) * c_per_g)) + (slice(None),) * nsp]
        wg = w[g * o_per_g:(g + 1) * o_per_g]
        # sum over C/groups and kernel: (N, *out, c, *k) x (o, c, *k) -> (N, *out, o)
        outs.append(np.tensordot(pg, wg, axes=(list(range(pg.ndim - nsp - 1, pg.ndim)),
                                              list(range(1, wg.ndim)))))
    y = np.concatenate(outs, axis=-1)
    y = np.moveaxis(y, -1, 1)
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape((1, -1) + (1,) * nsp)
    return y
