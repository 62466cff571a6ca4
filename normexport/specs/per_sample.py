"""Registry entries: the per-sample family (NORMS.md rows 1, 7-10, 13, 14).

LRN, LayerNorm, InstanceNorm, GroupNorm and weight norm are torch's own layers (registered
here, no class of normexport's); Cosine Normalization and PONO are ``normexport.nn.cosine`` /
``normexport.nn.pono``. Every reference is ``normexport.reference.standard`` / ``cosine`` /
``pono`` (float64 numpy).
"""

import torch
from torch import nn
from torch.nn.utils.parametrizations import _WeightNorm

from ..nn import cosine, pono
from ..ops import groupnorm as gn_ops
from ..ops import pono as pono_ops
from ..reference import cosine as cosine_ref
from ..reference import pono as pono_ref
from ..reference import standard
from ..ops import standard as std_ops
from ..spec import CPU, CUDA, Composite, CustomOp, Fold, NormSpec, Reference, StandardOp, np64

H, W = 5, 7  # odd spatial sizes of the example inputs


def _randn(shape, gen, scale=1.0, shift=0.0):
    return torch.randn(shape, generator=gen) * scale + shift


def _image(channels: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    return _randn((batch, channels, H, W), gen, 2.0, 0.5)


# ---- 1: LRN ------------------------------------------------------------------------------------

LRN_CHANNELS = 7  # LRN has no channel count of its own: its example inputs always have 7 channels


def _lrn_example(channels: int, gen: torch.Generator) -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=0.2, beta=0.75, k=1.5)


def _lrn_inputs(m, batch: int, gen: torch.Generator):
    return (_image(LRN_CHANNELS, batch, gen),)


def _lrn_reference(m: nn.LocalResponseNorm, inputs, training: bool) -> Reference:
    (x,) = inputs
    return Reference((standard.local_response_norm(x, m.size, m.alpha, m.beta, m.k),))


LRN = NormSpec(
    name="lrn", title="Local Response Normalization", row=1, layers=(nn.LocalResponseNorm,),
    example=_lrn_example, inputs=_lrn_inputs, reference=_lrn_reference,
    # ONNX LRN's window equals torch's for odd sizes only (and ORT's CPU LRN refuses even
    # sizes and non-4-D inputs): those stay decomposed (ops/standard.py, lrn_call)
    export=StandardOp(("LRN",), call=std_ops.lrn_call, torch_op=std_ops.LRN_OVERLOAD,
                      translation=std_ops.lrn_translation),
)


# ---- 7: LayerNorm ------------------------------------------------------------------------------

def _ln_example(channels: int, gen: torch.Generator) -> nn.LayerNorm:
    m = nn.LayerNorm((channels, H, W))
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        m.bias.copy_(_randn(m.bias.shape, gen, 0.3))
    return m


def _ln_inputs(m: nn.LayerNorm, batch: int, gen: torch.Generator):
    return (_randn((batch, *m.normalized_shape), gen, 2.0, 0.5),)


def _ln_reference(m: nn.LayerNorm, inputs, training: bool) -> Reference:
    (x,) = inputs
    return Reference((standard.layer_norm(x, m.normalized_shape, np64(m.weight), np64(m.bias), m.eps),))


LAYERNORM = NormSpec(
    name="layernorm", title="Layer Normalization", row=7, layers=(nn.LayerNorm,),
    example=_ln_example, inputs=_ln_inputs, reference=_ln_reference,
    export=StandardOp(("LayerNormalization",)),
)


# ---- 8: InstanceNorm ---------------------------------------------------------------------------

def _in_example(channels: int, gen: torch.Generator) -> nn.InstanceNorm2d:
    m = nn.InstanceNorm2d(channels, affine=True, track_running_stats=True, momentum=0.2)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        m.bias.copy_(_randn(channels, gen, 0.3))
        m.running_mean.copy_(_randn(channels, gen, 0.3, 0.5))
        m.running_var.copy_(0.5 + 4 * torch.rand(channels, generator=gen))
    return m


def _in_inputs(m, batch: int, gen: torch.Generator):
    rank = next(r for r, cls in ((1, nn.InstanceNorm1d), (2, nn.InstanceNorm2d), (3, nn.InstanceNorm3d))
                if isinstance(m, cls))
    spatial = (H, W, 3)[:rank]   # 1d: (L,), 2d: (H, W), 3d: (H, W, 3)
    return (_randn((batch, m.num_features, *spatial), gen, 2.0, 0.5),)


def _in_reference(m, inputs, training: bool) -> Reference:
    (x,) = inputs
    use_input_stats = training or not m.track_running_stats
    y, rm, rv = standard.instance_norm(
        x, np64(m.weight), np64(m.bias), m.eps, np64(m.running_mean), np64(m.running_var),
        use_input_stats, m.momentum if m.momentum is not None else 0.0)
    buffers = {"running_mean": rm, "running_var": rv} if m.track_running_stats else {}
    return Reference((y,), buffers)


INSTANCENORM = NormSpec(
    name="instancenorm", title="Instance Normalization", row=8,
    layers=(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
    example=_in_example, inputs=_in_inputs, reference=_in_reference,
    # track_running_stats=False (torch's default): InstanceNormalization (torch's lowering).
    # track_running_stats=True: eval uses the running statistics, a per-channel affine equal to
    # BN in eval: one BatchNormalization over (N, C, ...) (ops/standard.py), foldable like BN.
    export=StandardOp(("InstanceNormalization", "BatchNormalization"),
                      call=std_ops.instance_norm_call),
)


# ---- 9: GroupNorm ------------------------------------------------------------------------------

def _gn_example(channels: int, gen: torch.Generator) -> nn.GroupNorm:
    # largest proper divisor of C: several groups of several channels (1 group when C is prime)
    groups = max([d for d in range(1, channels) if channels % d == 0] or [1])
    m = nn.GroupNorm(groups, channels)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        m.bias.copy_(_randn(channels, gen, 0.3))
    return m


def _gn_inputs(m: nn.GroupNorm, batch: int, gen: torch.Generator):
    return (_image(m.num_channels, batch, gen),)


def _gn_reference(m: nn.GroupNorm, inputs, training: bool) -> Reference:
    (x,) = inputs
    return Reference((standard.group_norm(x, m.num_groups, np64(m.weight), np64(m.bias), m.eps),))


GROUPNORM = NormSpec(
    name="groupnorm", title="Group Normalization", row=9, layers=(nn.GroupNorm,),
    example=_gn_example, inputs=_gn_inputs, reference=_gn_reference,
    export=CustomOp(op_type=gn_ops.OP_TYPE, torch_op=gn_ops.GN_OVERLOAD, translation=gn_ops.gn_translation,
                    call=gn_ops.gn_call, function=gn_ops.gn_function,
                    kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
)


# ---- 10: weight norm ---------------------------------------------------------------------------

_WN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_weight_normed(module: nn.Module) -> bool:
    """True for a module whose ``weight`` is torch.nn.utils.parametrizations.weight_norm's
    parametrization and nothing else (the form the reference and the weight fold handle)."""
    plists = getattr(module, "parametrizations", None)
    if not isinstance(plists, nn.ModuleDict) or "weight" not in plists:
        return False
    plist = plists["weight"]
    return len(plist) == 1 and isinstance(plist[0], _WeightNorm)


def _wn_example(channels: int, gen: torch.Generator) -> nn.Conv2d:
    m = nn.utils.parametrizations.weight_norm(nn.Conv2d(channels, channels, 3, padding=1))
    p = m.parametrizations.weight
    with torch.no_grad():
        p.original0.copy_(0.5 + torch.rand(p.original0.shape, generator=gen))   # g
        p.original1.copy_(_randn(p.original1.shape, gen))                       # v
        m.bias.copy_(_randn(m.bias.shape, gen, 0.3))
    return m


def _wn_inputs(m, batch: int, gen: torch.Generator):
    if isinstance(m, nn.Linear):
        return (_randn((batch, m.in_features), gen, 2.0, 0.5),)
    spatial = (H, W, 3)[:m.weight.dim() - 2]
    return (_randn((batch, m.in_channels, *spatial), gen, 2.0, 0.5),)


def _wn_reference(m, inputs, training: bool) -> Reference:
    (x,) = inputs
    p = m.parametrizations.weight
    w = standard.weight_norm_weight(np64(p.original0), np64(p.original1), p[0].dim)
    if isinstance(m, nn.Linear):
        return Reference((standard.linear(x, w, np64(m.bias)),))
    return Reference((standard.conv(x, w, np64(m.bias), m.stride, m.padding, m.dilation, m.groups,
                                    m.padding_mode),))


WEIGHTNORM = NormSpec(
    name="weightnorm", title="Weight Normalization (torch weight_norm parametrization)", row=10,
    layers=_WN_LAYERS, matches=is_weight_normed,
    example=_wn_example, inputs=_wn_inputs, reference=_wn_reference,
    export=Fold("weight"),
)


# ---- 13: Cosine Normalization ------------------------------------------------------------------

_COSINE_EXPORT = Composite("weights pre-normalized at export; input norm with standard ops")


def _cos_linear_example(channels: int, gen: torch.Generator) -> cosine.CosineLinear:
    m = cosine.CosineLinear(channels, channels + 1)
    with torch.no_grad():
        m.weight.copy_(_randn(m.weight.shape, gen))
    return m


def _cos_linear_inputs(m: cosine.CosineLinear, batch: int, gen: torch.Generator):
    return (_randn((batch, m.in_features), gen, 2.0, 0.5),)


def _cos_linear_reference(m: cosine.CosineLinear, inputs, training: bool) -> Reference:
    (x,) = inputs
    return Reference((cosine_ref.cosine_linear(x, np64(m.weight), np64(m.bias), m.eps),))


COSINE_LINEAR = NormSpec(
    name="cosine_linear", title="Cosine Normalization (linear)", row=13, layers=(cosine.CosineLinear,),
    example=_cos_linear_example, inputs=_cos_linear_inputs, reference=_cos_linear_reference,
    export=_COSINE_EXPORT,
)


def _cos_conv_example(channels: int, gen: torch.Generator) -> cosine.CosineConv2d:
    m = cosine.CosineConv2d(channels, channels + 1, 3, padding=1)
    with torch.no_grad():
        m.weight.copy_(_randn(m.weight.shape, gen))
    return m


def _cos_conv_inputs(m: cosine.CosineConv2d, batch: int, gen: torch.Generator):
    return (_image(m.in_channels, batch, gen),)


def _cos_conv_reference(m: cosine.CosineConv2d, inputs, training: bool) -> Reference:
    (x,) = inputs
    return Reference((cosine_ref.cosine_conv(x, np64(m.weight), np64(m.bias), m.stride, m.padding,
                                             m.dilation, m.groups, m.padding_mode, m.eps),))


COSINE_CONV2D = NormSpec(
    name="cosine_conv2d", title="Cosine Normalization (conv 2d)", row=13, layers=(cosine.CosineConv2d,),
    example=_cos_conv_example, inputs=_cos_conv_inputs, reference=_cos_conv_reference,
    export=_COSINE_EXPORT,
)


# ---- 14: PONO ----------------------------------------------------------------------------------

def _pono_example(channels: int, gen: torch.Generator) -> pono.PositionalNorm:
    # the official per-position affine, so that the example has parameters to train
    m = pono.PositionalNorm(channels, affine=True, input_size=(H, W))
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        m.bias.copy_(_randn(m.bias.shape, gen, 0.3))
    return m


def _pono_inputs(m: pono.PositionalNorm, batch: int, gen: torch.Generator):
    return (_randn((batch, m.num_features, *(m.input_size or (H, W))), gen, 2.0, 0.5),)


def _pono_reference(m: pono.PositionalNorm, inputs, training: bool) -> Reference:
    (x,) = inputs
    return Reference(pono_ref.positional_norm(x, m.eps, m.unbiased, np64(m.weight), np64(m.bias)))


PONO = NormSpec(
    name="pono", title="Positional Normalization (outputs y, mean, std)", row=14,
    layers=(pono.PositionalNorm,),
    example=_pono_example, inputs=_pono_inputs, reference=_pono_reference,
    # the per-position affine stays standard Mul/Add after the node (see ops/pono.py)
    export=CustomOp(op_type=pono_ops.OP_TYPE, torch_op=pono_ops.PONO_OVERLOAD,
                    translation=pono_ops.pono_translation, call=pono_ops.pono_call,
                    function=pono_ops.pono_function,
                    kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
)


ENTRIES = [LRN, LAYERNORM, INSTANCENORM, GROUPNORM, WEIGHTNORM, COSINE_LINEAR, COSINE_CONV2D, PONO]
