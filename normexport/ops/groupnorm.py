"""``normexport::GroupNorm``: the exported form of Group Normalization (torch ``nn.GroupNorm``).

Contract (domain ``normexport``, version 1):
  inputs   X (N, C, *spatial), rank >= 2 (rank 2: one value per channel), or with
           channels_last=1 X (N, *spatial, C) (C the LAST dim); scale, bias: C elements each (a
           layer without affine passes ones / zeros); all of type T in {float, float16} (CPU
           kernel: also double)
  attrs    num_groups: int (required; C % num_groups == 0), epsilon: float = 1e-5,
           activation: int = 0, a fused activation applied after the affine:
           0 none, 1 ReLU, 2 SiLU (y * sigmoid(y)); the function body implements all three
           (an int, not a string: comparing strings in a body needs opset 19, the bodies
           target 18). Exported layers use 0 (nn.GroupNorm has no activation); fusing a
           following ReLU/SiLU into the node is left to a graph pass.
           channels_last: int = 0 (0 or 1; anything else is an error): the layout of X and Y.
           Exported layers (channels first) use 0.
  output   Y, shape, layout and type of X
  math     per sample n and group g of C/num_groups consecutive channels:
             mu, var = mean and biased variance of X[n, group g, ...]
             Y[n, c] = act(scale[c] * (X[n, c] - mu) / sqrt(var + epsilon) + bias[c])
Unlike ONNX GroupNormalization-18 (scale/bias per group), scale and bias are per channel (as
torch and GroupNormalization-21). The function body computes in float64 and casts back to T,
for any rank and either layout (X viewed as (N, A, G, C/G, B): channels first A = 1, B =
prod(spatial); channels last A = prod(spatial), B = 1; statistics over axes 1, 3, 4); a
channel count that num_groups does not divide, a scale/bias of another length, or a
channels_last other than 0/1 fails a Reshape in the body (no silent broadcast).
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
import torch.nn.functional as F
from onnxscript import FLOAT
from onnxscript import opset18 as _op
from torch import nn

from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody, channel_layout

OP_TYPE = "GroupNorm"
ACTIVATIONS = {0: "none", 1: "relu", 2: "silu"}


def _activate(y: torch.Tensor, activation: int) -> torch.Tensor:
    if activation == 1:
        return torch.relu(y)
    if activation == 2:
        return F.silu(y)
    if activation != 0:
        raise ValueError(f"normexport::GroupNorm: activation must be one of {ACTIVATIONS}, got {activation}")
    return y


@torch.library.custom_op("normexport::group_norm", mutates_args=())
def gn_op(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, num_groups: int,
          epsilon: float, activation: int) -> torch.Tensor:
    return _activate(F.group_norm(x, num_groups, scale, bias, epsilon), activation)


@gn_op.register_fake
def _(x, scale, bias, num_groups, epsilon, activation):
    return torch.empty_like(x)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def gn_translation(x, scale, bias, num_groups: int, epsilon: float, activation: int) -> FLOAT:
    return _nx.GroupNorm(x, scale, bias, num_groups=num_groups, epsilon=epsilon, activation=activation)


def gn_call(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Call the custom op with a layer's eval-time parameters (used during export)."""
    c = module.num_channels
    scale = module.weight if module.weight is not None else x.new_ones(c)
    bias = module.bias if module.bias is not None else x.new_zeros(c)
    return torch.ops.normexport.group_norm(x, scale, bias, module.num_groups, float(module.eps), 0)


def gn_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    shp, n, c, a, b = channel_layout(f, "X")
    g = f.reshape(f.attr_const("num_groups", "int"), f.const_i64([1]))
    # (N, A, G, C/G, B): with C % G != 0 (or G <= 0) the element count differs and the Reshape
    # fails (the divisor is max(G, 1): an integer division by 0 would crash, not fail)
    per_group = f.op("Div", c, f.op("Max", g, f.const_i64([1])))
    x5 = f.reshape(f.double("X"), f.op("Concat", n, a, g, per_group, b, axis=0))
    axes = f.const_i64([1, 3, 4])
    d = f.op("Sub", x5, f.op("ReduceMean", x5, axes, keepdims=1))
    var = f.op("ReduceMean", f.op("Mul", d, d), axes, keepdims=1)
    eps = f.op("Cast", f.attr_const("epsilon", "float"), to=onnx.TensorProto.DOUBLE)
    xh = f.op("Div", d, f.op("Sqrt", f.op("Add", var, eps)))

    def per_channel(name):  # (G, C/G, 1); a length other than C fails the Reshape
        return f.reshape(f.double(name), f.op("Concat", g, per_group, f.const_i64([1]), axis=0))

    y = f.op("Add", f.op("Mul", xh, per_channel("scale")), per_channel("bias"))
    act = f.attr_const("activation", "int")
    silu = f.op("Mul", y, f.op("Sigmoid", y))
    y = f.op("Where", f.op("Equal", act, f.const_i64([1])), f.op("Relu", y),
             f.op("Where", f.op("Equal", act, f.const_i64([2])), silu, y))
    f.op("CastLike", f.reshape(y, shp), "X", out="Y")
    return f.build(["X", "scale", "bias"], ["Y"], opset, {"epsilon": 1e-5, "activation": 0, "channels_last": 0},
                   doc=__doc__, required=["num_groups"])


#: The overload the exporter sees in the traced graph (key of the translation table).
GN_OVERLOAD = torch.ops.normexport.group_norm.default
