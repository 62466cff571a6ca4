"""``normexport::AdaIN``: the exported form of Adaptive Instance Normalization
(``normexport.nn.adain``).

Contract (domain ``normexport``, version 1):
  inputs   content (N, C, *spatial), style (N, C, *spatial'): same rank (>= 3), batch and
           channels, spatial sizes may differ; with channels_last=1 content (N, *spatial, C),
           style (N, *spatial', C) (C the LAST dim); both of type T in {float, float16} (CPU
           kernel: also double)
  attrs    epsilon: float = 1e-5, alpha: float = 1.0 (content-style trade-off, in [0, 1]),
           channels_last: int = 0 (0 or 1; anything else is an error): the layout of content,
           style and Y. Exported layers (channels first) use 0.
  output   Y, shape, layout and type of content
  math     per sample n and channel c, over the spatial dims (biased variance):
             sigma(t) = sqrt(var(t[n, c]) + epsilon)
             A = sigma(style) * (content - mean(content)) / sigma(content) + mean(style)
             Y = alpha * A + (1 - alpha) * content
The function body computes in float64 and casts back to T, for either layout (content and
style viewed as (N, A, C, B): channels first A = 1, B = prod(spatial); channels last
A = prod(spatial), B = 1; moments over axes 1, 3); a channels_last other than 0/1 fails a
Reshape in the body.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as _op

from ..nn.adain import AdaIN, _adain, _check
from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody, channel_layout

OP_TYPE = "AdaIN"


@torch.library.custom_op("normexport::adain", mutates_args=())
def adain_op(content: torch.Tensor, style: torch.Tensor, epsilon: float, alpha: float) -> torch.Tensor:
    return _adain(content, style, epsilon, alpha)


@adain_op.register_fake
def _(content, style, epsilon, alpha):
    return torch.empty_like(content)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def adain_translation(content, style, epsilon: float, alpha: float) -> FLOAT:
    return _nx.AdaIN(content, style, epsilon=epsilon, alpha=alpha)


def adain_call(module: AdaIN, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Call the custom op with the layer's eps and alpha (used during export)."""
    _check(type(module).__name__, content, style, module.num_features)
    return torch.ops.normexport.adain(content, style, float(module.eps), float(module.alpha))


def adain_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    # (N, A, C, B): channels first (N, 1, C, S), channels last (N, S, C, 1); style with content's
    # N and C and its own spatial size
    shp, n, c, a_content, b_content = channel_layout(f, "content")
    _, _, _, a_style, b_style = channel_layout(f, "style")
    eps = f.op("Cast", f.attr_const("epsilon", "float"), to=onnx.TensorProto.DOUBLE)
    axes = f.const_i64([1, 3])

    def moments(t):
        mean = f.op("ReduceMean", t, axes, keepdims=1)
        d = f.op("Sub", t, mean)
        sigma = f.op("Sqrt", f.op("Add", f.op("ReduceMean", f.op("Mul", d, d), axes, keepdims=1), eps))
        return mean, d, sigma

    x3 = f.reshape(f.double("content"), f.op("Concat", n, a_content, c, b_content, axis=0))
    y3 = f.reshape(f.double("style"), f.op("Concat", n, a_style, c, b_style, axis=0))
    _, dx, sigma_x = moments(x3)
    mean_y, _, sigma_y = moments(y3)
    a = f.op("Add", f.op("Mul", f.op("Div", sigma_y, sigma_x), dx), mean_y)
    alpha = f.op("Cast", f.attr_const("alpha", "float"), to=onnx.TensorProto.DOUBLE)
    one_minus = f.op("Sub", f.op("CastLike", f.const_i64([1]), alpha), alpha)
    y = f.op("Add", f.op("Mul", alpha, a), f.op("Mul", one_minus, x3))
    f.op("CastLike", f.reshape(y, shp), "content", out="Y")
    return f.build(["content", "style"], ["Y"], opset, {"epsilon": 1e-5, "alpha": 1.0, "channels_last": 0},
                   doc=__doc__)


#: The overload the exporter sees in the traced graph (key of the translation table).
ADAIN_OVERLOAD = torch.ops.normexport.adain.default
