"""Float64 numpy reference of Positional Normalization and the Moment Shortcut (Li et al.
2019), written from the paper and the official code's formulas: per sample and position,
over the channels; std = sqrt(var + eps), var unbiased (official PyTorch) or biased
(paper/TF)."""

import numpy as np

from ._conv import conv


def positional_norm(x, eps=1e-5, unbiased=True, weight=None, bias=None):
    """Returns (y, mean, std); mean/std of shape (N, 1, *spatial); weight/bias per position."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    mean = x.sum(axis=1, keepdims=True) / c
    var = ((x - mean) ** 2).sum(axis=1, keepdims=True) / (c - 1 if unbiased else c)
    std = np.sqrt(var + eps)
    y = (x - mean) / std
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y, mean, std


def moment_shortcut(x, mean, std):
    """MS: x * std + mean."""
    return np.asarray(x, np.float64) * np.asarray(std, np.float64) + np.asarray(mean, np.float64)


def dynamic_moment_shortcut(x, mean, std, w1, b1, w2, b2):
    """DMS without a hidden norm: h = relu(conv_same(cat(mean, std), w1) + b1),
    (beta, gamma) = split(conv_same(h, w2) + b2) into the first and last C channels,
    y = x * gamma + beta."""
    x = np.asarray(x, np.float64)
    k1, k2 = np.shape(w1)[-1], np.shape(w2)[-1]
    h = conv(np.concatenate([mean, std], axis=1), w1, b1, padding=k1 // 2)
    out = conv(np.maximum(h, 0.0), w2, b2, padding=k2 // 2)
    c = x.shape[1]
    beta, gamma = out[:, :c], out[:, c:]
    return x * gamma + beta
