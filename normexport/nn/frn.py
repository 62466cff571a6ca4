"""Filter Response Normalization with the Thresholded Linear Unit (NORMS.md row 12).

Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch Dependence in
the Training of Deep Neural Networks", CVPR 2020.

For x of shape (N, C, *spatial):

    nu2[n, c] = mean over spatial of x[n, c]^2          (no mean subtraction)
    x_hat     = x / sqrt(nu2 + eps)
    y         = gamma[c] * x_hat + beta[c]
    z         = max(y, tau[c])                           (TLU; optional here)

Choices where the paper and its official code leave room:
- eps is added to nu2 inside the square root (paper, eq. 1/2; official TF code uses
  ``rsqrt(nu2 + abs(eps))``). With ``learnable_eps=True`` the layer learns eps_l and uses
  ``eps + |eps_l|``: the paper's lower-bounded learned epsilon for 1x1 activations, with
  eps_l initialised to 1e-4 and ``eps`` acting as the lower bound.
- gamma=1, beta=0, tau=0 at init (paper's Algorithm 1 initialisers).
- TLU is fused by default (the paper finds it essential); ``tlu=False`` gives plain FRN.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["filter_response_norm", "FilterResponseNorm1d", "FilterResponseNorm2d",
           "FilterResponseNorm3d", "TLU"]


def _channel_view(p: torch.Tensor, ndim: int) -> torch.Tensor:
    return p.reshape((1, -1) + (1,) * (ndim - 2))


def filter_response_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                         tau: torch.Tensor | None = None, eps: float | torch.Tensor = 1e-6
                         ) -> torch.Tensor:
    """FRN (+ TLU when ``tau`` is given) of ``x`` (N, C, *spatial); params have C elements."""
    if x.dim() < 3:
        raise ValueError(f"filter_response_norm: input must be (N, C, *spatial) with at least "
                         f"one spatial dim, got shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, p in (("gamma", gamma), ("beta", beta), ("tau", tau)):
        if p is not None and p.numel() != c:
            raise ValueError(f"filter_response_norm: {name} has {p.numel()} elements but the "
                             f"input has C={c} channels (shape {tuple(x.shape)})")
    nu2 = x.square().mean(dim=tuple(range(2, x.dim())), keepdim=True)
    y = x * torch.rsqrt(nu2 + eps) * _channel_view(gamma, x.dim()) + _channel_view(beta, x.dim())
    if tau is not None:
        y = torch.maximum(y, _channel_view(tau, x.dim()))
    return y


class _FilterResponseNormNd(nn.Module):
    _spatial_dims = 2

    def __init__(self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False,
                 tlu: bool = True, device=None, dtype=None):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        if eps < 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0, got {eps}")
        fk = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_features, **fk))
        self.bias = nn.Parameter(torch.zeros(num_features, **fk))
        self.tau = nn.Parameter(torch.zeros(num_features, **fk)) if tlu else None
        self.eps_learned = nn.Parameter(torch.full((1,), 1e-4, **fk)) if learnable_eps else None

    @property
    def tlu(self) -> bool:
        return self.tau is not None

    def effective_eps(self) -> float | torch.Tensor:
        """eps as used in forward: a float, or ``eps + |eps_l|`` as a tensor when learned."""
        if self.eps_learned is None:
            return self.eps
        return self.eps + self.eps_learned.abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self._spatial_dims + 2:
            raise ValueError(f"{type(self).__name__}: expected a {self._spatial_dims + 2}-D input "
                             f"(N, C, {'spatial, ' * self._spatial_dims}...), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        return filter_response_norm(x, self.weight, self.bias, self.tau, self.effective_eps())

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, learnable_eps={self.eps_learned is not None}, "
                f"tlu={self.tlu}")


class FilterResponseNorm1d(_FilterResponseNormNd):
    """FRN (+TLU) over (N, C, L)."""
    _spatial_dims = 1


class FilterResponseNorm2d(_FilterResponseNormNd):
    """FRN (+TLU) over (N, C, H, W)."""
    _spatial_dims = 2


class FilterResponseNorm3d(_FilterResponseNormNd):
    """FRN (+TLU) over (N, C, D, H, W)."""
    _spatial_dims = 3


class TLU(nn.Module):
    """Thresholded Linear Unit ``max(x, tau[c])``, for use after a norm other than FRN."""

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.tau = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, _channel_view(self.tau, x.dim()))
