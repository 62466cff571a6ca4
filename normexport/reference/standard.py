"""Float64 numpy references of the per-sample norms torch already has (NORMS.md rows 1, 7-10),
written from their definitions (torch's documentation and source semantics), independent of
torch and of the exporters."""

import numpy as np

from ._conv import conv


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """LRN as torch.nn.LocalResponseNorm defines it, for x (N, C, *):

        b[c] = a[c] / (k + alpha / n * sum_{c' in window(c)} a[c']^2) ^ beta

    window(c) = [c - n//2, c + (n-1)//2] clipped to [0, C-1]; the divisor is always n (torch
    zero-pads the channel axis and average-pools). For odd n this is ONNX's LRN window
    [c - (n-1)//2, c + ceil((n-1)/2)]; for even n the two differ by one channel (ONNX's window
    is shifted up), and ONNX Runtime's CPU LRN refuses even sizes.
    """
    x = _f64(x)
    c = x.shape[1]
    sq = x * x
    s = np.zeros_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        s[:, ch] = sq[:, lo:hi + 1].sum(axis=1)
    return x / (k + alpha / size * s) ** beta


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LN over the trailing ``len(normalized_shape)`` dims (biased variance, eps under the
    square root), then element-wise affine of shape normalized_shape."""
    x = _f64(x)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y


def _channel(p, ndim):
    return _f64(p).reshape((1, -1) + (1,) * (ndim - 2))


def instance_norm(x, weight=None, bias=None, eps=1e-5, running_mean=None, running_var=None,
                  use_input_stats=True, momentum=0.1):
    """IN of x (N, C, *spatial) as torch's InstanceNorm{1,2,3}d: per sample and channel over
    the spatial dims (biased variance) when ``use_input_stats`` (train mode, or no tracked
    stats), else per channel with the running statistics. Returns ``(y, new_running_mean,
    new_running_var)``: with input stats and running buffers, the buffers move by ``momentum``
    towards the batch average of the per-instance mean and *unbiased* variance."""
    x = _f64(x)
    axes = tuple(range(2, x.ndim))
    if use_input_stats:
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        new_rm, new_rv = _f64(running_mean), _f64(running_var)
        if running_mean is not None:
            m = int(np.prod(x.shape[2:]))
            unbiased = var * m / (m - 1)
            new_rm = (1 - momentum) * new_rm + momentum * mu.mean(axis=0).reshape(-1)
            new_rv = (1 - momentum) * new_rv + momentum * unbiased.mean(axis=0).reshape(-1)
    else:
        mu, var = _channel(running_mean, x.ndim), _channel(running_var, x.ndim)
        new_rm, new_rv = _f64(running_mean), _f64(running_var)
    y = (x - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _channel(weight, x.ndim)
    if bias is not None:
        y = y + _channel(bias, x.ndim)
    return y, new_rm, new_rv


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """GN of x (N, C, *): per sample, per group of C/G consecutive channels over (C/G, *)
    (biased variance), then per-channel affine."""
    x = _f64(x)
    n, c = x.shape[:2]
    g = x.reshape(n, num_groups, -1)
    mu = g.mean(axis=2, keepdims=True)
    var = ((g - mu) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mu) / np.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * _channel(weight, x.ndim)
    if bias is not None:
        y = y + _channel(bias, x.ndim)
    return y


def weight_norm_weight(g, v, dim=0):
    """w = g * v / |v|: the norm over every dim of v except ``dim`` (g has v's size along
    ``dim``, 1 elsewhere); ``dim=None`` (torch stores -1): one norm over the whole of v."""
    g, v = _f64(g), _f64(v)
    if dim is None or dim == -1:
        return g * v / np.sqrt((v * v).sum())
    axes = tuple(a for a in range(v.ndim) if a != dim % v.ndim)
    return g * v / np.sqrt((v * v).sum(axis=axes, keepdims=True))


def linear(x, w, b=None):
    y = _f64(x) @ _f64(w).T
    return y if b is None else y + _f64(b)


__all__ = ["local_response_norm", "layer_norm", "instance_norm", "group_norm",
           "weight_norm_weight", "linear", "conv"]
