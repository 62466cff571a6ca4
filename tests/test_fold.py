"""normexport.fold: BN family into conv/linear weights (after / before), weight norm, cosine
norm; refusals with their reasons; the export with and without folding (NORMS.md "What parity
means": a folded model equals the unfolded one within the float32 / float16 bounds)."""

import copy
import re

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import normexport
from normexport import registry
from normexport.fold import FoldedBN, FoldReport, PrenormalizedCosineConv2d, PrenormalizedCosineLinear, formulas
from normexport.nn import CosineConv2d, CosineLinear, cosine
from normexport.reference import _conv
from normexport.reference import batchnorm as bn_ref
from normexport.spec import DEFAULT_TOLERANCES, Fold, Tolerance, np64

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randomize_bn(bn, seed=3, zero_shift=False):
    g = _gen(seed)
    c = bn.num_features
    with torch.no_grad():
        if zero_shift:
            bn.running_mean.zero_()
        else:
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g) * 1.5)
        if bn.weight is not None:
            bn.weight.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.copy_(torch.zeros(c) if zero_shift else torch.randn(c, generator=g) * 0.3)
    return bn


def _randomize(layer, seed=2):
    g = _gen(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return layer


# kind -> (layer factory (bias, padding), input shape, BN class); the BN has the layer's output
# channels ("after") or its input channels ("before")
LAYERS = {
    "conv1d": (lambda b, p: nn.Conv1d(4, 6, 3, padding=p, bias=b), (2, 4, 9), nn.BatchNorm1d),
    "conv2d": (lambda b, p: nn.Conv2d(4, 6, 3, stride=2, padding=p, bias=b), (2, 4, 7, 6), nn.BatchNorm2d),
    "conv2d_g2": (lambda b, p: nn.Conv2d(4, 6, 3, padding=p, groups=2, bias=b), (2, 4, 6, 5), nn.BatchNorm2d),
    "conv2d_dw": (lambda b, p: nn.Conv2d(4, 8, 3, padding=p, groups=4, bias=b), (2, 4, 6, 5), nn.BatchNorm2d),
    "conv3d": (lambda b, p: nn.Conv3d(4, 6, 3, padding=p, bias=b), (2, 4, 4, 5, 4), nn.BatchNorm3d),
    "convT2d": (lambda b, p: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=p, output_padding=1, bias=b),
                (2, 4, 4, 5), nn.BatchNorm2d),
    "convT2d_g2": (lambda b, p: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=p, groups=2, bias=b),
                   (2, 4, 4, 5), nn.BatchNorm2d),
    "convT2d_dw": (lambda b, p: nn.ConvTranspose2d(4, 4, 3, padding=p, groups=4, bias=b), (2, 4, 5, 5),
                   nn.BatchNorm2d),
    "linear": (lambda b, p: nn.Linear(4, 6, bias=b), (3, 4), nn.BatchNorm1d),
}
CASES = [(k, pos) for k in LAYERS for pos in ("after", "before") if not (k.startswith("convT") and pos == "before")]


def _model(kind, position, bias, affine):
    make, shape, bn_cls = LAYERS[kind]
    # "before": no zero padding (the fold is exact only then); "after": padded, any padding is fine
    layer = _randomize(make(bias, 0 if position == "before" else 1))
    channels = shape[1] if position == "before" else _out_channels(layer)
    bn = _randomize_bn(bn_cls(channels, affine=affine))
    model = nn.Sequential(layer, bn) if position == "after" else nn.Sequential(bn, layer)
    x = torch.randn(shape, generator=_gen(5)) * 2 + 0.5
    return model.eval(), x


def _out_channels(layer):
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _check(actual, expected, dtype):
    """NORMS.md bounds relative to the unfolded output: max |folded - unfolded| <= atol + rtol
    max |unfolded| (float32 1e-5 / 1e-6, float16 1e-2 / 1e-3). Normwise, not elementwise: a
    fold changes the rounding of every sum, and at cancellation points (|y| << the sum of
    |w x|) the elementwise relative error of a rounded sum is unbounded; even the unfolded
    float16 model misses elementwise bounds against its own float64 reference there. The
    exactness of the formulas is checked in float64 (test_fold_formulas_against_...)."""
    a, e = actual.detach().double().numpy(), expected.detach().double().numpy()
    tol = DEFAULT_TOLERANCES[dtype]
    tol = Tolerance(rtol=0.0, atol=tol.atol + tol.rtol * float(np.abs(e).max()))
    res = normexport.compare([a], [e], tolerance=tol)
    assert res, str(res)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind,position", CASES)
def test_bn_folded_equals_unfolded(kind, position, bias, affine, dtype):
    model, x = _model(kind, position, bias, affine)
    model, x = model.to(DTYPES[dtype]), x.to(DTYPES[dtype])
    folded, report = normexport.fold_with_report(model, x)
    bn_i, layer_i = (1, 0) if position == "after" else (0, 1)
    assert report.folded == [FoldedBN(str(bn_i), str(layer_i), position)] and not report.refused, str(report)
    assert isinstance(folded[bn_i], nn.Identity)
    layer = folded[layer_i]
    assert layer.weight.dtype == layer.bias.dtype == DTYPES[dtype]  # bias created when absent
    assert not folded.training
    with torch.no_grad():
        _check(folded(x), model(x), dtype)


def _conv_transpose_ref(x, w, b, stride, padding, output_padding, groups):
    """Float64 numpy transposed convolution from its definition: input position i scatters
    x[c, i] * w[c, o, k] to output position i * stride + k - padding."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nsp = x.ndim - 2
    cin_g, cout_g = w.shape[0] // groups, w.shape[1]
    full = [(x.shape[2 + d] - 1) * stride[d] + w.shape[2 + d] + output_padding[d] for d in range(nsp)]
    y = np.zeros((x.shape[0], cout_g * groups, *full))
    for g in range(groups):
        xg, wg = x[:, g * cin_g:(g + 1) * cin_g], w[g * cin_g:(g + 1) * cin_g]
        for k in np.ndindex(*w.shape[2:]):
            contrib = np.einsum("nc...,co->no...", xg, wg[(slice(None), slice(None)) + k])
            idx = tuple(slice(k[d], k[d] + stride[d] * (x.shape[2 + d] - 1) + 1, stride[d]) for d in range(nsp))
            y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + idx] += contrib
    crop = tuple(slice(padding[d], full[d] - padding[d]) for d in range(nsp))
    y = y[(slice(None), slice(None)) + crop]
    return y if b is None else y + np.asarray(b).reshape((1, -1) + (1,) * nsp)


def _layer_ref(layer, x):
    w, b = np64(layer.weight), np64(layer.bias)
    if isinstance(layer, nn.Linear):
        y = x @ w.T
        return y if b is None else y + b
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return _conv_transpose_ref(x, w, b, layer.stride, layer.padding, layer.output_padding, layer.groups)
    return _conv.conv(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode)


@pytest.mark.parametrize("kind,position", CASES)
def test_fold_formulas_against_float64_composition(kind, position):
    """Float64 end to end: the folded layer's output vs conv/linear and BN composed
    explicitly in numpy (reference conv from its definition, BN eval formula)."""
    model, x = _model(kind, position, bias=True, affine=True)
    model, x = model.double(), x.double()
    folded = normexport.fold(model, x)
    bn = model[1] if position == "after" else model[0]
    layer = model[0] if position == "after" else model[1]
    bn_eval = lambda v: bn_ref.batch_norm_eval(v, np64(bn.weight), np64(bn.bias), np64(bn.running_mean),
                                               np64(bn.running_var), bn.eps)
    xn = x.numpy()
    expected = bn_eval(_layer_ref(layer, xn)) if position == "after" else _layer_ref(layer, bn_eval(xn))
    with torch.no_grad():
        got = folded(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # the folded layer alone, through the numpy reference too
    new_layer = folded[0] if position == "after" else folded[1]
    np.testing.assert_allclose(_layer_ref(new_layer, xn), expected, rtol=1e-10, atol=1e-12)


def test_formulas_compute_in_float64_and_accept_numpy():
    g = _gen(0)
    w = (torch.randn(6, 4, 3, 3, generator=g)).to(torch.bfloat16)
    mean, var = np.linspace(-1, 1, 6), np.linspace(0.5, 2, 6)
    s, t = formulas.bn_scale_shift(mean, var, 1e-5, np.full(6, 1.5), np.full(6, 0.25))
    assert s.dtype == t.dtype == torch.float64
    np.testing.assert_allclose(s.numpy(), 1.5 / np.sqrt(var + 1e-5))
    w2, b2 = formulas.fold_bn_after_conv(w, None, s, t, transposed=False, groups=1)
    assert w2.dtype == b2.dtype == torch.bfloat16
    # one rounding to bfloat16 of the float64 product, not two
    exact = w.double() * s.reshape(-1, 1, 1, 1)
    assert torch.equal(w2, exact.to(torch.bfloat16))
    wl, bl = formulas.fold_bn_before_linear(np.ones((2, 6)), None, s, t)
    np.testing.assert_allclose(bl.numpy(), np.full(2, t.sum().item()))


# ---- every registry entry exported as Fold("bn") ----------------------------------------------

BN_SPECS = [s for s in registry.REGISTRY.values() if isinstance(s.export, Fold) and s.export.target == "bn"]


@pytest.mark.parametrize("spec", BN_SPECS, ids=lambda s: s.name)
def test_every_bn_family_entry_folds_after_a_conv(spec):
    bn = spec.example(6, _gen(11))
    (x_bn,) = spec.inputs(bn, 2, _gen(12))
    rank = x_bn.dim()
    conv = _randomize(getattr(nn, f"Conv{rank - 2}d")(3, 6, 3, padding=1))
    model = nn.Sequential(conv, bn).eval()
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # non-trivial stats
    x = torch.randn((2, 3) + tuple(x_bn.shape[2:]), generator=_gen(13))
    folded, report = normexport.fold_with_report(model, x)
    assert report.folded == [FoldedBN("1", "0", "after")], str(report)
    assert isinstance(folded[1], nn.Identity)
    with torch.no_grad():
        _check(folded(x), model(x), "float32")


# ---- other folds that are exact ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_bn_before_conv_with_value_padding_is_folded(mode):
    model = nn.Sequential(_randomize_bn(nn.BatchNorm2d(4)),
                          _randomize(nn.Conv2d(4, 6, 3, padding=1, padding_mode=mode))).eval()
    x = torch.randn(2, 4, 6, 5, generator=_gen(1))
    folded, report = normexport.fold_with_report(model, x)
    assert report.folded == [FoldedBN("0", "1", "before")], str(report)
    with torch.no_grad():
        _check(folded(x), model(x), "float32")


def test_bn_with_zero_shift_before_zero_padded_conv_is_folded():
    model = nn.Sequential(_randomize_bn(nn.BatchNorm2d(4), zero_shift=True),
                          _randomize(nn.Conv2d(4, 6, 3, padding=1))).eval()
    x = torch.randn(2, 4, 6, 5, generator=_gen(1))
    folded, report = normexport.fold_with_report(model, x)
    assert report.folded == [FoldedBN("0", "1", "before")], str(report)
    with torch.no_grad():
        _check(folded(x), model(x), "float32")


def test_bn_before_and_after_the_same_conv_both_folded():
    model = nn.Sequential(_randomize_bn(nn.BatchNorm2d(4)), _randomize(nn.Conv2d(4, 6, 3, groups=2)),
                          _randomize_bn(nn.BatchNorm2d(6), seed=9)).eval()
    x = torch.randn(2, 4, 6, 5, generator=_gen(1))
    folded, report = normexport.fold_with_report(model, x)
    assert report.folded == [FoldedBN("0", "1", "before"), FoldedBN("2", "1", "after")], str(report)
    with torch.no_grad():
        _check(folded(x), model(x), "float32")


@pytest.mark.parametrize("spec", list(registry.REGISTRY.values()), ids=lambda s: s.name)
def test_fold_keeps_every_registry_layer_output(spec):
    layer = spec.example(6, _gen(0)).eval()
    xs = spec.inputs(layer, 2, _gen(1))
    folded, report = normexport.fold_with_report(layer, *xs)
    with torch.no_grad():
        a, e = folded(*xs), layer(*xs)
    for u, v in zip(*(t if isinstance(t, tuple) else (t,) for t in (a, e))):
        _check(u, v, "float32")
    if spec in BN_SPECS:  # alone: nothing to fold into, said so
        assert [r.module for r in report.refused] == [""] and "alone" in report.refused[0].reason
    if spec.name.startswith("cosine"):  # the root itself is replaced
        assert isinstance(folded, (PrenormalizedCosineLinear, PrenormalizedCosineConv2d))
    if spec.name == "weightnorm":
        assert not parametrize.is_parametrized(folded) and parametrize.is_parametrized(layer)


class _Branchy(nn.Module):
    """Python control flow on the input's shape: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = _randomize(nn.Conv2d(3, 4, 3, padding=1))
        self.bn = _randomize_bn(registry.REGISTRY["batch_renorm"].example(4, _gen(0)))

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 0.5
        return torch.relu(self.bn(self.conv(x)))


def test_adjacency_falls_back_to_torch_export():
    model = _Branchy().eval()
    x = torch.randn(2, 3, 5, 5, generator=_gen(2))
    folded, report = normexport.fold_with_report(model, x)
    assert report.adjacency == "torch.export"
    assert report.folded == [FoldedBN("bn", "conv", "after")], str(report)
    with torch.no_grad():
        _check(folded(x), model(x), "float32")


# ---- refusals ---------------------------------------------------------------------------------

class _ConvUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = _randomize(nn.Conv2d(3, 4, 3, padding=1))
        self.bn = _randomize_bn(nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _randomize(nn.Conv2d(3, 4, 3, padding=1))
        self.conv2 = _randomize(nn.Conv2d(4, 4, 3, padding=1), seed=4)
        self.bn = _randomize_bn(nn.BatchNorm2d(4))

    def forward(self, x):
        return self.bn(self.conv2(self.bn(self.conv1(x))))


REFUSALS = {
    "bn_before_zero_padded_conv": (
        lambda: nn.Sequential(_randomize_bn(nn.BatchNorm2d(3)), _randomize(nn.Conv2d(3, 4, 3, padding=1))),
        "0", r"before: 1 \(Conv2d\) zero-pads its input"),
    "conv_output_used_twice": (_ConvUsedTwice, "bn", r"after: the output of conv is also used by op add"),
    "shared_bn": (_SharedBN, "bn", r"called 2 times \(a shared module is never folded\)"),
    "bn_before_conv_transpose": (
        lambda: nn.Sequential(_randomize_bn(nn.BatchNorm2d(3)), _randomize(nn.ConvTranspose2d(3, 4, 3))),
        "0", r"before: 1 \(ConvTranspose2d\) follows it: a BN before a ConvTranspose is not folded"),
    "bn_after_relu": (
        lambda: nn.Sequential(_randomize(nn.Conv2d(3, 3, 1)), nn.ReLU(), _randomize_bn(nn.BatchNorm2d(3))),
        "2", r"after: its input comes from module 1, not a Conv"),
    "no_running_stats": (
        lambda: nn.Sequential(_randomize(nn.Conv2d(3, 4, 1)), nn.BatchNorm2d(4, track_running_stats=False)),
        "1", r"no running statistics"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_folds_leave_the_bn_and_say_why(case):
    make, bn_path, reason = REFUSALS[case]
    model = make().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 6, 5, generator=_gen(3))
    folded, report = normexport.fold_with_report(model, x)
    assert [r.module for r in report.refused] == [bn_path], str(report)
    assert re.search(reason, report.refused[0].reason), report.refused[0].reason
    assert not report.folded
    assert isinstance(folded.get_submodule(bn_path), nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        _check(folded(x), model(x), "float32")
    assert bn_path in str(report) and "not folded" in str(report)
    # the user's model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_users_model_is_untouched():
    model, x = _model("conv2d", "after", bias=False, affine=True)
    model.train()
    before = copy.deepcopy(model.state_dict())
    folded = normexport.fold(model, x)
    assert model.training and isinstance(model[1], nn.BatchNorm2d) and model[0].bias is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not folded.training and isinstance(folded[1], nn.Identity)


# ---- weight norm, cosine norm ----------------------------------------------------------------

@pytest.mark.parametrize("dim", [0, 1, None])
@pytest.mark.parametrize("kind", ["conv2d", "linear"])
def test_weight_norm_folded_into_plain_weight(kind, dim):
    layer = nn.Conv2d(4, 6, 3, padding=1) if kind == "conv2d" else nn.Linear(4, 6)
    layer = nn.utils.parametrizations.weight_norm(_randomize(layer), dim=dim)
    with torch.no_grad():
        layer.parametrizations.weight.original0.mul_(1.7)
    bn = _randomize_bn((nn.BatchNorm2d if kind == "conv2d" else nn.BatchNorm1d)(6))
    model = nn.Sequential(layer, bn).eval()
    x = torch.randn((2, 4, 5, 5) if kind == "conv2d" else (3, 4), generator=_gen(4))
    folded, report = normexport.fold_with_report(model, x)
    assert [w.module for w in report.weights] == ["0"] and not report.refused, str(report)
    assert report.folded == [FoldedBN("1", "0", "after")]  # the plain weight then takes the BN
    assert not parametrize.is_parametrized(folded[0]) and isinstance(folded[0].weight, nn.Parameter)
    assert type(folded[0]) in (nn.Conv2d, nn.Linear)
    assert parametrize.is_parametrized(model[0])  # the user's model keeps its parametrization
    with torch.no_grad():
        _check(folded(x), model(x), "float32")


@pytest.mark.parametrize("make,shape", [
    (lambda: CosineLinear(5, 4, bias=True), (3, 5)),
    (lambda: CosineConv2d(4, 6, 3, padding=1, groups=2, bias=True), (2, 4, 6, 5)),
    (lambda: CosineConv2d(4, 6, 3, padding=1, padding_mode="reflect"), (2, 4, 6, 5)),
], ids=["linear", "conv2d_g2", "conv2d_reflect"])
def test_cosine_layers_prenormalized(make, shape, monkeypatch):
    model = nn.Sequential(_randomize(make())).eval()
    with torch.no_grad():
        if model[0].bias is not None:
            model[0].bias.normal_(generator=_gen(6))
    x = torch.randn(shape, generator=_gen(5)) * 2 + 0.5
    folded, report = normexport.fold_with_report(model, x)
    assert isinstance(folded[0], (PrenormalizedCosineLinear, PrenormalizedCosineConv2d)), str(report)
    assert [w.module for w in report.weights] == ["0"]
    w64 = model[0].weight.detach().double()
    expected_w = w64 / torch.sqrt(w64.flatten(1).square().sum(1) + model[0].eps).reshape(-1, *[1] * (w64.dim() - 1))
    np.testing.assert_allclose(folded[0].weight.double().numpy(), expected_w.numpy(), rtol=1e-7, atol=0)
    with torch.no_grad():
        expected = model(x)
        # no weight normalization at run time any more
        monkeypatch.setattr(cosine, "_normalized_weight", lambda *a: pytest.fail("normalized at run time"))
        _check(folded(x), expected, "float32")


# ---- export ----------------------------------------------------------------------------------

class _ConvBnReluLinear(nn.Module):
    """conv -> bn -> relu -> flatten -> bn1d -> linear (unfoldable: the conv output also feeds
    an add, so ``bn`` cannot be folded)."""

    def __init__(self, unfoldable=False):
        super().__init__()
        self.conv = _randomize(nn.Conv2d(3, 4, 3, padding=1))
        self.bn = _randomize_bn(nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Flatten(), _randomize_bn(nn.BatchNorm1d(4 * 5 * 5)),
                                  _randomize(nn.Linear(4 * 5 * 5, 3)))
        self.unfoldable = unfoldable

    def forward(self, x):
        y = self.conv(x)
        y = torch.relu(self.bn(y) + y) if self.unfoldable else torch.relu(self.bn(y))
        return self.head(y)


def _ops(path):
    return [n.op_type for n in onnx.load(path).graph.node]


def test_export_folds_by_default(tmp_path):
    model = _ConvBnReluLinear().eval()
    x = torch.randn(2, 3, 5, 5, generator=_gen(7))
    report = normexport.export(model, x, tmp_path / "m.onnx")
    assert "BatchNormalization" not in _ops(tmp_path / "m.onnx")
    assert isinstance(report.fold, FoldReport)
    assert report.fold.folded == [FoldedBN("bn", "conv", "after"), FoldedBN("head.1", "head.2", "before")]
    assert not any("not folded" in n for n in report.notes)
    assert isinstance(model.bn, nn.BatchNorm2d)  # exported a copy
    xs = torch.randn(5, 3, 5, 5, generator=_gen(8))
    sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"], use_library=False)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: xs.numpy()})
    with torch.no_grad():
        _check(torch.from_numpy(y), model(xs), "float32")


def test_export_keeps_unfoldable_bn_and_reports_it(tmp_path):
    model = _ConvBnReluLinear(unfoldable=True).eval()
    x = torch.randn(2, 3, 5, 5, generator=_gen(7))
    report = normexport.export(model, x, tmp_path / "m.onnx")
    assert _ops(tmp_path / "m.onnx").count("BatchNormalization") == 1
    assert [r.module for r in report.fold.refused] == ["bn"]
    assert report.fold.folded == [FoldedBN("head.1", "head.2", "before")]
    (note,) = [n for n in report.notes if n.startswith("not folded")]
    assert "bn" in note and "also used by" in note
    sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"], use_library=False)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        _check(torch.from_numpy(y), model(x), "float32")


def test_export_without_fold_keeps_batchnorm(tmp_path):
    model = _ConvBnReluLinear().eval()
    report = normexport.export(model, torch.randn(2, 3, 5, 5), tmp_path / "m.onnx", fold=False)
    # head.1 stays a BatchNormalization (torch's ONNX optimizer itself fuses the BN after the
    # Conv into it, but nothing fuses a BN before a Gemm)
    assert _ops(tmp_path / "m.onnx").count("BatchNormalization") == 1
    assert report.fold is None


def test_gemm_formulas_against_float64_composition():
    """formulas.fold_bn_after_gemm / fold_bn_before_gemm (ONNX Gemm: alpha, beta, transB, C
    broadcast over rows) in float64 vs the composition in numpy."""
    rng = np.random.default_rng(7)
    A, C = rng.standard_normal((3, 4)), rng.standard_normal((3, 1))
    s5, t5, s4, t4 = rng.random(5) + .5, rng.standard_normal(5), rng.random(4) + .5, rng.standard_normal(4)
    for trans_b in (False, True):
        B = rng.standard_normal((5, 4) if trans_b else (4, 5))
        opB = B.T if trans_b else B
        b2, c2 = formulas.fold_bn_after_gemm(B, C, s5, t5, alpha=0.7, beta=1.3, trans_b=trans_b)
        op2 = b2.numpy().T if trans_b else b2.numpy()
        np.testing.assert_allclose(A @ op2 + c2.numpy(), (0.7 * A @ opB + 1.3 * C) * s5 + t5, rtol=1e-12, atol=1e-12)
        b3, c3 = formulas.fold_bn_before_gemm(B, C, s4, t4, alpha=0.7, beta=1.3, trans_b=trans_b)
        op3 = b3.numpy().T if trans_b else b3.numpy()
        np.testing.assert_allclose(A @ op3 + c3.numpy(), 0.7 * (A * s4 + t4) @ opB + 1.3 * C, rtol=1e-12, atol=1e-12)
        assert b2.shape == B.shape and b3.shape == B.shape
