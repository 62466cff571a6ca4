"""Float64 numpy references of the conditional / style family (NORMS.md rows 11, 15-18):
Switchable Norm, conditional BN (MLP and class-embedding forms), conditional IN, AdaIN, SPADE.

Written from the papers' formulas with numpy only, sharing no code with the torch layers:
every statistic is computed directly over its axes (mean, then the mean of squared deviations:
the biased variance), the running statistics by torch's BatchNorm rule written out here, the
SPADE convolutions by explicit correlation and the nearest resize by its index formula.
"""

from __future__ import annotations

import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def moments(x, axes):
    """Mean and biased variance over ``axes`` (kept as size-1 dims)."""
    x = _f64(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, var


def _cview(v, ndim):
    return _f64(v).reshape((1, -1) + (1,) * (ndim - 2))


def _sview(v, ndim):
    """(N, C) per-sample channel values -> (N, C, 1, ...)."""
    v = _f64(v)
    return v.reshape(v.shape + (1,) * (ndim - 2))


# ---- batch statistics and torch's running-statistic update ---------------------------------

def bn_batch_stats(x):
    """Per-channel mean, biased variance (each (C,)) and the count of values per channel."""
    x = _f64(x)
    axes = (0,) + tuple(range(2, x.ndim))
    mean, var = moments(x, axes)
    count = x.size // x.shape[1]
    return mean.reshape(-1), var.reshape(-1), count


def ema_update(running_mean, running_var, num_batches, mean, var, count, momentum):
    """torch BatchNorm: r <- (1 - m) r + m * batch (var unbiased: var * n / (n - 1));
    momentum None: m = 1 / (batches tracked so far, this one included)."""
    num_batches = int(num_batches) + 1
    m = 1.0 / num_batches if momentum is None else float(momentum)
    unbiased = _f64(var) * count / (count - 1)
    return ((1 - m) * _f64(running_mean) + m * _f64(mean),
            (1 - m) * _f64(running_var) + m * unbiased, num_batches)


def batch_average_update(running_mean, running_var, num_batches, mean, var):
    """Switchable Norm's batch average (official ``sn_helper``): over the K batches since reset,
    mean = sum(mu_k) / K and var = sum(var_k + mu_k^2) / K - mean^2. Recovers the sums from the
    finished averages of the K - 1 previous batches and adds this one."""
    k_prev = int(num_batches)
    s1 = k_prev * _f64(running_mean)
    s2 = k_prev * (_f64(running_var) + _f64(running_mean) ** 2)
    k = k_prev + 1
    s1 = s1 + _f64(mean)
    s2 = s2 + _f64(var) + _f64(mean) ** 2
    new_mean = s1 / k
    return new_mean, s2 / k - new_mean ** 2, k


# ---- plain normalizations ---------------------------------------------------------------

def instance_norm(x, eps):
    x = _f64(x)
    mean, var = moments(x, tuple(range(2, x.ndim)))
    return (x - mean) / np.sqrt(var + eps)


def layer_norm(x, eps):
    """Per sample over every dim but the batch."""
    x = _f64(x)
    mean, var = moments(x, tuple(range(1, x.ndim)))
    return (x - mean) / np.sqrt(var + eps)


def batch_norm_with(x, mean, var, eps):
    x = _f64(x)
    return (x - _cview(mean, x.ndim)) / np.sqrt(_cview(var, x.ndim) + eps)


# ---- Switchable Norm ------------------------------------------------------------------------

def softmax(v):
    v = _f64(v)
    e = np.exp(v - v.max())
    return e / e.sum()


def switchable_norm(x, weight, bias, mean_logits, var_logits, eps, branches, training,
                    running_mean=None, running_var=None, num_batches=0, momentum=0.1,
                    moving_average=True):
    """Switchable Norm of x ((N, C) or (N, C, *spatial)); ``branches`` names the statistics
    in logit order ("in", "ln", "bn"). Returns (y, new buffers dict or {})."""
    x = _f64(x)
    stats = {}
    if "in" in branches:
        stats["in"] = moments(x, tuple(range(2, x.ndim)))
    if "ln" in branches:
        stats["ln"] = moments(x, tuple(range(1, x.ndim)))
    buffers = {}
    if "bn" in branches:
        if training:
            mean, var, count = bn_batch_stats(x)
            if moving_average:
                rm, rv, nb = ema_update(running_mean, running_var, num_batches, mean, var, count, momentum)
            else:
                rm, rv, nb = batch_average_update(running_mean, running_var, num_batches, mean, var)
            buffers = {"running_mean": rm, "running_var": rv, "num_batches_tracked": np.float64(nb)}
        else:
            mean, var = _f64(running_mean), _f64(running_var)
        stats["bn"] = (_cview(mean, x.ndim), _cview(var, x.ndim))
    wm, wv = softmax(mean_logits), softmax(var_logits)
    mu = sum(wm[i] * stats[b][0] for i, b in enumerate(branches))
    var = sum(wv[i] * stats[b][1] for i, b in enumerate(branches))
    y = (x - mu) / np.sqrt(var + eps) * _cview(weight, x.ndim) + _cview(bias, x.ndim)
    return y, buffers


# ---- conditional BN / IN --------------------------------------------------------------------

def mlp(e, layers):
    """Linear layers [(W (out, in), b (out,)), ...] with ReLU between them."""
    h = _f64(e)
    for i, (w, b) in enumerate(layers):
        if i:
            h = np.maximum(h, 0.0)
        h = h @ _f64(w).T + _f64(b)
    return h


def param_free_batch_norm(x, eps, training, running_mean=None, running_var=None, num_batches=0,
                          momentum=0.1, track_running_stats=True):
    """(x_hat, new buffers dict) of BN without affine parameters."""
    x = _f64(x)
    if training or not track_running_stats:
        mean, var, count = bn_batch_stats(x)
        buffers = {}
        if training and track_running_stats:
            rm, rv, nb = ema_update(running_mean, running_var, num_batches, mean, var, count, momentum)
            buffers = {"running_mean": rm, "running_var": rv, "num_batches_tracked": np.float64(nb)}
        return batch_norm_with(x, mean, var, eps), buffers
    return batch_norm_with(x, running_mean, running_var, eps), {}


def conditional_affine(x_hat, gamma, beta):
    """x_hat * gamma[n, c] + beta[n, c] with per-sample (N, C) gamma and beta."""
    x_hat = _f64(x_hat)
    return x_hat * _sview(gamma, x_hat.ndim) + _sview(beta, x_hat.ndim)


def style_params(table_gamma, table_beta, style):
    """Rows of the (S, C) tables for integer indices (N,), or mixes for weights (N, S)."""
    style = np.asarray(style)
    if np.issubdtype(style.dtype, np.integer):
        return _f64(table_gamma)[style], _f64(table_beta)[style]
    w = _f64(style)
    return w @ _f64(table_gamma), w @ _f64(table_beta)


def conditional_instance_norm(x, table_gamma, table_beta, style, eps):
    g, b = style_params(table_gamma, table_beta, style)
    return conditional_affine(instance_norm(x, eps), g, b)


# ---- AdaIN ----------------------------------------------------------------------------------

def adaptive_instance_norm(content, style, eps, alpha=1.0):
    """sigma(y) (x - mu(x)) / sigma(x) + mu(y), sigma = sqrt(biased var over spatial + eps);
    content-style trade-off: alpha * that + (1 - alpha) * x."""
    x, y = _f64(content), _f64(style)
    mx, vx = moments(x, tuple(range(2, x.ndim)))
    my, vy = moments(y, tuple(range(2, y.ndim)))
    return alpha * (np.sqrt(vy + eps) * (x - mx) / np.sqrt(vx + eps) + my) + (1 - alpha) * x


# ---- SPADE ----------------------------------------------------------------------------------

def nearest_resize(m, size):
    """torch ``F.interpolate(mode="nearest")`` to ``size``: src = floor(dst * in / out)."""
    m = _f64(m)
    (h_in, w_in), (h_out, w_out) = m.shape[2:], size
    rows = (np.arange(h_out) * h_in) // h_out
    cols = (np.arange(w_out) * w_in) // w_out
    return m[:, :, rows][:, :, :, cols]


def conv2d_same(x, w, b):
    """Cross-correlation of x (N, C, H, W) with w (O, C, k, k) (k odd), zero padding k // 2,
    plus bias: out[n, o, i, j] = b[o] + sum_{c,u,v} w[o, c, u, v] x_pad[n, c, i + u, j + v]."""
    x, w = _f64(x), _f64(w)
    k = w.shape[2]
    p = k // 2
    n, _, h, wd = x.shape
    xp = np.zeros((n, x.shape[1], h + 2 * p, wd + 2 * p))
    xp[:, :, p:p + h, p:p + wd] = x
    out = np.zeros((n, w.shape[0], h, wd))
    for u in range(k):
        for v in range(w.shape[3]):
            out += np.einsum("oc,nchw->nohw", w[:, :, u, v], xp[:, :, u:u + h, v:v + wd])
    return out + _f64(b).reshape(1, -1, 1, 1)


def spade(x, segmap, shared, gamma, beta, norm, eps, training=False, running_mean=None,
          running_var=None, num_batches=0, momentum=0.1, track_running_stats=True):
    """SPADE; ``shared``/``gamma``/``beta`` are (weight, bias) of the three convs. Returns
    (y, new buffers dict)."""
    x = _f64(x)
    if norm == "batch":
        x_hat, buffers = param_free_batch_norm(x, eps, training, running_mean, running_var,
                                               num_batches, momentum, track_running_stats)
    else:
        x_hat, buffers = instance_norm(x, eps), {}
    m = nearest_resize(segmap, x.shape[2:])
    a = np.maximum(conv2d_same(m, *shared), 0.0)
    return x_hat * (1 + conv2d_same(a, *gamma)) + conv2d_same(a, *beta), buffers
