"""``normexport::PositionalNorm``: the exported form of PONO (``normexport.nn.pono``).

Contract (domain ``normexport``, version 1):
  inputs   X (N, C, *spatial), rank >= 3, of type T in {float, float16}
  attrs    epsilon: float = 1e-5, unbiased: int = 1 (1: variance divisor C - 1, the official
           PyTorch code, needs C >= 2; 0: divisor C, the paper / TF form)
  outputs  Y (shape of X), Mean and Std (N, 1, *spatial), all of type T
  math     per sample n and position p, over the channels:
             Mean[n, 0, p] = mean_c X[n, c, p]
             Std[n, 0, p]  = sqrt(sum_c (X[n, c, p] - Mean)^2 / (C - unbiased) + epsilon)
             Y[n, c, p]    = (X[n, c, p] - Mean[n, 0, p]) / Std[n, 0, p]
The layer's optional per-position affine (official PyTorch PONO: gamma, beta of the spatial
shape, shared over channels) is not part of the node: ``pono_call`` applies it after the node
with torch ops, exported as standard Mul / Add on Y (PONO itself has no parameters, NORMS.md
row 14; Mean and Std, which the moment shortcut re-injects, do not depend on the affine).
The function body computes in float64 and casts back to T; with unbiased=1 and C = 1 it gives
NaN (0 / 0; the layer refuses C = 1 then).
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as _op

from ..nn.pono import PositionalNorm, positional_norm
from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody

OP_TYPE = "PositionalNorm"


@torch.library.custom_op("normexport::positional_norm", mutates_args=())
def pono_op(x: torch.Tensor, epsilon: float, unbiased: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return positional_norm(x, epsilon, bool(unbiased))


@pono_op.register_fake
def _(x, epsilon, unbiased):
    moments = (x.shape[0], 1, *x.shape[2:])
    return torch.empty_like(x), x.new_empty(moments), x.new_empty(moments)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def pono_translation(x, epsilon: float, unbiased: int) -> tuple[FLOAT, FLOAT, FLOAT]:
    y, mean, std = _nx.PositionalNorm(x, epsilon=epsilon, unbiased=unbiased)
    return y, mean, std


def pono_call(module: PositionalNorm, x: torch.Tensor):
    """The custom op with the layer's eps / variance choice, then the layer's per-position
    affine (if any) as torch ops (used during export)."""
    if x.dim() < 3:
        raise ValueError(f"{type(module).__name__}: expected input (N, C, *spatial) with at least "
                         f"one spatial dim, got shape {tuple(x.shape)}")
    y, mean, std = torch.ops.normexport.positional_norm(x, float(module.eps), int(module.unbiased))
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y, mean, std


def pono_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    shp, n, c, s = f.split_shape("X")
    x3 = f.reshape(f.double("X"), f.op("Concat", n, c, s, axis=0))               # (N, C, S)
    axis1 = f.const_i64([1])
    mean = f.op("ReduceMean", x3, axis1, keepdims=1)                             # (N, 1, S)
    d = f.op("Sub", x3, mean)
    count = f.op("Sub", f.op("Cast", c, to=onnx.TensorProto.DOUBLE),
                 f.op("Cast", f.attr_const("unbiased", "int"), to=onnx.TensorProto.DOUBLE))
    var = f.op("Div", f.op("ReduceSum", f.op("Mul", d, d), axis1, keepdims=1), count)
    eps = f.op("Cast", f.attr_const("epsilon", "float"), to=onnx.TensorProto.DOUBLE)
    std = f.op("Sqrt", f.op("Add", var, eps))
    f.op("CastLike", f.reshape(f.op("Div", d, std), shp), "X", out="Y")
    moments = f.op("Concat", n, f.const_i64([1]),
                   f.op("Slice", shp, f.const_i64([2]), f.const_i64([2**62])), axis=0)
    f.op("CastLike", f.reshape(mean, moments), "X", out="Mean")
    f.op("CastLike", f.reshape(std, moments), "X", out="Std")
    return f.build(["X"], ["Y", "Mean", "Std"], opset, {"epsilon": 1e-5, "unbiased": 1}, doc=__doc__)


#: The overload the exporter sees in the traced graph (key of the translation table).
PONO_OVERLOAD = torch.ops.normexport.positional_norm.default
