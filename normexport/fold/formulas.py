"""The fold formulas: pure tensor functions, the one implementation normexport has (the module
fold in :mod:`normexport.fold` and a graph-level ONNX pass call these; numpy arrays are
accepted too and converted with ``torch.as_tensor``). In the style of
``torch/nn/utils/fusion.py``, but every computation runs in float64 and only the result is
cast back to the dtype of the weight it replaces (float16 / bfloat16 weights are folded
without intermediate rounding).

Notation: a BN in inference form is a per-channel affine map ``BN(x)_c = s_c x_c + t_c`` with

    s = gamma / sqrt(var + eps),        t = beta - mean * s          (bn_scale_shift)

(gamma = 1, beta = 0 when the BN has no affine parameters). A layer is ``y = W * x + b``
(``*``: matmul for Linear, convolution otherwise).

BN after the layer, ``s (W * x + b) + t``  (exact for any padding, stride, dilation, groups)::

    Linear / Conv:      W'[o, ...]    = s[o] W[o, ...]                      b' = s b + t
    ConvTranspose:      W'[i, j, ...] = s[g(i) C_out/G + j] W[i, j, ...]    b' = s b + t
                        (weight (C_in, C_out/G, k...): dim 1 indexes the output channel
                         within group g(i) = i // (C_in/G))

ONNX Gemm, ``Y = alpha A op(B) + beta C`` (op(B) = B, or B^T with transB = 1; Y (M, N); C
broadcast to (M, N)) is a Linear with weight ``W = op(B)^T`` (N, K) scaled by alpha and bias
``beta C``; the Gemm forms below return a Gemm with alpha = beta = 1 (B' in B's stored layout)::

    BN after (channel = column n):   B' = alpha s W  (as op(B))     C' = s beta C + t   (C' = t without C)
    BN before (channel = column k of A, transA = 0):
                                     B' = alpha W s  (as op(B))     C' = alpha W t + beta C

BN before the layer, ``W * (s x + t) + b``::

    Linear:             W'[o, i] = W[o, i] s[i]                  b'[o] = b[o] + sum_i W[o, i] t[i]
    Conv (groups G):    W'[o, j, k] = W[o, j, k] s[c(o, j)]      b'[o] = b[o] + sum_{j,k} W[o, j, k] t[c(o, j)]
                        with c(o, j) = g(o) C_in/G + j, g(o) = o // (C_out/G)

The conv form assumes every kernel tap of every output position sees an input value, i.e. no
zero padding (padding 0, or reflect / replicate / circular padding, which pad with input
values and therefore commute with a per-channel affine map). With zero padding the padded
taps would see 0 instead of t: the fold is exact only when t = 0. Deciding that is the
caller's job (:mod:`normexport.fold` refuses such folds); these functions only do the algebra.

Weight normalization (Salimans & Kingma 2016, torch's ``weight_norm`` parametrization)::

    W = g v / ||v||     ||v|| over every dim but ``dim`` (g has v's size along ``dim``);
                        dim = -1 / None: one norm over the whole of v (torch's convention)
"""

from __future__ import annotations

import torch

_F64 = torch.float64

__all__ = ["bn_scale_shift", "fold_bn_after_conv", "fold_bn_after_linear", "fold_bn_before_linear",
           "fold_bn_before_conv", "fold_bn_after_gemm", "fold_bn_before_gemm", "fold_weight_norm",
           "normalize_rows"]


def _f64(x) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(x).detach().to(_F64)


def _dtype(w) -> torch.dtype:
    return torch.as_tensor(w).dtype


def bn_scale_shift(mean, var, eps: float, gamma=None, beta=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The BN inference affine map ``(s, t)`` in float64: ``s = gamma / sqrt(var + eps)``,
    ``t = beta - mean s`` (gamma None: 1, beta None: 0)."""
    mean, var = _f64(mean), _f64(var)
    s = torch.rsqrt(var + float(eps))
    if gamma is not None:
        s = s * _f64(gamma)
    t = -mean * s
    if beta is not None:
        t = t + _f64(beta)
    return s, t


def _out_bias(b, s, t) -> torch.Tensor:
    b = _f64(b)
    return t if b is None else s * b + t


def fold_bn_after_conv(w, b, s, t, *, transposed: bool = False, groups: int = 1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN(conv(x))`` as one conv: ``(W', b')`` for a Conv (weight (C_out, C_in/G, k...)) or,
    with ``transposed``, a ConvTranspose (weight (C_in, C_out/G, k...)); ``b`` may be None.
    Float64 inside, cast back to the weight's dtype."""
    dtype = _dtype(w)
    w64, s, t = _f64(w), _f64(s), _f64(t)
    k = (1,) * (w64.dim() - 2)
    if transposed:
        c_in, c_out_g = w64.shape[:2]
        if c_in % groups or s.numel() != c_out_g * groups:
            raise ValueError(f"fold_bn_after_conv: ConvTranspose weight {tuple(w64.shape)} with "
                             f"groups={groups} does not give {s.numel()} output channels")
        w_new = (w64.reshape(groups, c_in // groups, c_out_g, *w64.shape[2:])
                 * s.reshape(groups, 1, c_out_g, *k)).reshape(w64.shape)
    else:
        if s.numel() != w64.shape[0]:
            raise ValueError(f"fold_bn_after_conv: weight {tuple(w64.shape)} has {w64.shape[0]} "
                             f"output channels, the BN {s.numel()}")
        w_new = w64 * s.reshape(-1, 1, *k)
    return w_new.to(dtype), _out_bias(b, s, t).to(dtype)


def fold_bn_after_linear(w, b, s, t) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN1d(linear(x))`` (x of shape (N, in)) as one Linear: ``(W', b')``."""
    dtype = _dtype(w)
    w64, s, t = _f64(w), _f64(s), _f64(t)
    if s.numel() != w64.shape[0]:
        raise ValueError(f"fold_bn_after_linear: weight {tuple(w64.shape)} has {w64.shape[0]} "
                         f"output features, the BN {s.numel()}")
    return (w64 * s[:, None]).to(dtype), _out_bias(b, s, t).to(dtype)


def fold_bn_before_linear(w, b, s, t) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear(BN1d(x))`` (x of shape (N, in)) as one Linear: ``(W', b')``."""
    dtype = _dtype(w)
    w64, s, t = _f64(w), _f64(s), _f64(t)
    if s.numel() != w64.shape[1]:
        raise ValueError(f"fold_bn_before_linear: weight {tuple(w64.shape)} has {w64.shape[1]} "
                         f"input features, the BN {s.numel()}")
    b_new = w64 @ t
    if b is not None:
        b_new = b_new + _f64(b)
    return (w64 * s[None, :]).to(dtype), b_new.to(dtype)


def fold_bn_before_conv(w, b, s, t, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv(BN(x))`` as one conv (weight (C_out, C_in/G, k...)): ``(W', b')``. Exact only
    without zero padding (or with t = 0), see the module docstring."""
    dtype = _dtype(w)
    w64, s, t = _f64(w), _f64(s), _f64(t)
    c_out, c_in_g = w64.shape[:2]
    if c_out % groups or s.numel() != c_in_g * groups:
        raise ValueError(f"fold_bn_before_conv: weight {tuple(w64.shape)} with groups={groups} "
                         f"does not take {s.numel()} input channels")
    k = (1,) * (w64.dim() - 2)

    def per_tap(v):  # (C_out, C_in/G): the input channel seen by W[o, j]
        return v.reshape(groups, 1, c_in_g).expand(groups, c_out // groups, c_in_g).reshape(c_out, c_in_g)

    w_new = w64 * per_tap(s).reshape(c_out, c_in_g, *k)
    b_new = (w64.reshape(c_out, c_in_g, -1).sum(2) * per_tap(t)).sum(1)
    if b is not None:
        b_new = b_new + _f64(b)
    return w_new.to(dtype), b_new.to(dtype)


def _gemm_weight(b, alpha: float, trans_b: bool) -> torch.Tensor:
    """Gemm's B as a float64 Linear weight (N, K) with alpha folded in."""
    b64 = _f64(b)
    if b64.dim() != 2:
        raise ValueError(f"Gemm: B must be 2-D, got shape {tuple(b64.shape)}")
    return (b64 if trans_b else b64.T) * float(alpha)


def fold_bn_after_gemm(b, c, s, t, *, alpha: float = 1.0, beta: float = 1.0, trans_b: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN(alpha A op(B) + beta C)`` (BN over Y's columns) as ``A op(B') + C'`` (a Gemm with
    alpha = beta = 1 and the same transB): ``(B', C')`` in B's dtype; ``c`` may be None and of
    any shape that broadcasts to (M, N) (C' then has the broadcast of C's shape with (N,))."""
    dtype = _dtype(b)
    w = _gemm_weight(b, alpha, trans_b)
    c64 = None if c is None else _f64(c) * float(beta)
    w_new, c_new = fold_bn_after_linear(w, c64, s, t)   # float64 in, float64 out
    return (w_new if trans_b else w_new.T).contiguous().to(dtype), c_new.to(dtype)


def fold_bn_before_gemm(b, c, s, t, *, alpha: float = 1.0, beta: float = 1.0, trans_b: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha BN(A) op(B) + beta C`` (A (M, K), transA = 0, BN over A's columns) as
    ``A op(B') + C'`` (alpha = beta = 1, same transB): ``(B', C')`` in B's dtype."""
    dtype = _dtype(b)
    w = _gemm_weight(b, alpha, trans_b)
    c64 = None if c is None else _f64(c) * float(beta)
    w_new, c_new = fold_bn_before_linear(w, c64, s, t)
    return (w_new if trans_b else w_new.T).contiguous().to(dtype), c_new.to(dtype)


def fold_weight_norm(v, g, dim: int | None = 0) -> torch.Tensor:
    """The plain weight ``g v / ||v||`` of a weight-normed layer (torch's ``_weight_norm``
    convention for ``dim``), in v's dtype."""
    dtype = _dtype(v)
    v64, g64 = _f64(v), _f64(g)
    if dim is None or dim == -1:
        norm = v64.square().sum().sqrt()
    else:
        d = dim % v64.dim()
        norm = v64.square().sum(dim=[a for a in range(v64.dim()) if a != d], keepdim=True).sqrt()
    return (g64 * v64 / norm).to(dtype)


def normalize_rows(w, eps: float) -> torch.Tensor:
    """``w / sqrt(sum of squares over all dims but 0 + eps)`` (cosine normalization's weight,
    computed once), in w's dtype."""
    dtype = _dtype(w)
    w64 = _f64(w)
    dims = tuple(range(1, w64.dim()))
    return (w64 * torch.rsqrt(w64.square().sum(dim=dims, keepdim=True) + float(eps))).to(dtype)
