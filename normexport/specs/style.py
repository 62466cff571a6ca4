"""Registry entries: the conditional / style family (NORMS.md rows 11, 15-18): Switchable
Norm, conditional BN (MLP form and class-embedding form), conditional IN, AdaIN, SPADE."""

import torch

from ..nn import adain, conditional, spade, switchable
from ..ops import standard as std_ops
from ..ops import adain as adain_ops
from ..ops import spade as spade_ops
from ..ops import switchable as sn_ops
from ..reference import style as ref
from ..spec import CPU, CUDA, Composite, CustomOp, NormSpec, Reference, np64


def _randomize(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.3) -> None:
    """Every parameter to a non-trivial random value (weights near 1 for scale-like ones)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _running(owner: torch.nn.Module, c: int, gen: torch.Generator, batches: int = 3,
             data_mean: float = 0.0, data_var: float = 1.0) -> None:
    with torch.no_grad():
        owner.running_mean.copy_(data_mean + torch.randn(c, generator=gen) * 0.4)
        owner.running_var.copy_(data_var * (0.4 + torch.rand(c, generator=gen) * 1.5))
        owner.num_batches_tracked.fill_(batches)


def _bn_buffers(m) -> dict:
    return dict(running_mean=np64(m.running_mean), running_var=np64(m.running_var),
                num_batches=int(m.num_batches_tracked), momentum=m.momentum)


def _bn_kwargs(m) -> dict:
    """Keyword arguments of ref.param_free_batch_norm / ref.spade for a BN-branch owner."""
    return (_bn_buffers(m) if m.track_running_stats else {"momentum": m.momentum}) | \
        {"track_running_stats": m.track_running_stats}


def _no_running_stats(m) -> bool:
    """Eval with batch statistics: a BN branch built with track_running_stats=False."""
    return m.running_mean is None


def _x(m, batch, gen, h=9, w=11):
    return torch.randn(batch, m.num_features, h, w, generator=gen) * 2 + 0.5


# ---- Switchable Norm (row 11) ---------------------------------------------------------------

def _sn_example(channels, gen):
    m = switchable.SwitchableNorm2d(channels)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        m.bias.copy_(torch.randn(channels, generator=gen) * 0.3)
        m.mean_weight.copy_(torch.randn(3, generator=gen))
        m.var_weight.copy_(torch.randn(3, generator=gen))
    _running(m, channels, gen)
    return m


def _sn_reference(m, inputs, training):
    (x,) = inputs
    bn = _bn_buffers(m) if m.using_bn else {}
    y, buffers = ref.switchable_norm(x, np64(m.weight), np64(m.bias), np64(m.mean_weight),
                                     np64(m.var_weight), m.eps, m.branches, training,
                                     moving_average=m.using_moving_average, **bn)
    return Reference((y,), buffers)


SWITCHABLE_NORM = NormSpec(
    name="switchable_norm", title="Switchable Norm", row=11,
    layers=(switchable._SwitchableNorm,), example=_sn_example, inputs=lambda m, n, g: (_x(m, n, g),),
    reference=_sn_reference, eval_batch_stats=lambda m: m.using_bn and m.running_mean is None,
    export=CustomOp(op_type=sn_ops.OP_TYPE, torch_op=sn_ops.SN_OVERLOAD, translation=sn_ops.sn_translation,
                    call=sn_ops.sn_call, function=sn_ops.sn_function,
                    kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
)


# ---- Conditional BN (row 15) ----------------------------------------------------------------

_COND, _HIDDEN, _CLASSES = 5, 7, 4


def _cbn_example(channels, gen):
    m = conditional.ConditionalBatchNorm2d(channels, _COND, hidden_features=_HIDDEN)
    _randomize(m, gen)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(channels, generator=gen))
    _running(m, channels, gen)
    return m


def _cbn_inputs(m, batch, gen):
    return _x(m, batch, gen), torch.randn(batch, m.cond_features, generator=gen)


def _linears(seq):
    return [(np64(l.weight), np64(l.bias)) for l in seq if isinstance(l, torch.nn.Linear)]


def _cbn_reference(m, inputs, training):
    x, cond = inputs
    x_hat, buffers = ref.param_free_batch_norm(x, m.eps, training, **_bn_kwargs(m))
    gamma = np64(m.weight) + ref.mlp(cond, _linears(m.mlp_gamma))
    beta = np64(m.bias) + ref.mlp(cond, _linears(m.mlp_beta))
    return Reference((ref.conditional_affine(x_hat, gamma, beta),), buffers)


CONDITIONAL_BN = NormSpec(
    name="conditional_bn", title="Conditional BN (condition MLP)", row=15,
    layers=(conditional.ConditionalBatchNorm2d,), example=_cbn_example, inputs=_cbn_inputs,
    reference=_cbn_reference, eval_batch_stats=_no_running_stats,
    export=Composite("BN scale-shift folded; per-sample gamma/beta from the condition MLP "
                     "(MatMul/Add/Relu), applied with Mul/Add"),
)


def _ccbn_example(channels, gen):
    m = conditional.CategoricalConditionalBatchNorm2d(channels, _CLASSES)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(_CLASSES, channels, generator=gen))
        m.bias.copy_(torch.randn(_CLASSES, channels, generator=gen) * 0.3)
    _running(m, channels, gen)
    return m


def _labels(num, batch, gen):
    return torch.randint(0, num, (batch,), generator=gen)


def _ccbn_reference(m, inputs, training):
    x, labels = inputs
    x_hat, buffers = ref.param_free_batch_norm(x, m.eps, training, **_bn_kwargs(m))
    gamma, beta = ref.style_params(np64(m.weight), np64(m.bias), labels)
    return Reference((ref.conditional_affine(x_hat, gamma, beta),), buffers)


CONDITIONAL_BN_EMBEDDING = NormSpec(
    name="conditional_bn_embedding", title="Conditional BN (class embedding)", row=15,
    layers=(conditional.CategoricalConditionalBatchNorm2d,), example=_ccbn_example,
    inputs=lambda m, n, g: (_x(m, n, g), _labels(m.num_classes, n, g)),
    reference=_ccbn_reference, eval_batch_stats=_no_running_stats,
    export=Composite("BN scale-shift folded; per-sample affine with Gather/Mul/Add"),
)


# ---- Conditional IN (row 16) ----------------------------------------------------------------

_STYLES = 3


def _cin_example(channels, gen):
    m = conditional.ConditionalInstanceNorm2d(channels, _STYLES)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(_STYLES, channels, generator=gen))
        m.bias.copy_(torch.randn(_STYLES, channels, generator=gen) * 0.3)
    return m


def _cin_reference(m, inputs, training):
    x, style = inputs
    return Reference((ref.conditional_instance_norm(x, np64(m.weight), np64(m.bias), style, m.eps),))


CONDITIONAL_IN = NormSpec(
    name="conditional_in", title="Conditional Instance Norm", row=16,
    layers=(conditional.ConditionalInstanceNorm2d,), example=_cin_example,
    inputs=lambda m, n, g: (_x(m, n, g), _labels(m.num_styles, n, g)),
    reference=_cin_reference,
    export=Composite("InstanceNormalization; per-sample affine with Gather (style index) or "
                     "MatMul (style mix) and Mul/Add", call=std_ops.conditional_in_call),
)


# ---- AdaIN (row 17) -------------------------------------------------------------------------

def _adain_inputs(m, batch, gen):
    content = _x(m, batch, gen)
    style = torch.randn(batch, m.num_features, 7, 13, generator=gen) * (0.5 + torch.rand(
        batch, m.num_features, 1, 1, generator=gen)) - 0.7
    return content, style


def _adain_example(channels, gen):
    # alpha < 1 (the paper's content-style trade-off): pure AdaIN (alpha = 1) does not depend on
    # the content's scale and shift, which the generic training test learns; tests/test_style.py
    # checks alpha = 1 against the reference
    return adain.AdaIN(channels, alpha=0.75)


ADAIN = NormSpec(
    name="adain", title="Adaptive Instance Norm", row=17,
    layers=(adain.AdaIN,), example=_adain_example, inputs=_adain_inputs,
    reference=lambda m, inputs, training: Reference((ref.adaptive_instance_norm(*inputs, m.eps, m.alpha),)),
    export=CustomOp(op_type=adain_ops.OP_TYPE, torch_op=adain_ops.ADAIN_OVERLOAD,
                    translation=adain_ops.adain_translation, call=adain_ops.adain_call,
                    function=adain_ops.adain_function,
                    kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
)


# ---- SPADE (row 18) -------------------------------------------------------------------------

_LABEL_NC, _SPADE_HIDDEN = 3, 4


def _spade_example(channels, gen):
    # the official hidden width is 128; a narrow example (and small maps) keep gradcheck fast
    m = spade.SPADE(channels, _LABEL_NC, hidden_features=_SPADE_HIDDEN)
    _randomize(m, gen, scale=0.3)
    # running statistics near those of the data it normalises (_x: mean 0.5, variance 4), as
    # after training: with unit-variance ones x_hat reaches ~8 and outputs ~30, and where
    # x_hat * (1 + gamma) and beta cancel, float32 (torch's eval as ORT's convs) is then
    # ~2e-6 off in absolute terms, beyond the 1e-6 floor of the ORT-vs-torch check
    _running(m.param_free_norm, channels, gen, data_mean=0.5, data_var=4.0)
    return m


def _segmap(label_nc, batch, gen, h=3, w=4):
    """One-hot label map at a lower resolution than x (5 x 7): the layer resizes it."""
    labels = torch.randint(0, label_nc, (batch, h, w), generator=gen)
    return torch.nn.functional.one_hot(labels, label_nc).permute(0, 3, 1, 2).float()


def _conv(c):
    return np64(c.weight), np64(c.bias)


def spade_reference(m, inputs, training):
    x, segmap = inputs
    bn = _bn_kwargs(m.param_free_norm) if m.norm == "batch" else {}
    y, buffers = ref.spade(x, segmap, _conv(m.mlp_shared[0]), _conv(m.mlp_gamma), _conv(m.mlp_beta),
                           m.norm, m.param_free_norm.eps, training, **bn)
    return Reference((y,), {f"param_free_norm.{k}": v for k, v in buffers.items()})


SPADE = NormSpec(
    name="spade", title="SPADE", row=18,
    layers=(spade.SPADE,), example=_spade_example,
    inputs=lambda m, n, g: (_x(m, n, g, 5, 7), _segmap(m.label_nc, n, g)),
    reference=spade_reference,
    eval_batch_stats=lambda m: m.norm == "batch" and m.param_free_norm.running_mean is None,
    # normalize + modulate as the node; the resize and convs stay standard Resize/Conv/Relu
    export=CustomOp(op_type=spade_ops.OP_TYPE, torch_op=spade_ops.SPADE_OVERLOAD,
                    translation=spade_ops.spade_translation, call=spade_ops.spade_call,
                    function=spade_ops.spade_function,
                    kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
)

ENTRIES = (SWITCHABLE_NORM, CONDITIONAL_BN, CONDITIONAL_BN_EMBEDDING, CONDITIONAL_IN, ADAIN, SPADE)
