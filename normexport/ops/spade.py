"""``normexport::SPADE``: the normalize + modulate part of SPADE (``normexport.nn.spade``);
the layer's resize and convs (mlp_shared, mlp_gamma, mlp_beta) stay standard ONNX
(Resize, Conv, Relu) and feed the node.

Contract (domain ``normexport``, version 1):
  inputs   X (N, C, *spatial), rank >= 3; gamma_map, beta_map: the convs' outputs, shape of
           X; running_mean, running_var: C elements each, read only when mode=0 (an IN-mode
           layer passes zeros / ones); all of type T in {float, float16}
  attrs    epsilon: float = 1e-5, mode: int = 0 (0 "batch": parameter-free BN with running
           statistics, its eval form; 1 "instance": parameter-free IN, statistics of X[n, c]
           over the spatial dims, biased variance)
  output   Y, shape and type of X
  math     X_hat = (X - mu) / sqrt(var + epsilon)   (mu, var per mode)
           Y     = X_hat * (1 + gamma_map) + beta_map
An int mode, not a string: comparing strings in a body needs opset 19, the bodies target 18.
A BN-mode layer without running statistics normalises with batch statistics in eval, which
no per-sample graph reproduces: export refuses it. The function body computes in float64 and
casts back to T.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
import torch.nn.functional as F
from onnxscript import FLOAT
from onnxscript import opset18 as _op

from ..nn._bn_branch import channel_view, check_input, instance_normalize
from ..nn.spade import SPADE
from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody

OP_TYPE = "SPADE"
MODES = {"batch": 0, "instance": 1}


@torch.library.custom_op("normexport::spade", mutates_args=())
def spade_op(x: torch.Tensor, gamma_map: torch.Tensor, beta_map: torch.Tensor,
             running_mean: torch.Tensor, running_var: torch.Tensor, epsilon: float, mode: int
             ) -> torch.Tensor:
    if mode == MODES["instance"]:
        x_hat = instance_normalize(x, epsilon)
    elif mode == MODES["batch"]:
        x_hat = (x - channel_view(running_mean, x.dim())) * torch.rsqrt(channel_view(running_var, x.dim()) + epsilon)
    else:
        raise ValueError(f"normexport::SPADE: mode must be one of {MODES}, got {mode}")
    return x_hat * (1 + gamma_map) + beta_map


@spade_op.register_fake
def _(x, gamma_map, beta_map, running_mean, running_var, epsilon, mode):
    return torch.empty_like(x)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def spade_translation(x, gamma_map, beta_map, running_mean, running_var, epsilon: float,
                      mode: int) -> FLOAT:
    return _nx.SPADE(x, gamma_map, beta_map, running_mean, running_var, epsilon=epsilon, mode=mode)


def spade_call(module: SPADE, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
    """The layer's resize and convs as torch ops (traced to standard ONNX), then the custom op
    for normalize + modulate (used during export)."""
    name = type(module).__name__
    check_input(name, x, 4, module.num_features)
    check_input(name, segmap, 4, module.label_nc, what="segmap")
    norm = module.param_free_norm
    if module.norm == "batch" and not norm.track_running_stats:
        raise ValueError(f"{name}: norm='batch' without running statistics (track_running_stats="
                         f"False) normalises with batch statistics in eval mode; an exported graph "
                         f"must not mix samples: keep running statistics or use norm='instance'")
    c = module.num_features
    rm = norm.running_mean if module.norm == "batch" else x.new_zeros(c)
    rv = norm.running_var if module.norm == "batch" else x.new_ones(c)
    actv = module.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
    return torch.ops.normexport.spade(x, module.mlp_gamma(actv), module.mlp_beta(actv), rm, rv,
                                      float(norm.eps), MODES[module.norm])


def spade_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    shp, n, c, s = f.split_shape("X")
    x3 = f.reshape(f.double("X"), f.op("Concat", n, c, s, axis=0))                # (N, C, S)
    axis2 = f.const_i64([2])
    mean_in = f.op("ReduceMean", x3, axis2, keepdims=1)                          # (N, C, 1)
    d = f.op("Sub", x3, mean_in)
    var_in = f.op("ReduceMean", f.op("Mul", d, d), axis2, keepdims=1)
    is_in = f.op("Equal", f.attr_const("mode", "int"), f.const_i64([1]))
    mean = f.op("Where", is_in, mean_in, f.per_channel("running_mean", c))
    var = f.op("Where", is_in, var_in, f.per_channel("running_var", c))
    eps = f.op("Cast", f.attr_const("epsilon", "float"), to=onnx.TensorProto.DOUBLE)
    xh = f.op("Div", f.op("Sub", x3, mean), f.op("Sqrt", f.op("Add", var, eps)))
    xh = f.reshape(xh, shp)
    one = f.op("Cast", f.const_i64([1]), to=onnx.TensorProto.DOUBLE)
    # the maps must have X's element count: reshaped to X's shape, not broadcast silently
    gamma, beta = (f.reshape(f.double(m), shp) for m in ("gamma_map", "beta_map"))
    y = f.op("Add", f.op("Mul", xh, f.op("Add", one, gamma)), beta)
    f.op("CastLike", y, "X", out="Y")
    return f.build(["X", "gamma_map", "beta_map", "running_mean", "running_var"], ["Y"], opset,
                   {"epsilon": 1e-5, "mode": 0}, doc=__doc__)


#: The overload the exporter sees in the traced graph (key of the translation table).
SPADE_OVERLOAD = torch.ops.normexport.spade.default
