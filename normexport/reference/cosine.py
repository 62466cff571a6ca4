"""Float64 numpy reference of Cosine Normalization (Luo et al. 2017), written from the
formula y = w . x / (|w|_eps |x|_eps), |v|_eps = sqrt(sum v^2 + eps); for the convolution x
is each receptive field, taken here as explicit patches (independent of the layer, which
computes |x| by convolving x^2 with ones)."""

import numpy as np

from ._conv import patches


def _norm_eps(v, axes, eps):
    return np.sqrt((v * v).sum(axis=axes, keepdims=True) + eps)


def cosine_linear(x, w, b=None, eps=1e-6):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y = (x @ w.T) / (_norm_eps(x, -1, eps) * _norm_eps(w, 1, eps).reshape(-1))
    return y if b is None else y + np.asarray(b, np.float64)


def cosine_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                eps=1e-6):
    """x (N, C, *spatial), w (O, C/groups, *kernel): for every output unit o of group g and
    position p, cos(w[o], patch_g(p)) with patch_g(p) the receptive field's channels of g."""
    w = np.asarray(w, np.float64)
    nsp = w.ndim - 2
    p = patches(x, w.shape[2:], stride, padding, dilation, padding_mode)   # (N, *out, C, *k)
    o_per_g, c_per_g = w.shape[0] // groups, w.shape[1]
    field_axes = tuple(range(1 + nsp, p.ndim))
    outs = []
    for g in range(groups):
        pg = p[(Ellipsis, slice(g * c_per_g, (g + 1) * c_per_g)) + (slice(None),) * nsp]
        for o in range(g * o_per_g, (g + 1) * o_per_g):
            wo = w[o]
            dot = (pg * wo).sum(axis=field_axes)
            outs.append(dot / (np.sqrt((pg * pg).sum(axis=field_axes) + eps)
                               * np.sqrt((wo * wo).sum() + eps)))
    y = np.stack(outs, axis=1)
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape((1, -1) + (1,) * nsp)
    return y
