"""Float64 numpy references of the batch-statistics family (NORMS.md rows 2-6): BatchNorm
(also Sync BN: the same formula over the global batch), Batch Renormalization, Cross-Iteration
BN and CmBN. Written from the papers' formulas with numpy only; shares no code with the
layers (normexport.nn).

Conventions (those of the layers, see their docstrings): x is (N, C, *); statistics per
channel over every axis but 1; biased variance for normalizing, eps inside the square root;
running statistics ``new = (1 - m) old + m batch`` with the *unbiased* batch variance and
``m = 1 / num_batches_tracked`` (after its increment) when momentum is None.
Every ``*_train`` function returns ``(y, buffers)`` with the buffers' values after the call.
"""

from __future__ import annotations

import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _ch(v, ndim):
    return _f64(v).reshape((1, -1) + (1,) * (ndim - 2))


def batch_stats(x):
    """(mean, biased var, unbiased var, count) per channel of x (N, C, *)."""
    x = _f64(x)
    ax = _axes(x)
    count = x.size // x.shape[1]
    return x.mean(axis=ax), x.var(axis=ax), x.var(axis=ax, ddof=1), count


def affine(xhat, weight, bias):
    if weight is None:
        return xhat
    return xhat * _ch(weight, xhat.ndim) + _ch(bias, xhat.ndim)


def running_update(running_mean, running_var, num_batches_tracked, mean, unbiased_var, momentum):
    """BN's running-statistic update; returns (mean, var, num_batches_tracked)."""
    nbt = int(num_batches_tracked) + 1
    m = 1.0 / nbt if momentum is None else float(momentum)
    return ((1 - m) * _f64(running_mean) + m * _f64(mean),
            (1 - m) * _f64(running_var) + m * _f64(unbiased_var), nbt)


def _buffers(rm, rv, nbt):
    return {"running_mean": rm, "running_var": rv, "num_batches_tracked": np.asarray(nbt)}


# ---- BatchNorm (rows 2 and 4) ---------------------------------------------------------------

def batch_norm_eval(x, weight, bias, running_mean, running_var, eps):
    x = _f64(x)
    xhat = (x - _ch(running_mean, x.ndim)) / np.sqrt(_ch(running_var, x.ndim) + eps)
    return affine(xhat, weight, bias)


def batch_norm_train(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                     eps):
    """BN in training mode (torch semantics), on the (global) batch x."""
    x = _f64(x)
    mean, var, uvar, _ = batch_stats(x)
    y = affine((x - _ch(mean, x.ndim)) / np.sqrt(_ch(var, x.ndim) + eps), weight, bias)
    return y, _buffers(*running_update(running_mean, running_var, num_batches_tracked, mean, uvar,
                                       momentum))


# ---- Batch Renormalization (row 3) -----------------------------------------------------------

def batch_renorm_train(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                       eps, r_max, d_max):
    """Ioffe 2017, Algorithm 1, with sigma = sqrt(running_var + eps) and sigma_B =
    sqrt(var_B + eps). Returns (y, buffers, r, d)."""
    x = _f64(x)
    mean, var, uvar, _ = batch_stats(x)
    sigma_b = np.sqrt(var + eps)
    sigma = np.sqrt(_f64(running_var) + eps)
    r = np.clip(sigma_b / sigma, 1.0 / r_max, r_max)
    d = np.clip((mean - _f64(running_mean)) / sigma, -d_max, d_max)
    xhat = (x - _ch(mean, x.ndim)) / _ch(sigma_b, x.ndim) * _ch(r, x.ndim) + _ch(d, x.ndim)
    buffers = _buffers(*running_update(running_mean, running_var, num_batches_tracked, mean, uvar,
                                       momentum))
    return affine(xhat, weight, bias), buffers, r, d


def batch_renorm_grads(x, grad_y, weight, r, d, eps):
    """Gradients of sum(grad_y * y) for Batch Renorm's training forward with r and d held
    constant (the paper's stop_gradient): returns (d x, d weight, d bias). Written from the
    BN backward formula: with x_hat = (x - mu_B) / sigma_B and g = grad_y * weight * r,
    d x = (g - mean(g) - x_hat * mean(g * x_hat)) / sigma_B (means per channel)."""
    x, gy = _f64(x), _f64(grad_y)
    ax = _axes(x)
    mean, var, _, _ = batch_stats(x)
    sigma_b = _ch(np.sqrt(var + eps), x.ndim)
    xhat = (x - _ch(mean, x.ndim)) / sigma_b
    w = np.ones(x.shape[1]) if weight is None else _f64(weight)
    g = gy * _ch(w * _f64(r), x.ndim)
    dx = (g - g.mean(axis=ax, keepdims=True)
          - xhat * (g * xhat).mean(axis=ax, keepdims=True)) / sigma_b
    dw = (gy * (xhat * _ch(r, x.ndim) + _ch(d, x.ndim))).sum(axis=ax)
    return dx, dw, gy.sum(axis=ax)


# ---- CmBN (row 6) ----------------------------------------------------------------------------

def cmbn_train(previous, x, weight, bias, running_mean, running_var, num_batches_tracked,
               momentum, eps, accumulation_steps):
    """YOLOv4 CmBN for mini-batch ``x`` given the list ``previous`` of the mini-batches already
    seen in this accumulation step: x is normalized with the statistics of the concatenation of
    previous + [x]; after the last mini-batch of the step the running statistics are updated
    with those of the whole step. Returns (y, buffers) (running buffers only)."""
    x = _f64(x)
    union = np.concatenate([_f64(p) for p in previous] + [x], axis=0)
    mean, var, uvar, _ = batch_stats(union)
    y = affine((x - _ch(mean, x.ndim)) / np.sqrt(_ch(var, x.ndim) + eps), weight, bias)
    if len(previous) + 1 >= accumulation_steps:
        buffers = _buffers(*running_update(running_mean, running_var, num_batches_tracked, mean,
                                           uvar, momentum))
    else:
        buffers = _buffers(_f64(running_mean), _f64(running_var), int(num_batches_tracked))
    return y, buffers


def cmbn_train_from_state(x, weight, bias, running_mean, running_var, num_batches_tracked,
                          momentum, eps, accumulation_steps, acc_batches, acc_count, acc_mean,
                          acc_var):
    """CmBN for mini-batch x when the step so far is summarised by its count, mean and biased
    variance (the layer's accumulation buffers). Sums of x and x^2 are combined here (a
    different route from the layer's pairwise update). Returns (y, buffers) including the
    accumulation buffers after the call."""
    x = _f64(x)
    ax = _axes(x)
    n_b = x.size // x.shape[1]
    n_a = int(acc_count) if int(acc_batches) else 0
    s1 = n_a * _f64(acc_mean) + x.sum(axis=ax)
    s2 = n_a * (_f64(acc_var) + _f64(acc_mean) ** 2) + (x * x).sum(axis=ax)
    n = n_a + n_b
    mean = s1 / n
    var = s2 / n - mean ** 2
    y = affine((x - _ch(mean, x.ndim)) / np.sqrt(_ch(var, x.ndim) + eps), weight, bias)
    c = x.shape[1]
    if int(acc_batches) + 1 >= accumulation_steps:
        buffers = _buffers(*running_update(running_mean, running_var, num_batches_tracked, mean,
                                           var * n / (n - 1), momentum))
        buffers.update(acc_batches=np.asarray(0), acc_count=np.asarray(0), acc_mean=np.zeros(c),
                       acc_var=np.zeros(c))
    else:
        buffers = _buffers(_f64(running_mean), _f64(running_var), int(num_batches_tracked))
        buffers.update(acc_batches=np.asarray(int(acc_batches) + 1), acc_count=np.asarray(n),
                       acc_mean=mean, acc_var=var)
    return y, buffers


# ---- Cross-Iteration BN (row 5) ------------------------------------------------------------

def cross_iteration_bn_train(x, weight, bias, running_mean, running_var, num_batches_tracked,
                             momentum, eps, window, burn_in, rho, theta, history,
                             grads=None):
    """Yao et al. 2020, eq. 7-10, for the current batch x produced with preceding weight
    ``theta`` (C, ...). ``history``: dict of arrays, newest first, keys mean, sqmean (L, C),
    grad_mean, grad_sqmean, weight (L, *theta.shape). ``grads``: (d mu/d theta,
    d nu/d theta) of the current batch, or None when the layer cannot record this iteration.

    Returns (y, buffers, info): buffers include the history after the call (``hist_*``);
    info has ``constraint_active`` (L, C) booleans, and ``mean``/``var`` used."""
    x = _f64(x)
    theta = _f64(theta)
    c = x.shape[1]
    mean_b, var_b, uvar_b, _ = batch_stats(x)
    nu_b = (x * x).mean(axis=_axes(x))
    hist = {k: (None if v is None else _f64(v)) for k, v in history.items()}
    L = 0 if hist["mean"] is None else hist["mean"].shape[0]
    step = int(num_batches_tracked)
    active = np.zeros((L, c), bool)
    mean, var = mean_b, var_b
    cross = window > 1 and step >= burn_in
    if cross and L:
        mus, nus = [mean_b], [nu_b]
        for j in range(L):
            dtheta = theta - hist["weight"][j]
            mu = hist["mean"][j] + rho * np.array([np.sum(hist["grad_mean"][j][ch] * dtheta[ch])
                                                   for ch in range(c)])
            nu = hist["sqmean"][j] + rho * np.array([np.sum(hist["grad_sqmean"][j][ch] * dtheta[ch])
                                                     for ch in range(c)])
            active[j] = nu < mu ** 2
            mus.append(mu)
            nus.append(np.where(nu < mu ** 2, mu ** 2, nu))
        mean = np.mean(mus, axis=0)
        var = np.mean(nus, axis=0) - mean ** 2
    new_hist = dict(hist)
    if cross and grads is not None:
        entry = {"mean": mean_b, "sqmean": nu_b, "grad_mean": _f64(grads[0]),
                 "grad_sqmean": _f64(grads[1]), "weight": theta}
        for k, v in entry.items():
            old = hist[k] if L else np.zeros((0,) + v.shape)
            new_hist[k] = np.concatenate([v[None], old])[:window - 1]
    y = affine((x - _ch(mean, x.ndim)) / np.sqrt(_ch(var, x.ndim) + eps), weight, bias)
    buffers = _buffers(*running_update(running_mean, running_var, num_batches_tracked, mean_b,
                                       uvar_b, momentum))
    buffers.update({f"hist_{k}": v for k, v in new_hist.items() if v is not None})
    return y, buffers, {"constraint_active": active, "mean": mean, "var": var}


def conv2d(x, w, b=None, padding=1):
    """Stride-1 2-D convolution (cross-correlation) of x (N, Cin, H, W) with w (C, Cin, kh, kw),
    zero padding; returns (y, patches) with patches (N, Cin, kh, kw, Ho, Wo)."""
    x, w = _f64(x), _f64(w)
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    p = np.empty(x.shape[:2] + (kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            p[:, :, i, j] = xp[:, :, i:i + ho, j:j + wo]
    y = np.einsum("oikl,niklhw->nohw", w, p)
    if b is not None:
        y = y + _f64(b).reshape(1, -1, 1, 1)
    return y, p


def conv2d_stat_grads(x, w, b=None, padding=1):
    """Analytic d mu_c / d w[c] and d nu_c / d w[c] (nu = E[y^2]) of the per-channel statistics
    of y = conv2d(x, w, b): d mu_c/d w[c,i,k,l] = mean of the patch values; d nu_c/d w[c] =
    2 mean(y_c * patch). Both (C, Cin, kh, kw)."""
    y, p = conv2d(x, w, b, padding)
    m = y.shape[0] * y.shape[2] * y.shape[3]
    g_mu = np.broadcast_to(p.mean(axis=(0, 4, 5))[None], _f64(w).shape).copy()
    g_nu = 2.0 * np.einsum("nchw,niklhw->cikl", y, p) / m
    return g_mu, g_nu
