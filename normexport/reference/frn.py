"""Float64 numpy reference of Filter Response Norm + TLU, written from the paper's formula
(independent of the torch layer and of the kernels)."""

import numpy as np


def filter_response_norm(x, gamma, beta, tau=None, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    axes = tuple(range(2, x.ndim))
    nu2 = np.mean(x * x, axis=axes, keepdims=True)
    y = np.asarray(gamma, np.float64).reshape(shape) * (x / np.sqrt(nu2 + float(eps))) \
        + np.asarray(beta, np.float64).reshape(shape)
    if tau is not None:
        y = np.maximum(y, np.asarray(tau, np.float64).reshape(shape))
    return y
