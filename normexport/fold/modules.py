"""Module-level weight folds and the eval-only modules they produce.

- Weight norm (torch's ``weight_norm`` parametrization on a Linear/Conv): the parametrization is
  removed and the plain weight ``g v / ||v||`` (computed in float64 by
  :func:`formulas.fold_weight_norm`) kept.
- Cosine normalization (:class:`normexport.nn.CosineLinear`, :class:`CosineConv2d`): the
  layer is replaced by :class:`PrenormalizedCosineLinear` / :class:`PrenormalizedCosineConv2d`,
  eval-only modules holding ``w / |w|_eps`` (computed once in float64) as a buffer; at run time
  they compute only the input norm ``|x|_eps`` (the same ops as the training layer), no weight
  normalization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..nn import cosine
from . import formulas


class PrenormalizedCosineLinear(nn.Module):
    """Eval-only form of :class:`normexport.nn.CosineLinear`: ``y = w_hat x / |x|_eps (+ b)``
    with the pre-normalized weight ``w_hat = w / |w|_eps`` as a buffer."""

    def __init__(self, layer: cosine.CosineLinear):
        super().__init__()
        self.in_features, self.out_features, self.eps = layer.in_features, layer.out_features, layer.eps
        self.register_buffer("weight", formulas.normalize_rows(layer.weight, layer.eps))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected input (*, {self.in_features}), got "
                             f"shape {tuple(x.shape)}")
        x_norm = torch.sqrt(x.square().sum(dim=-1, keepdim=True) + self.eps)
        y = F.linear(x, self.weight) / x_norm
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, eps={self.eps}, weight pre-normalized")


class PrenormalizedCosineConv2d(nn.Module):
    """Eval-only form of :class:`normexport.nn.CosineConv2d`: the conv with the pre-normalized
    weight (buffer) divided by ``|x_patch|_eps``, the patch norm computed as in the layer
    (``sqrt(conv(x^2, ones) + eps)``, explicit padding for non-zero padding modes)."""

    def __init__(self, layer: cosine.CosineConv2d):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = layer.in_channels, layer.out_channels, layer.groups
        self.kernel_size, self.stride, self.dilation = layer.kernel_size, layer.stride, layer.dilation
        self.padding, self.padding_mode, self.eps = layer.padding, layer.padding_mode, layer.eps
        self._pad = layer._explicit_padding() if layer.padding_mode != "zeros" else None
        self.register_buffer("weight", formulas.normalize_rows(layer.weight, layer.eps))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.register_buffer("ones", torch.ones(self.groups, self.in_channels // self.groups,
                                                *self.kernel_size, dtype=layer.weight.dtype,
                                                device=layer.weight.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        padding = self.padding
        if self._pad is not None:
            x = F.pad(x, self._pad, mode=self.padding_mode)
            padding = 0
        dot = F.conv2d(x, self.weight, None, self.stride, padding, self.dilation, self.groups)
        x_norm = torch.sqrt(F.conv2d(x.square(), self.ones.to(x.dtype), None, self.stride, padding,
                                     self.dilation, self.groups) + self.eps)
        n, _, ho, wo = dot.shape
        y = (dot.reshape(n, self.groups, self.out_channels // self.groups, ho, wo)
             / x_norm.unsqueeze(2)).reshape(n, self.out_channels, ho, wo)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"padding_mode={self.padding_mode}, eps={self.eps}, weight pre-normalized")


def fold_weight_norm_module(module: nn.Module) -> nn.Module:
    """Remove the weight_norm parametrization of ``module`` in place, keeping the effective
    weight (float64 fold). Returns the module."""
    plist = module.parametrizations["weight"]
    w = formulas.fold_weight_norm(plist.original1, plist.original0, plist[0].dim)
    requires_grad = plist.original1.requires_grad
    # torch's parametrized class is shared by deep copies, and remove_parametrizations deletes
    # the property from that class: give this instance a class of its own first, so that the
    # model the copy was made from keeps its parametrization
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__,
                            {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    module.weight = nn.Parameter(w.to(module.weight.device), requires_grad=requires_grad)
    return module


def prenormalize_cosine(module: nn.Module) -> nn.Module:
    """The eval-only pre-normalized replacement of a cosine layer."""
    if type(module) is cosine.CosineLinear:
        return PrenormalizedCosineLinear(module)
    if type(module) is cosine.CosineConv2d:
        return PrenormalizedCosineConv2d(module)
    raise TypeError(f"prenormalize_cosine: no pre-normalized form of {type(module).__name__}")


#: registry entry name -> in-place fold or replacement: (module) -> module to put in its place
WEIGHT_FOLDS = {
    "weightnorm": fold_weight_norm_module,
    "cosine_linear": prenormalize_cosine,
    "cosine_conv2d": prenormalize_cosine,
}
