"""Per-sample family specifics (NORMS.md rows 1, 7-10, 13, 14) against the float64 numpy
references; the generic registry tests (examples, train/eval, training run) are in
test_layers.py."""

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from normexport import registry
from normexport.nn import (CosineConv2d, CosineLinear, MomentShortcut, PositionalNorm,
                           cosine_conv2d, positional_norm)
from normexport.reference import _conv
from normexport.reference import cosine as cosine_ref
from normexport.reference import pono as pono_ref
from normexport.reference import standard as ref
from normexport.spec import np64

RTOL, ATOL = 1e-10, 1e-12
D = torch.float64


def _x(shape, seed=0, scale=2.0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=D) * scale + shift


def _randomize(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + 0.5)
    return m


def _close(got, expected, **kw):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
    np.testing.assert_allclose(got, expected, rtol=kw.get("rtol", RTOL), atol=kw.get("atol", ATOL))


def test_references_do_not_use_torch():
    from normexport import reference
    for mod in (_conv, ref, cosine_ref, pono_ref, reference):
        src = inspect.getsource(mod)
        assert "import torch" not in src and "from torch" not in src, mod.__name__


# ---- LRN (row 1) --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 6, 3, 5), (1, 4, 3, 2, 3)])
def test_lrn_sizes_and_ranks(size, shape):
    m = nn.LocalResponseNorm(size, alpha=0.3, beta=0.6, k=1.2)
    x = _x(shape, seed=size)
    _close(m(x), ref.local_response_norm(x.numpy(), size, 0.3, 0.6, 1.2))


@pytest.mark.parametrize("size", [3, 4])
def test_lrn_window_is_torchs(size):
    """One non-zero channel j changes channel c's output iff j lies in [c - n//2, c + (n-1)//2]:
    for even n the window reaches one channel further down than up (ONNX LRN's the other way)."""
    c_count, j = 7, 3
    x = torch.ones(1, c_count, 1, 1, dtype=D)
    x[0, j] = 5.0
    y = nn.LocalResponseNorm(size, alpha=1.0, beta=1.0, k=1.0)(x)
    base = nn.LocalResponseNorm(size, alpha=1.0, beta=1.0, k=1.0)(torch.ones_like(x))
    affected = [c for c in range(c_count) if c != j and not torch.isclose(y[0, c], base[0, c])]
    expected = [c for c in range(c_count) if c != j and c - size // 2 <= j <= c + (size - 1) // 2]
    assert affected == expected
    _close(y, ref.local_response_norm(x.numpy(), size, 1.0, 1.0, 1.0))


# ---- LayerNorm (row 7) --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,normalized", [((3, 4, 5, 7), (7,)), ((3, 4, 5, 7), (5, 7)),
                                              ((3, 4, 5, 7), (4, 5, 7)), ((2, 6, 9), (9,)),
                                              ((2, 3, 2, 3, 4), (2, 3, 4))])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_layernorm_multi_dim(shape, normalized, affine, bias):
    m = _randomize(nn.LayerNorm(normalized, eps=1e-3, elementwise_affine=affine, bias=bias, dtype=D))
    x = _x(shape)
    _close(m(x), ref.layer_norm(x.numpy(), normalized, np64(m.weight), np64(m.bias), 1e-3))


# ---- InstanceNorm (row 8) -----------------------------------------------------------------------

@pytest.mark.parametrize("cls,spatial", [(nn.InstanceNorm1d, (9,)), (nn.InstanceNorm2d, (5, 7)),
                                         (nn.InstanceNorm3d, (3, 5, 2))])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_instancenorm_variants_train_then_eval(cls, spatial, affine, track):
    spec = registry.REGISTRY["instancenorm"]
    m = cls(4, eps=1e-4, momentum=0.3, affine=affine, track_running_stats=track, dtype=D)
    assert registry.spec_for(m) is spec
    if affine:
        _randomize(m)
    for step in range(2):  # two train steps: the buffers move twice
        x = _x((3, 4, *spatial), seed=step)
        expected = spec.reference(m, (x.numpy(),), True)
        _close(m.train()(x), expected.outputs[0])
        assert set(expected.buffers) == ({"running_mean", "running_var"} if track else set())
        for name, e in expected.buffers.items():
            _close(getattr(m, name), e)
    x = _x((2, 4, *spatial), seed=5)
    expected = spec.reference(m, (x.numpy(),), False)
    y = m.eval()(x)
    _close(y, expected.outputs[0])
    # tracked: eval normalizes with the running stats, not with the instance's own stats
    own = ref.instance_norm(x.numpy(), np64(m.weight), np64(m.bias), 1e-4)[0]
    assert np.allclose(y.detach().numpy(), own) != track


def test_instancenorm_running_update_uses_unbiased_instance_variance():
    m = nn.InstanceNorm1d(1, momentum=1.0, track_running_stats=True, dtype=D)
    m(torch.tensor([[[1.0, 2.0, 3.0, 6.0]], [[0.0, 0.0, 2.0, 2.0]]], dtype=D))
    # instance means 3 and 1; unbiased variances 14/3 and 4/3
    _close(m.running_mean, [2.0])
    _close(m.running_var, [3.0])


def test_instancenorm_momentum_none_keeps_buffers():
    m = nn.InstanceNorm2d(3, momentum=None, track_running_stats=True, dtype=D)
    expected = registry.REGISTRY["instancenorm"].reference(m, (_x((2, 3, 4, 5)).numpy(),), True)
    m(_x((2, 3, 4, 5)))
    _close(m.running_mean, expected.buffers["running_mean"])
    _close(m.running_mean, np.zeros(3))


# ---- GroupNorm (row 9) --------------------------------------------------------------------------

def test_groupnorm_one_group_is_layernorm_over_chw():
    m = _randomize(nn.GroupNorm(1, 6, eps=1e-4, dtype=D))
    x = _x((3, 6, 5, 7))
    w, b = np64(m.weight).reshape(1, 6, 1, 1), np64(m.bias).reshape(1, 6, 1, 1)
    _close(m(x), ref.layer_norm(x.numpy(), (6, 5, 7), eps=1e-4) * w + b)
    _close(m(x), ref.group_norm(x.numpy(), 1, np64(m.weight), np64(m.bias), 1e-4))


def test_groupnorm_c_groups_is_instancenorm():
    m = _randomize(nn.GroupNorm(6, 6, eps=1e-4, dtype=D))
    x = _x((3, 6, 5, 7))
    _close(m(x), ref.instance_norm(x.numpy(), np64(m.weight), np64(m.bias), 1e-4)[0])
    _close(m(x), ref.group_norm(x.numpy(), 6, np64(m.weight), np64(m.bias), 1e-4))


@pytest.mark.parametrize("groups,shape", [(2, (2, 6, 5, 7)), (3, (2, 6, 9)), (4, (1, 8, 3, 2, 3))])
def test_groupnorm_groups_and_ranks(groups, shape):
    m = _randomize(nn.GroupNorm(groups, shape[1], dtype=D))
    x = _x(shape)
    _close(m(x), ref.group_norm(x.numpy(), groups, np64(m.weight), np64(m.bias), m.eps))


# ---- weight norm (row 10) -----------------------------------------------------------------------

def _wn(module, dim=0):
    return _randomize(nn.utils.parametrizations.weight_norm(module.to(D), dim=dim))


@pytest.mark.parametrize("make,x_shape", [
    (lambda: nn.Linear(5, 3), (4, 5)),
    (lambda: nn.Linear(5, 3), (2, 4, 5)),
    (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 9)),
    (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), (2, 4, 7, 9)),
    (lambda: nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect", bias=False), (2, 3, 5, 7)),
    (lambda: nn.Conv3d(2, 3, 2, padding=1, padding_mode="circular"), (1, 2, 3, 4, 3)),
])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weightnorm_layers_and_dims(make, x_shape, dim):
    spec = registry.REGISTRY["weightnorm"]
    m = _wn(make(), dim)
    assert registry.spec_for(m) is spec
    x = _x(x_shape)
    _close(m(x), spec.reference(m, (x.numpy(),), True).outputs[0])


def test_weightnorm_recognition():
    spec = registry.REGISTRY["weightnorm"]
    assert registry.spec_for(nn.Conv2d(3, 4, 3)) is None
    assert registry.spec_for(nn.Linear(3, 4)) is None
    assert registry.spec_for(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 4))) is None
    stacked = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4))
    nn.utils.parametrize.register_parametrization(stacked, "weight", nn.Identity())
    assert registry.spec_for(stacked) is None  # the reference and the fold model WN alone
    assert registry.spec_for(nn.utils.parametrizations.weight_norm(nn.Conv3d(2, 2, 1))) is spec
    # a cosine conv is not a plain conv: weight norm on it is not "weightnorm"
    assert not isinstance(CosineConv2d(2, 2, 1), nn.Conv2d)
    cos = nn.utils.parametrizations.weight_norm(CosineConv2d(2, 2, 1))
    assert registry.spec_for(cos) is registry.REGISTRY["cosine_conv2d"]


# ---- Cosine Normalization (row 13) --------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(kernel_size=3),
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, stride=2, padding=2, dilation=2),
    dict(kernel_size=(2, 3), dilation=(2, 1), padding=(0, 1), stride=(1, 3)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=2, padding="valid"),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect", stride=2),
    dict(kernel_size=2, padding=1, padding_mode="circular", bias=True),
    dict(kernel_size=3, padding="same", padding_mode="replicate"),
])
def test_cosine_conv_receptive_fields(kw):
    m = CosineConv2d(4, 6, dtype=D, **kw)
    _randomize(m)
    x = _x((2, 4, 7, 9), scale=1.0, shift=0.0)
    y = m(x)
    expected = cosine_ref.cosine_conv(x.numpy(), np64(m.weight), np64(m.bias), m.stride, m.padding,
                                      m.dilation, m.groups, m.padding_mode, m.eps)
    assert y.shape == expected.shape
    _close(y, expected)


def test_cosine_reference_patch_norm_is_not_the_plain_norm():
    """Guard on the reference: a receptive field is the patch, not the whole image (the
    reference's cosine differs from one normalized by the full input norm)."""
    w = np.ones((1, 1, 2, 2))
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = cosine_ref.cosine_conv(x, w, eps=0.0)
    patch = x[0, 0, 2:4, 2:4].ravel()
    assert np.isclose(y[0, 0, 2, 2], patch.sum() / (2 * np.linalg.norm(patch)))


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5), (5,)])
@pytest.mark.parametrize("bias", [False, True])
def test_cosine_linear(shape, bias):
    m = _randomize(CosineLinear(5, 3, bias=bias, eps=1e-4, dtype=D))
    x = _x(shape)
    _close(m(x), cosine_ref.cosine_linear(x.numpy(), np64(m.weight), np64(m.bias), 1e-4))


def test_cosine_outputs_lie_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    lin, conv = CosineLinear(6, 4, dtype=D), CosineConv2d(3, 4, 3, padding=1, dtype=D)
    for m, x in ((lin, torch.randn(64, 6, generator=g, dtype=D) * 1e3),
                 (conv, torch.randn(8, 3, 7, 9, generator=g, dtype=D) * 1e3)):
        y = m(x)
        assert y.abs().max() <= 1.0 and y.abs().max() > 0.5
    # the bound is reached (tiny eps): an input along a weight row gives cos = 1
    lin, conv = CosineLinear(6, 4, eps=1e-14, dtype=D), CosineConv2d(3, 4, 3, padding=1, eps=1e-14, dtype=D)
    x = lin.weight[2:3].detach() * 7.0
    assert abs(lin(x)[0, 2].item() - 1.0) < 1e-10
    # a patch along the filter gives cos = 1 at that position
    x = torch.zeros(1, 3, 3, 3, dtype=D)
    x[0] = conv.weight[1].detach() * 0.5
    assert abs(conv(x)[0, 1, 1, 1].item() - 1.0) < 1e-10


def test_cosine_zero_input_is_finite():
    for m, x in ((CosineLinear(3, 2, dtype=D), torch.zeros(2, 3, dtype=D)),
                 (CosineConv2d(2, 3, 3, padding=1, dtype=D), torch.zeros(1, 2, 4, 4, dtype=D))):
        x.requires_grad_()
        y = m(x)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and (y == 0).all()


def test_cosine_conv_functional_equals_module():
    m = _randomize(CosineConv2d(4, 2, 3, stride=2, padding=1, dilation=1, groups=2, dtype=D))
    x = _x((2, 4, 5, 7))
    torch.testing.assert_close(cosine_conv2d(x, m.weight, None, 2, 1, 1, 2, m.eps), m(x))


# ---- PONO + Moment Shortcut (row 14) ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 4, 5, 7), (1, 3, 2, 3, 4)])
@pytest.mark.parametrize("unbiased", [True, False])
def test_pono_outputs(shape, unbiased):
    m = PositionalNorm(shape[1], eps=1e-3, unbiased=unbiased, dtype=D)
    x = _x(shape)
    y, mean, std = m(x)
    ey, emean, estd = pono_ref.positional_norm(x.numpy(), 1e-3, unbiased)
    assert mean.shape == std.shape == (shape[0], 1, *shape[2:])
    _close(y, ey)
    _close(mean, emean)
    _close(std, estd)


def test_pono_variance_divisor():
    x = torch.tensor([[[1.0], [3.0]]], dtype=D)  # C=2 at one position: (a - b)^2 = 4
    assert abs(positional_norm(x, eps=0.0, unbiased=True)[2].item() ** 2 - 2.0) < 1e-12   # / (C-1)
    assert abs(positional_norm(x, eps=0.0, unbiased=False)[2].item() ** 2 - 1.0) < 1e-12  # / C
    assert abs(PositionalNorm()(x)[2].item() ** 2 - (2.0 + 1e-5)) < 1e-12  # default: official


def test_pono_affine_is_per_position():
    m = _randomize(PositionalNorm(4, affine=True, input_size=(3, 5), dtype=D))
    assert m.weight.shape == m.bias.shape == (3, 5)
    x = _x((2, 4, 3, 5))
    expected = pono_ref.positional_norm(x.numpy(), m.eps, True, np64(m.weight), np64(m.bias))
    for g, e in zip(m(x), expected):
        _close(g, e)


def test_moment_shortcut_ms_restores_pono_input():
    x = _x((2, 6, 5, 7))
    y, mean, std = PositionalNorm(6, dtype=D)(x)
    ms = MomentShortcut()
    _close(ms(y, mean, std), x.numpy(), rtol=1e-12, atol=1e-12)
    z = _x((2, 3, 5, 7), seed=4)  # MS on another layer's activations (any channel count)
    _close(ms(z, mean, std), pono_ref.moment_shortcut(z.numpy(), mean.numpy(), std.numpy()))


def _dms(c=3, hidden=4, k=3, seed=2, **kw):
    return _randomize(MomentShortcut(c, dynamic=True, hidden_channels=hidden, kernel_size=k, dtype=D, **kw), seed)


@pytest.mark.parametrize("hidden,k", [(4, 3), (2, 1), (5, 5)])
def test_moment_shortcut_dms(hidden, k):
    dms = _dms(hidden=hidden, k=k)
    _, mean, std = PositionalNorm(5, dtype=D)(_x((2, 5, 6, 7)))
    z = _x((2, 3, 6, 7), seed=3)
    expected = pono_ref.dynamic_moment_shortcut(
        z.numpy(), mean.numpy(), std.numpy(), np64(dms.conv1.weight), np64(dms.conv1.bias),
        np64(dms.conv2.weight), np64(dms.conv2.bias))
    _close(dms(z, mean, std), expected)


def test_moment_shortcut_dms_with_official_batchnorm_in_eval():
    dms = _dms(norm_layer=nn.BatchNorm2d).eval()
    bn = dms.norm
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 3.0]))
    _, mean, std = PositionalNorm(5, dtype=D)(_x((2, 5, 4, 5)))
    z = _x((2, 3, 4, 5), seed=3)
    # eval BN after conv1 = conv1 with its output channels scaled and shifted
    s = np64(bn.weight) / np.sqrt(np64(bn.running_var) + bn.eps)
    w1 = np64(dms.conv1.weight) * s.reshape(-1, 1, 1, 1)
    b1 = (np64(dms.conv1.bias) - np64(bn.running_mean)) * s + np64(bn.bias)
    expected = pono_ref.dynamic_moment_shortcut(z.numpy(), mean.numpy(), std.numpy(), w1, b1,
                                                np64(dms.conv2.weight), np64(dms.conv2.bias))
    _close(dms(z, mean, std), expected)


# ---- gradients (float64 gradcheck) ---------------------------------------------------------------

def _gradcheck(fn, *tensors):
    assert torch.autograd.gradcheck(fn, tuple(t.detach().clone().requires_grad_() for t in tensors),
                                    eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1, dilation=2, groups=2, bias=True),
                                dict(kernel_size=2, padding=1, padding_mode="reflect")])
def test_gradcheck_cosine_conv(kw):
    m = _randomize(CosineConv2d(4, 2, dtype=D, **kw))
    names = [n for n, _ in m.named_parameters()]
    _gradcheck(lambda x, *ps: torch.func.functional_call(m, dict(zip(names, ps)), (x,)),
               _x((1, 4, 4, 5)), *[p for _, p in m.named_parameters()])


def test_gradcheck_cosine_linear():
    m = _randomize(CosineLinear(4, 3, bias=True, dtype=D))
    _gradcheck(lambda x, w, b: torch.func.functional_call(m, {"weight": w, "bias": b}, (x,)),
               _x((3, 2, 4)), m.weight, m.bias)


@pytest.mark.parametrize("unbiased", [True, False])
def test_gradcheck_pono(unbiased):
    m = _randomize(PositionalNorm(3, unbiased=unbiased, affine=True, input_size=(2, 3), dtype=D))
    _gradcheck(lambda x, w, b: torch.func.functional_call(m, {"weight": w, "bias": b}, (x,)),
               _x((2, 3, 2, 3)), m.weight, m.bias)


def test_gradcheck_moment_shortcut_ms():
    _gradcheck(MomentShortcut(), _x((2, 3, 2, 3)), _x((2, 1, 2, 3), 1), _x((2, 1, 2, 3), 2, 0.3, 1.0))


def test_gradcheck_moment_shortcut_dms():
    dms = _dms(c=2, hidden=2)
    names = [n for n, _ in dms.named_parameters()]
    _gradcheck(lambda x, mu, sd, *ps: torch.func.functional_call(dms, dict(zip(names, ps)), (x, mu, sd)),
               _x((1, 2, 3, 4)), _x((1, 1, 3, 4), 1), _x((1, 1, 3, 4), 2, 0.3, 1.0),
               *[p for _, p in dms.named_parameters()])


def test_gradcheck_pono_into_ms():
    """The moments are not detached: gradients reach x through y, mean and std."""
    pono, ms = PositionalNorm(3, dtype=D), MomentShortcut()
    z = _x((2, 3, 2, 3), seed=7)
    _gradcheck(lambda x: ms(z, *pono(x)[1:]), _x((2, 3, 2, 3)))


# ---- errors name the layer --------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: CosineLinear(4, 2)(torch.randn(3, 5)), r"CosineLinear: expected input \(\*, 4\)"),
    (lambda: CosineConv2d(4, 2, 3)(torch.randn(1, 3, 5, 5)), "CosineConv2d: expected 4 input channels, got 3"),
    (lambda: CosineConv2d(4, 2, 3)(torch.randn(4, 5, 5)), "CosineConv2d: expected a 4-D input"),
    (lambda: CosineConv2d(4, 3, 3, groups=2), "CosineConv2d: .*divisible by groups"),
    (lambda: CosineConv2d(4, 2, 3, stride=2, padding="same"), "CosineConv2d: padding='same' needs stride 1"),
    (lambda: CosineLinear(4, 2, eps=0.0), "CosineLinear: eps must be > 0"),
    (lambda: PositionalNorm(4)(torch.randn(2, 3, 5, 5)), "PositionalNorm: expected 4 channels, got 3"),
    (lambda: PositionalNorm(4)(torch.randn(2, 4)), "PositionalNorm: expected input .* at least one spatial dim"),
    (lambda: PositionalNorm()(torch.randn(2, 1, 5)), "PositionalNorm: the unbiased variance .* C >= 2"),
    (lambda: PositionalNorm(3, affine=True, input_size=(4, 4))(torch.randn(1, 3, 4, 5)),
     r"PositionalNorm: expected spatial shape \(4, 4\)"),
    (lambda: PositionalNorm(3, affine=True), "PositionalNorm: affine=True needs input_size"),
    (lambda: MomentShortcut(dynamic=True), "MomentShortcut: the dynamic form .* needs num_features"),
    (lambda: MomentShortcut(3, dynamic=True, kernel_size=2), "MomentShortcut: kernel_size must be odd"),
    (lambda: MomentShortcut(3)(torch.randn(1, 4, 2, 2), torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)),
     "MomentShortcut: expected 3 channels, got 4"),
    (lambda: MomentShortcut()(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 1, 2, 2)),
     r"MomentShortcut: mean must have shape \(1, 1, 2, 2\)"),
    (lambda: MomentShortcut(2, dynamic=True)(torch.randn(1, 2, 3), torch.randn(1, 1, 3), torch.randn(1, 1, 3)),
     r"MomentShortcut: expected input \(N, C, H, W\)"),
])
def test_errors_name_the_layer(call, match):
    with pytest.raises(ValueError, match=match):
        call()
