"""``normexport::FilterResponseNorm``: the exported form of FRN (+TLU).

Contract (domain ``normexport``, version 1):
  inputs   X (N, C, *spatial), rank >= 3, or with channels_last=1 X (N, *spatial, C) (C the
           LAST dim); gamma, beta, tau: C elements each (tau is read only when tlu=1); all of
           type T in {float, float16} (CPU kernel: also double)
  attrs    eps: float = 1e-6 (the effective epsilon), tlu: int = 1,
           channels_last: int = 0 (0 or 1; anything else is an error): the layout of X and Y.
           Exported layers (channels first) use 0.
  output   Y, shape, layout and type of X
  math     Y = max(gamma * X / sqrt(mean_spatial(X^2) + eps) + beta, tau)   (max only if tlu)
The function body computes in float64 and casts back to T (the fallback is exact to T's rounding,
whatever ORT's reduction order), for either layout (X viewed as (N, A, C, B): channels first
A = 1, B = prod(spatial); channels last A = prod(spatial), B = 1; nu2 over axes 1, 3); a
gamma/beta of another length than C, or a channels_last other than 0/1, fails a Reshape in
the body. The kernels accumulate in float.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as _op
from onnx import TensorProto

from ..nn.frn import _FilterResponseNormNd, filter_response_norm
from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody, channel_layout

OP_TYPE = "FilterResponseNorm"



@torch.library.custom_op("normexport::filter_response_norm", mutates_args=())
def frn_op(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, tau: torch.Tensor,
           eps: float, tlu: int) -> torch.Tensor:
    return filter_response_norm(x, gamma, beta, tau if tlu else None, eps)


@frn_op.register_fake
def _(x, gamma, beta, tau, eps, tlu):
    return torch.empty_like(x)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def frn_translation(x, gamma, beta, tau, eps: float, tlu: int) -> FLOAT:
    return _nx.FilterResponseNorm(x, gamma, beta, tau, eps=eps, tlu=tlu)


def frn_call(module: _FilterResponseNormNd, x: torch.Tensor) -> torch.Tensor:
    """Call the custom op with a layer's eval-time parameters (used during export)."""
    eps = module.effective_eps()
    eps = float(eps.detach().reshape(()).item()) if isinstance(eps, torch.Tensor) else float(eps)
    tau = module.tau if module.tau is not None else torch.zeros_like(module.weight)
    return torch.ops.normexport.filter_response_norm(x, module.weight, module.bias, tau, eps,
                                                     int(module.tlu))


def frn_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    # (N, A, C, B): channels first (N, 1, C, S), channels last (N, S, C, 1)
    shp, n, c, a, b = channel_layout(f, "X")
    x4 = f.reshape(f.double("X"), f.op("Concat", n, a, c, b, axis=0))
    nu2 = f.op("ReduceMean", f.op("Mul", x4, x4), f.const_i64([1, 3]), keepdims=1)
    eps = f.op("Cast", f.attr_const("eps", "float"), to=TensorProto.DOUBLE)
    xh = f.op("Div", x4, f.op("Sqrt", f.op("Add", nu2, eps)))
    # gamma / beta as (C, 1), a length other than C fails the Reshape; tau (ignored unless
    # tlu=1, so unchecked) as (-1, 1)
    tau = f.op("Reshape", f.double("tau"), f.const_i64([-1, 1]))
    y = f.op("Add", f.op("Mul", xh, f.per_channel("gamma", c)), f.per_channel("beta", c))
    use_tlu = f.op("Cast", f.attr_const("tlu", "int"), to=TensorProto.BOOL)
    z = f.op("Where", use_tlu, f.op("Max", y, tau), y)
    f.op("CastLike", f.reshape(z, shp), "X", out="Y")
    return f.build(["X", "gamma", "beta", "tau"], ["Y"], opset, {"eps": 1e-6, "tlu": 1, "channels_last": 0},
                   doc=__doc__)


#: The overload the exporter sees in the traced graph (key of the translation table).
FRN_OVERLOAD = torch.ops.normexport.filter_response_norm.default
