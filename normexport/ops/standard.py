"""Exported forms that are standard ONNX ops (no ``normexport`` node, no function body).

- LRN (NORMS.md row 1) -> ONNX ``LRN``. torch lowers ``nn.LocalResponseNorm`` to nine nodes
  (Pow/Pad/AveragePool/...), so export swaps the layer's forward for the custom op
  ``normexport::lrn`` whose translation emits one ``LRN`` node. Only where the two agree:
  ONNX LRN sums over channels [c - floor((n-1)/2), c + ceil((n-1)/2)], torch over
  [c - floor(n/2), c + floor((n-1)/2)]: the same window for odd n only (and ONNX Runtime's CPU
  LRN refuses even n and inputs that are not 4-D). An even size or a non-4-D input raises
  :class:`~normexport.spec.Decompose`: the layer is then traced into standard ops as before,
  never exported as a wrong LRN.
- InstanceNorm (row 8): torch already lowers ``track_running_stats=False`` (the default) to
  ``InstanceNormalization``. With ``track_running_stats=True`` eval uses the running
  statistics: a per-channel affine identical to BN in eval, which torch lowers to a
  BatchNormalization over a (1, N*C, ...) reshape with Tile-d statistics (neither the IN op
  nor foldable). The call below emits ``F.batch_norm`` on x itself: one
  ``BatchNormalization`` node over (N, C, ...), the BN eval form, foldable like BN.
- Conditional IN (row 16): ``InstanceNormalization`` (no affine) + per-sample gamma/beta from
  a Gather (style index) or MatMul (style mix), applied with Mul/Add (torch's own lowering of
  the layer's var_mean is ~20 Shape/Reduce/Expand nodes).
"""

from __future__ import annotations

import onnxscript
import torch
import torch.nn.functional as F
from onnxscript import FLOAT
from onnxscript import opset18 as _op
from torch import nn

from ..nn._bn_branch import channel_view, check_input
from ..spec import Decompose


# ---- LRN ------------------------------------------------------------------------------------

@torch.library.custom_op("normexport::lrn", mutates_args=())
def lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return F.local_response_norm(x, size, alpha, beta, k)


@lrn_op.register_fake
def _(x, size, alpha, beta, k):
    return torch.empty_like(x)


@onnxscript.script(default_opset=_op)
def lrn_translation(x, size: int, alpha: float, beta: float, k: float) -> FLOAT:
    return _op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


def lrn_call(module: nn.LocalResponseNorm, x: torch.Tensor) -> torch.Tensor:
    if module.size % 2 == 0:
        raise Decompose(f"size {module.size} is even: ONNX LRN's channel window equals torch's for "
                        f"odd sizes only (and ONNX Runtime's CPU LRN refuses even sizes), so the "
                        f"layer stays decomposed into standard ops")
    if x.dim() != 4:
        raise Decompose(f"input of rank {x.dim()}: ONNX Runtime's LRN takes 4-D (N, C, H, W) "
                        f"inputs only, so the layer stays decomposed into standard ops")
    return torch.ops.normexport.lrn(x, int(module.size), float(module.alpha), float(module.beta),
                                    float(module.k))


LRN_OVERLOAD = torch.ops.normexport.lrn.default


# ---- InstanceNorm ---------------------------------------------------------------------------

def instance_norm_call(module: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
    """Eval form of torch's InstanceNorm: instance statistics -> the layer's own forward
    (InstanceNormalization); running statistics -> BN eval on x (BatchNormalization)."""
    if not module.track_running_stats or module.running_mean is None:
        return type(module).forward(module, x)
    unbatched = x.dim() == module._get_no_batch_dim()
    xb = x.unsqueeze(0) if unbatched else x
    if xb.shape[1] != module.num_features:
        return type(module).forward(module, x)  # torch's own message / behaviour
    y = F.batch_norm(xb, module.running_mean, module.running_var, module.weight, module.bias,
                     False, 0.0, module.eps)
    return y.squeeze(0) if unbatched else y


# ---- Conditional IN -------------------------------------------------------------------------

def conditional_in_call(module, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """ConditionalInstanceNorm2d's forward with the normalisation as F.instance_norm
    (-> InstanceNormalization); the per-sample affine as the layer computes it."""
    check_input("ConditionalInstanceNorm2d", x, 4, module.num_features)
    gamma, beta = module.style_params(style, x.shape[0])
    x_hat = F.instance_norm(x, eps=module.eps)
    return x_hat * channel_view(gamma, 4) + channel_view(beta, 4)
