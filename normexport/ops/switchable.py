"""``normexport::SwitchableNorm``: the exported (eval) form of Switchable Normalization
(``normexport.nn.switchable``).

Contract (domain ``normexport``, version 1):
  inputs   X (N, C, *spatial), rank >= 2; scale, bias, running_mean, running_var: C elements
           each (running_mean / running_var are read only when using_bn=1; a layer without a
           BN branch passes zeros / ones); mean_weight, var_weight: K elements each, the
           layer's *logits* lambda (the body applies the softmax), one per branch in the order
           IN, LN, BN, where IN is present iff rank >= 3 and BN iff using_bn=1, so
           K = (rank >= 3) + 1 + using_bn (another K fails a Reshape in the body); all of
           type T in {float, float16}
  attrs    epsilon: float = 1e-5, using_bn: int = 1
  output   Y, shape and type of X
  math     IN: mean, biased variance of X[n, c] over the spatial dims
           LN: mean, biased variance of X[n] over (C, *spatial), from the IN statistics by the
               law of total variance (rank 2: over C)
           BN: running_mean, running_var (eval form)
             mu  = sum_k softmax(mean_weight)_k mu_k,  var = sum_k softmax(var_weight)_k var_k
             Y   = scale[c] * (X - mu) / sqrt(var + epsilon) + bias[c]
Logits rather than softmaxed weights: the node's inputs are the layer's parameters as they
are (a kernel takes the softmax of K <= 3 numbers once per call). The function body computes
in float64 and casts back to T.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as _op

from ..nn._bn_branch import channel_view, check_input
from ..nn.switchable import _SwitchableNorm, per_sample_stats
from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody

OP_TYPE = "SwitchableNorm"


def _eval_switchable_norm(x, scale, bias, running_mean, running_var, mean_weight, var_weight,
                          epsilon: float, using_bn: int) -> torch.Tensor:
    has_in = x.dim() > 2
    k = int(has_in) + 1 + int(bool(using_bn))
    if mean_weight.numel() != k or var_weight.numel() != k:
        raise ValueError(f"normexport::SwitchableNorm: expected {k} branch logits (IN: rank >= 3, "
                         f"LN, BN: using_bn) for input rank {x.dim()}, got {mean_weight.numel()} "
                         f"and {var_weight.numel()}")
    means, variances = per_sample_stats(x)
    if using_bn:
        means.append(channel_view(running_mean, x.dim()))
        variances.append(channel_view(running_var, x.dim()))
    wm, wv = torch.softmax(mean_weight, 0), torch.softmax(var_weight, 0)
    mean = sum(wm[i] * m for i, m in enumerate(means))
    var = sum(wv[i] * v for i, v in enumerate(variances))
    y = (x - mean) * torch.rsqrt(var + epsilon)
    return y * channel_view(scale, x.dim()) + channel_view(bias, x.dim())


@torch.library.custom_op("normexport::switchable_norm", mutates_args=())
def sn_op(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
          running_var: torch.Tensor, mean_weight: torch.Tensor, var_weight: torch.Tensor,
          epsilon: float, using_bn: int) -> torch.Tensor:
    return _eval_switchable_norm(x, scale, bias, running_mean, running_var, mean_weight, var_weight,
                                 epsilon, using_bn)


@sn_op.register_fake
def _(x, scale, bias, running_mean, running_var, mean_weight, var_weight, epsilon, using_bn):
    return torch.empty_like(x)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def sn_translation(x, scale, bias, running_mean, running_var, mean_weight, var_weight,
                   epsilon: float, using_bn: int) -> FLOAT:
    return _nx.SwitchableNorm(x, scale, bias, running_mean, running_var, mean_weight, var_weight,
                              epsilon=epsilon, using_bn=using_bn)


def sn_call(module: _SwitchableNorm, x: torch.Tensor) -> torch.Tensor:
    """Call the custom op with a layer's eval-time parameters (used during export)."""
    check_input(type(module).__name__, x, module._spatial_dims + 2, module.num_features)
    c = module.num_features
    rm = module.running_mean if module.using_bn else x.new_zeros(c)
    rv = module.running_var if module.using_bn else x.new_ones(c)
    return torch.ops.normexport.switchable_norm(x, module.weight, module.bias, rm, rv, module.mean_weight,
                                                module.var_weight, float(module.eps), int(module.using_bn))


def sn_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    i64, f64 = onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE
    shp, n, c, s = f.split_shape("X")
    x3 = f.reshape(f.double("X"), f.op("Concat", n, c, s, axis=0))                # (N, C, S)
    axis1, axis2 = f.const_i64([1]), f.const_i64([2])
    # IN (N, C, 1) and LN (N, 1, 1) statistics; rank 2 (S = 1): "IN" is X itself, variance 0
    mean_in = f.op("ReduceMean", x3, axis2, keepdims=1)
    d = f.op("Sub", x3, mean_in)
    var_in = f.op("ReduceMean", f.op("Mul", d, d), axis2, keepdims=1)
    mean_ln = f.op("ReduceMean", mean_in, axis1, keepdims=1)
    e = f.op("Sub", mean_in, mean_ln)
    var_ln = f.op("Add", f.op("ReduceMean", var_in, axis1, keepdims=1),
                  f.op("ReduceMean", f.op("Mul", e, e), axis1, keepdims=1))
    # branch weights: pad the K softmaxed logits with a 0 at index K and gather (w_in, w_ln,
    # w_bn), an absent branch pointing at the 0
    has_in = f.op("Cast", f.op("Greater", f.op("Size", shp), f.const_i64([2])), to=i64)   # [1]
    has_bn = f.op("Cast", f.op("Cast", f.attr_const("using_bn", "int"), to=onnx.TensorProto.BOOL), to=i64)
    k = f.op("Add", f.op("Add", has_in, f.const_i64([1])), has_bn)                 # [1]
    one = f.const_i64([1])
    idx = f.op("Concat", f.op("Mul", f.op("Sub", one, has_in), k), has_in, f.op("Sub", k, has_bn), axis=0)
    zero = f.const_f64([0.0])

    def weights(name):
        logits = f.reshape(f.double(name), k)     # fails unless the input has K elements
        w = f.op("Concat", f.op("Softmax", logits, axis=0), zero, axis=0)
        return [f.op("Slice", f.op("Gather", w, idx, axis=0), f.const_i64([j]), f.const_i64([j + 1]))
                for j in range(3)]

    is_in = f.op("Cast", has_in, to=onnx.TensorProto.BOOL)
    is_bn = f.op("Cast", has_bn, to=onnx.TensorProto.BOOL)

    def mix(w, stat_in, stat_ln, stat_bn):
        # an absent branch contributes exactly 0 (Where, not 0 * stat: no NaN from 0 * Inf)
        t_in = f.op("Where", is_in, f.op("Mul", w[0], stat_in), zero)
        t_bn = f.op("Where", is_bn, f.op("Mul", w[2], stat_bn), zero)
        return f.op("Add", f.op("Add", t_in, f.op("Mul", w[1], stat_ln)), t_bn)

    mean = mix(weights("mean_weight"), mean_in, mean_ln, f.per_channel("running_mean", c))
    var = mix(weights("var_weight"), var_in, var_ln, f.per_channel("running_var", c))
    eps = f.op("Cast", f.attr_const("epsilon", "float"), to=f64)
    xh = f.op("Div", f.op("Sub", x3, mean), f.op("Sqrt", f.op("Add", var, eps)))
    y = f.op("Add", f.op("Mul", xh, f.per_channel("scale", c)), f.per_channel("bias", c))
    f.op("CastLike", f.reshape(y, shp), "X", out="Y")
    return f.build(["X", "scale", "bias", "running_mean", "running_var", "mean_weight", "var_weight"],
                   ["Y"], opset, {"epsilon": 1e-5, "using_bn": 1}, doc=__doc__)


#: The overload the exporter sees in the traced graph (key of the translation table).
SN_OVERLOAD = torch.ops.normexport.switchable_norm.default
