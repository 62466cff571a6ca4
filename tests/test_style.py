"""Conditional / style family specifics (NORMS.md rows 11, 15-18: Switchable Norm, conditional
BN, conditional IN, AdaIN, SPADE) against the float64 references of
normexport.reference.style. The generic registry tests are in test_layers.py, the
cross-process ones in test_distributed_style.py."""

import copy

import numpy as np
import pytest
import torch

from normexport import registry
from normexport.nn import (SPADE, AdaIN, CategoricalConditionalBatchNorm2d, ConditionalBatchNorm2d,
                           ConditionalInstanceNorm2d, SwitchableNorm1d, SwitchableNorm2d,
                           adaptive_instance_norm)
from normexport.reference import style as ref
from normexport.spec import np64

TOL = dict(rtol=1e-10, atol=1e-12)
FAMILY = ["switchable_norm", "conditional_bn", "conditional_bn_embedding", "conditional_in", "adain", "spade"]
BN_BRANCH = ["switchable_norm", "conditional_bn", "conditional_bn_embedding", "spade"]


def _close(actual, expected, msg=""):
    a = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(a, expected, err_msg=msg, **TOL)


def _randn(gen, *shape, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift


def _np(ts):
    return tuple(np64(t) if t.is_floating_point() else t.numpy() for t in ts)


def _set_running(owner, gen, c):
    with torch.no_grad():
        owner.running_mean.copy_(_randn(gen, c, scale=0.5))
        owner.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=torch.float64))
        owner.num_batches_tracked.fill_(4)


def _buffers(m):
    return {k: v.double().numpy() for k, v in m.named_buffers()}


def _check_buffers(m, expected):
    got = _buffers(m)
    assert expected, "the reference updates no buffer"
    for k, e in expected.items():
        _close(got[k], e, k)


# ---- Switchable Norm ------------------------------------------------------------------------

def _sn2d(gen, c=3, **kw):
    m = SwitchableNorm2d(c, **kw).double()
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(c, generator=gen, dtype=torch.float64))
        m.bias.copy_(_randn(gen, c, scale=0.3))
    if m.using_bn:
        _set_running(m, gen, c)
    return m


@pytest.mark.parametrize("branch", ["in", "ln", "bn"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sn_softmax_extremes_reduce_to_in_ln_bn(branch, mode):
    """lambda = (0, -inf, -inf) etc.: softmax weights exactly one-hot -> plain IN / LN / BN."""
    gen = torch.Generator().manual_seed(11)
    m = _sn2d(gen).train(mode == "train")
    onehot = torch.full((3,), -float("inf"), dtype=torch.float64)
    onehot[m.branches.index(branch)] = 0.0
    with torch.no_grad():
        m.mean_weight.copy_(onehot)
        m.var_weight.copy_(onehot)
    before = copy.deepcopy(m)
    x = _randn(gen, 4, 3, 5, 7, scale=2.0, shift=0.5)
    y = m(x)
    xn = np64(x)
    if branch == "in":
        x_hat = ref.instance_norm(xn, m.eps)
    elif branch == "ln":
        x_hat = ref.layer_norm(xn, m.eps)
    elif mode == "train":
        mean, var, _ = ref.bn_batch_stats(xn)
        x_hat = ref.batch_norm_with(xn, mean, var, m.eps)
    else:
        x_hat = ref.batch_norm_with(xn, np64(before.running_mean), np64(before.running_var), m.eps)
    _close(y, x_hat * np64(m.weight).reshape(1, -1, 1, 1) + np64(m.bias).reshape(1, -1, 1, 1))
    if mode == "train":   # the BN branch's running stats move whatever its weight
        mean, var, count = ref.bn_batch_stats(xn)
        rm, rv, nb = ref.ema_update(np64(before.running_mean), np64(before.running_var), 4, mean, var, count, 0.1)
        _check_buffers(m, {"running_mean": rm, "running_var": rv, "num_batches_tracked": nb})
    else:
        _check_buffers(m, _buffers(before))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_sn_moving_average_over_steps(momentum):
    gen = torch.Generator().manual_seed(12)
    m = _sn2d(gen, momentum=momentum)
    spec = registry.REGISTRY["switchable_norm"]
    for step, n in enumerate([4, 2, 5]):
        x = _randn(gen, n, 3, 5, 7, scale=1.0 + step, shift=step - 1.0)
        expected = spec.reference(copy.deepcopy(m), (np64(x),), True)
        _close(m(x), expected.outputs[0], f"step {step}")
        _check_buffers(m, expected.buffers)
    x = _randn(gen, 3, 3, 5, 7)
    _close(m.eval()(x), spec.reference(m, (np64(x),), False).outputs[0])


def test_sn_batch_average_option():
    """using_moving_average=False: the buffers hold the official sn_helper average of the
    batches since reset (mean of batch means; mean of (var + mean^2) - mean^2)."""
    gen = torch.Generator().manual_seed(13)
    m = _sn2d(gen, using_moving_average=False)
    m.reset_running_stats()
    batches = [_randn(gen, 4, 3, 5, 7, scale=1.0 + i, shift=0.7 * i) for i in range(3)]
    # the official accumulation, written out: sums over the batches, then divided once
    s1 = s2 = 0.0
    for k, x in enumerate(batches, 1):
        before = copy.deepcopy(m)
        y = m(x)
        mean, var, _ = ref.bn_batch_stats(np64(x))
        s1, s2 = s1 + mean, s2 + var + mean ** 2
        _check_buffers(m, {"running_mean": s1 / k, "running_var": s2 / k - (s1 / k) ** 2,
                           "num_batches_tracked": k})
        expected = registry.REGISTRY["switchable_norm"].reference(before, (np64(x),), True)
        _close(y, expected.outputs[0])
        _check_buffers(m, expected.buffers)
    x = _randn(gen, 2, 3, 5, 7)
    _close(m.eval()(x), registry.REGISTRY["switchable_norm"].reference(m, (np64(x),), False).outputs[0])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sn1d_mixes_ln_and_bn(mode):
    gen = torch.Generator().manual_seed(14)
    m = SwitchableNorm1d(5).double().train(mode == "train")
    assert m.branches == ("ln", "bn")
    with torch.no_grad():
        m.mean_weight.copy_(_randn(gen, 2))
        m.var_weight.copy_(_randn(gen, 2))
        m.weight.copy_(_randn(gen, 5, scale=0.3, shift=1.0))
    _set_running(m, gen, 5)
    before = copy.deepcopy(m)
    x = _randn(gen, 6, 5, scale=2.0)
    y, buffers = ref.switchable_norm(np64(x), np64(m.weight), np64(m.bias), np64(m.mean_weight),
                                     np64(m.var_weight), m.eps, ("ln", "bn"), mode == "train",
                                     np64(before.running_mean), np64(before.running_var), 4, 0.1)
    _close(m(x), y)
    _check_buffers(m, buffers or _buffers(before))


def test_sn_without_bn_branch():
    gen = torch.Generator().manual_seed(15)
    m = _sn2d(gen, using_bn=False)
    assert m.branches == ("in", "ln") and not list(m.buffers())
    with torch.no_grad():
        m.mean_weight.copy_(_randn(gen, 2))
        m.var_weight.copy_(_randn(gen, 2))
    x = _randn(gen, 1, 3, 5, 7)     # batch 1 is fine: no batch statistics
    y, _ = ref.switchable_norm(np64(x), np64(m.weight), np64(m.bias), np64(m.mean_weight),
                               np64(m.var_weight), m.eps, ("in", "ln"), True)
    _close(m(x), y)
    _close(m.eval()(x), y)
    m1 = SwitchableNorm1d(4, using_bn=False).double()
    x1 = _randn(gen, 1, 4)
    _close(m1(x1), ref.layer_norm(np64(x1), m1.eps))


def test_sn1d_batch_one_in_training_is_refused():
    m = SwitchableNorm1d(4)
    with pytest.raises(ValueError, match="SwitchableNorm1d: batch statistics need more than one value"):
        m(torch.randn(1, 4))
    assert int(m.num_batches_tracked) == 0
    m.eval()(torch.randn(1, 4))   # eval: running statistics


@pytest.mark.parametrize("name", BN_BRANCH)
def test_one_value_per_channel_in_training_is_refused(name):
    """Batch 1 with 1x1 maps: no batch statistics; 2d layers accept batch 1 with larger maps
    (torch's BatchNorm2d does too), hence min_train_batch = 1 for these entries."""
    spec = registry.REGISTRY[name]
    m = spec.example(4, torch.Generator().manual_seed(0))
    assert spec.min_train_batch == 1
    _, *rest = spec.inputs(m, 1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"^{type(m).__name__}: batch statistics need more than one value"):
        m(torch.randn(1, 4, 1, 1), *rest)
    m.eval()(torch.randn(1, 4, 1, 1), *rest)


# ---- Conditional BN -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["conditional_bn", "conditional_bn_embedding"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_cbn_forms_and_running_stats_over_steps(name, momentum):
    spec = registry.REGISTRY[name]
    gen = torch.Generator().manual_seed(21)
    m = spec.example(3, gen).double()
    m.momentum = momentum
    for step, n in enumerate([4, 3, 6]):
        x, cond = spec.inputs(m, n, gen)
        x = x.double() * (1 + step)
        inputs = (x, cond.double() if cond.is_floating_point() else cond)
        expected = spec.reference(copy.deepcopy(m), _np(inputs), True)
        _close(m(*inputs), expected.outputs[0], f"step {step}")
        _check_buffers(m, expected.buffers)
    assert int(m.num_batches_tracked) == 3 + 3
    x, cond = spec.inputs(m, 2, gen)
    inputs = (x.double(), cond.double() if cond.is_floating_point() else cond)
    _close(m.eval()(*inputs), spec.reference(m, _np(inputs), False).outputs[0])


def test_cbn_mlp_starts_as_plain_bn():
    """Zero-initialised MLP output layers: a fresh layer is BN with (gamma, beta) whatever the
    condition, and the MLP still gets a gradient."""
    gen = torch.Generator().manual_seed(22)
    m = ConditionalBatchNorm2d(3, 5, hidden_features=7).double()
    with torch.no_grad():
        m.weight.copy_(_randn(gen, 3, scale=0.3, shift=1.0))
        m.bias.copy_(_randn(gen, 3, scale=0.3))
    x, cond = _randn(gen, 4, 3, 5, 7, scale=2.0), _randn(gen, 4, 5, scale=3.0)
    y = m(x, cond)
    mean, var, _ = ref.bn_batch_stats(np64(x))
    x_hat = ref.batch_norm_with(np64(x), mean, var, m.eps)
    _close(y, x_hat * np64(m.weight).reshape(1, -1, 1, 1) + np64(m.bias).reshape(1, -1, 1, 1))
    y.square().sum().backward()
    assert m.mlp_gamma[-1].weight.grad.abs().sum() > 0 and m.mlp_beta[-1].weight.grad.abs().sum() > 0


def test_cbn_linear_condition_and_no_running_stats():
    """hidden_features=None (one linear map, BigGAN-like); track_running_stats=False: batch
    statistics in eval too, no buffers."""
    gen = torch.Generator().manual_seed(23)
    m = ConditionalBatchNorm2d(3, 4, track_running_stats=False).double()
    assert len(m.mlp_gamma) == 1 and not list(m.buffers())
    for p in m.parameters():
        with torch.no_grad():
            p.copy_(_randn(gen, *p.shape, scale=0.5))
    x, cond = _randn(gen, 5, 3, 3, 5), _randn(gen, 5, 4)
    expected = registry.REGISTRY["conditional_bn"].reference(m, _np((x, cond)), True).outputs[0]
    _close(m(x, cond), expected)
    _close(m.eval()(x, cond), expected)


# ---- Conditional IN -------------------------------------------------------------------------

def _cin(gen, c=3, s=4):
    m = ConditionalInstanceNorm2d(c, s).double()
    with torch.no_grad():
        m.weight.copy_(_randn(gen, s, c, scale=0.4, shift=1.0))
        m.bias.copy_(_randn(gen, s, c, scale=0.4))
    return m


def test_cin_one_hot_mix_equals_index():
    gen = torch.Generator().manual_seed(31)
    m = _cin(gen)
    x = _randn(gen, 5, 3, 5, 7, scale=2.0)
    idx = torch.tensor([0, 3, 1, 1, 2])
    by_index = m(x, idx)
    np.testing.assert_array_equal(m(x, torch.nn.functional.one_hot(idx, 4).double()).detach().numpy(),
                                  by_index.detach().numpy())
    _close(by_index, ref.conditional_instance_norm(np64(x), np64(m.weight), np64(m.bias), idx.numpy(), m.eps))
    _close(m.eval()(x, idx), by_index.detach().numpy())   # no running statistics


def test_cin_style_mix_is_convex_combination():
    gen = torch.Generator().manual_seed(32)
    m = _cin(gen)
    x = _randn(gen, 3, 3, 5, 7)
    w = torch.softmax(_randn(gen, 3, 4), dim=1)
    _close(m(x, w), ref.conditional_instance_norm(np64(x), np64(m.weight), np64(m.bias), np64(w), m.eps))
    # halfway between styles 0 and 2: gamma/beta are the mean of their rows
    half = torch.tensor([[0.5, 0.0, 0.5, 0.0]] * 3, dtype=torch.float64)
    g = 0.5 * (np64(m.weight[0]) + np64(m.weight[2]))
    b = 0.5 * (np64(m.bias[0]) + np64(m.bias[2]))
    _close(m(x, half), ref.instance_norm(np64(x), m.eps) * g.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1))
    assert torch.autograd.gradcheck(lambda x, w: m(x, w), (x[:2, :, :3, :4].clone().requires_grad_(),
                                                           w[:2].clone().requires_grad_()))


# ---- AdaIN ----------------------------------------------------------------------------------

def test_adain_output_has_style_mean_and_std():
    gen = torch.Generator().manual_seed(41)
    content = _randn(gen, 2, 3, 9, 11, scale=2.0, shift=1.0)
    style = _randn(gen, 2, 3, 6, 5, scale=0.4, shift=-2.0) * torch.rand(2, 3, 1, 1, generator=gen, dtype=torch.float64)
    s_mean, s_var = ref.moments(np64(style), (2, 3))
    y = np64(adaptive_instance_norm(content, style, eps=0.0))
    o_mean, o_var = ref.moments(y, (2, 3))
    _close(o_mean, s_mean)
    _close(np.sqrt(o_var), np.sqrt(s_var))
    # with eps (default 1e-5) the output std is sqrt(var_s + eps) * sqrt(var_c / (var_c + eps))
    c_mean, c_var = ref.moments(np64(content), (2, 3))
    y = np64(AdaIN(3)(content, style))
    o_mean, o_var = ref.moments(y, (2, 3))
    _close(o_mean, s_mean)
    _close(np.sqrt(o_var), np.sqrt(s_var + 1e-5) * np.sqrt(c_var / (c_var + 1e-5)))


@pytest.mark.parametrize("shape,style_shape", [((2, 3, 9, 11), (2, 3, 7, 13)), ((3, 4, 10), (3, 4, 7)),
                                               ((2, 2, 3, 4, 5), (2, 2, 5, 3, 3))])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_adain_matches_reference(shape, style_shape, alpha):
    gen = torch.Generator().manual_seed(42)
    content, style = _randn(gen, *shape, scale=1.5, shift=0.2), _randn(gen, *style_shape, scale=0.7, shift=-1.0)
    expected = ref.adaptive_instance_norm(np64(content), np64(style), 1e-3, alpha)
    _close(AdaIN(shape[1], eps=1e-3, alpha=alpha)(content, style), expected)
    _close(adaptive_instance_norm(content, style, 1e-3, alpha), expected)


def test_adain_of_content_with_itself_is_identity():
    """Same eps for content and style (the paper's sigma): AdaIN(x, x) = x."""
    x = _randn(torch.Generator().manual_seed(43), 2, 3, 5, 7, scale=3.0, shift=1.0)
    _close(AdaIN()(x, x), np64(x))


# ---- SPADE ----------------------------------------------------------------------------------

def _spade(gen, norm, **kw):
    m = SPADE(3, 2, norm=norm, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(_randn(gen, *p.shape, scale=0.3))
    if norm == "batch":
        _set_running(m.param_free_norm, gen, 3)
    return m


def _onehot_map(gen, n, label_nc, h, w):
    labels = torch.randint(0, label_nc, (n, h, w), generator=gen)
    return torch.nn.functional.one_hot(labels, label_nc).permute(0, 3, 1, 2).double()


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("seg_hw", [(9, 11), (17, 23), (4, 5)], ids=["same", "down", "up"])
def test_spade_matches_reference(norm, seg_hw):
    gen = torch.Generator().manual_seed(51)
    spec = registry.REGISTRY["spade"]
    m = _spade(gen, norm, hidden_features=5, kernel_size=5 if seg_hw == (4, 5) else 3)
    x = _randn(gen, 3, 3, 9, 11, scale=2.0, shift=0.5)
    seg = _onehot_map(gen, 3, 2, *seg_hw)
    for mode in ["train", "eval"]:
        m.train(mode == "train")
        expected = spec.reference(copy.deepcopy(m), _np((x, seg)), mode == "train")
        _close(m(x, seg), expected.outputs[0], mode)
        if mode == "train" and norm == "batch":
            _check_buffers(m, expected.buffers)


def test_spade_nearest_resize_is_floor_index():
    """The reference's resize: src = floor(dst * in / out) (torch's "nearest"), e.g. 4 -> 9."""
    m = np.arange(4.0).reshape(1, 1, 4, 1)
    np.testing.assert_array_equal(ref.nearest_resize(m, (9, 1)).ravel(), [0, 0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(ref.nearest_resize(np.arange(9.0).reshape(1, 1, 1, 9), (1, 4)).ravel(),
                                  [0, 2, 4, 6])


def test_spade_state_dict_names_match_official():
    keys = set(SPADE(4, 3).state_dict())
    assert keys == {"param_free_norm.running_mean", "param_free_norm.running_var",
                    "param_free_norm.num_batches_tracked", "mlp_shared.0.weight", "mlp_shared.0.bias",
                    "mlp_gamma.weight", "mlp_gamma.bias", "mlp_beta.weight", "mlp_beta.bias"}
    assert SPADE(4, 3).mlp_gamma.in_channels == 128 and SPADE(4, 3).mlp_gamma.kernel_size == (3, 3)
    assert set(SPADE(4, 3, norm="instance").state_dict()) == keys - {
        "param_free_norm.running_mean", "param_free_norm.running_var", "param_free_norm.num_batches_tracked"}


# ---- registry examples and errors -----------------------------------------------------------

@pytest.mark.parametrize("name", BN_BRANCH)
def test_examples_eval_differs_from_train(name):
    spec = registry.REGISTRY[name]
    gen = torch.Generator().manual_seed(61)
    m = spec.example(4, gen).double()
    inputs = tuple(t.double() if t.is_floating_point() else t for t in spec.inputs(m, 4, gen))
    with torch.no_grad():
        diff = (m.eval()(*inputs) - copy.deepcopy(m).train()(*inputs)).abs().max().item()
    assert diff > 1e-2


@pytest.mark.parametrize("name", FAMILY)
def test_wrong_channel_count_names_the_layer(name):
    spec = registry.REGISTRY[name]
    m = spec.example(4, torch.Generator().manual_seed(0))
    x, *rest = spec.inputs(m, 2, torch.Generator().manual_seed(0))
    bad = torch.randn(x.shape[0], 5, *x.shape[2:])
    if name == "adain":   # content and style must agree, and match num_features
        rest = [torch.randn(2, 5, 4, 4)]
    with pytest.raises(ValueError, match=rf"^{type(m).__name__}: .*4 channels, got 5"):
        m(bad, *rest)


@pytest.mark.parametrize("layer,bad,match", [
    (lambda: CategoricalConditionalBatchNorm2d(3, 4), torch.tensor([0, 4]),
     r"CategoricalConditionalBatchNorm2d: labels must be in \[0, 3\].*got values in \[0, 4\]"),
    (lambda: CategoricalConditionalBatchNorm2d(3, 4), torch.tensor([-1, 2]),
     r"CategoricalConditionalBatchNorm2d: labels must be in \[0, 3\]"),
    (lambda: CategoricalConditionalBatchNorm2d(3, 4), torch.tensor([0.0, 1.0]),
     r"CategoricalConditionalBatchNorm2d: labels must be an integer tensor"),
    (lambda: CategoricalConditionalBatchNorm2d(3, 4), torch.tensor([0, 1, 2]),
     r"CategoricalConditionalBatchNorm2d: expected labels of shape \(2,\)"),
    (lambda: ConditionalInstanceNorm2d(3, 2), torch.tensor([2, 0]),
     r"ConditionalInstanceNorm2d: style indices must be in \[0, 1\]"),
    (lambda: ConditionalInstanceNorm2d(3, 2), torch.ones(2, 3),
     r"ConditionalInstanceNorm2d: expected style weights of shape \(2, 2\)"),
    (lambda: ConditionalBatchNorm2d(3, 5), torch.randn(2, 4),
     r"ConditionalBatchNorm2d: expected cond of shape \(2, 5\)"),
    (lambda: SPADE(3, 2), torch.randn(2, 3, 4, 4), r"SPADE: expected segmap with 2 channels, got 3"),
    (lambda: SPADE(3, 2), torch.randn(1, 2, 4, 4), r"SPADE: segmap batch 1 differs"),
    (lambda: AdaIN(3), torch.randn(2, 3, 4), r"AdaIN: content and style need the same"),
])
def test_bad_condition_is_refused_with_the_layer_name(layer, bad, match):
    m = layer()
    before = copy.deepcopy(dict(m.named_buffers()))
    with pytest.raises(ValueError, match=match):
        m(torch.randn(2, 3, 5, 5), bad)
    for k, v in m.named_buffers():   # a refused call leaves the running statistics alone
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("make,match", [
    (lambda: SPADE(3, 2, kernel_size=4), r"SPADE: kernel_size must be odd"),
    (lambda: SPADE(3, 2, norm="group"), r"SPADE: norm must be 'batch' or 'instance'"),
    (lambda: SPADE(3, 2, norm="instance").__setattr__("process_group", object()), r"SPADE: process_group"),
    (lambda: AdaIN(3, alpha=1.5), r"AdaIN: alpha"),
    (lambda: SwitchableNorm2d(3, momentum=2.0), r"SwitchableNorm2d: momentum"),
    (lambda: SwitchableNorm2d(3)(torch.randn(2, 3, 4)), r"SwitchableNorm2d: expected a 4-D input"),
])
def test_bad_configuration_is_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()
