"""normexport.fp16audit: the clean reference networks pass; a planted float16-overflowing
variance (BN after scaled conv weights, LayerNorm on a huge input), a near-zero-variance channel
with a large gamma (folded scale beyond float16) and a near-constant channel (precision loss)
are flagged "keep float32" naming the layer and the reason; the measured numbers are the
layer's; ``normexport audit-fp16``."""

import copy
import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from normexport import cli, registry
from normexport.calibrate import recalibrate
from normexport.fp16audit import FP16_MAX, fp16_audit
from normexport.graphs import GRAPHS


@pytest.mark.parametrize("name", list(GRAPHS))
def test_clean_graphs_pass(name):
    model, example = GRAPHS[name]()
    report = fp16_audit(model, example)
    assert report.ok, report.format()
    assert report.rows and all(r.calls >= 1 and r.fp16_error is not None for r in report.rows)
    assert all(r.fp16_error < 1e-2 for r in report.rows)
    json.dumps(report.to_dict())


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_every_registry_layer(name):
    spec = registry.REGISTRY[name]
    gen = torch.Generator().manual_seed(0)
    layer = spec.example(4, gen).eval()
    inputs = spec.inputs(layer, 3, gen)
    report = fp16_audit(layer, inputs)
    row = report.rows[0]
    assert report.ok and row.calls == 1 and row.fp16_error < 1e-2, report.format()
    x = inputs[0].double()
    assert row.input_absmax == pytest.approx(max(float(t.double().abs().max()) for t in inputs
                                                 if t.is_floating_point()), rel=1e-9)
    if name == "lrn":                             # the channel window of torch's LRN
        n, c = layer.size, x.shape[1]
        sq = x.square()
        win = max(float(sq[:, max(0, i - n // 2):i + (n - 1) // 2 + 1].sum(1).max()) for i in range(c))
        assert row.sumsq_max == pytest.approx(win, rel=1e-9)
    if name == "pono":
        assert row.stat_max == pytest.approx(float(x.var(1, correction=0).max()), rel=1e-9)


@pytest.fixture(scope="module")
def resnet():
    model, _ = GRAPHS["resnet18_bn"]()
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    return model, data


def test_planted_huge_variance_before_bn(resnet):
    model, data = resnet
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.stages[1][0].conv2.weight.mul_(1000.0)      # BN input variance x 1e6
    x = data[0][:4]
    stale = fp16_audit(m, (x,))                    # running stats still the old ones
    assert [r.path for r in stale.keep_float32][0] == "stages.1.0.norm2"
    assert any("variance of the input" in s for s in stale.row("stages.1.0.norm2").reasons)

    recalibrate(m, data)                           # running variance now beyond float16 too
    report = fp16_audit(m, (x,))
    assert not report.ok
    assert [r.path for r in report.keep_float32] == ["stages.1.0.norm2"], report.format()
    row = report.row("stages.1.0.norm2")
    assert row.running_var_max > FP16_MAX and row.data_var_max > FP16_MAX
    assert any("running variance" in s and "beyond float16 range" in s for s in row.reasons)
    assert row.running_var_max == pytest.approx(float(m.stages[1][0].norm2.running_var.max()), rel=1e-6)
    text = report.format()
    assert "keep in float32: stages.1.0.norm2" in text and "keep float32" in text
    assert report.to_dict()["keep_float32"] == ["stages.1.0.norm2"]


def test_planted_near_zero_variance_large_gamma(resnet):
    model, data = resnet
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.stages[0][0].conv2.weight[5].zero_()        # channel 5 of the BN input is constant 0
    recalibrate(m, data)
    bn = m.stages[0][0].norm2
    assert float(bn.running_var[5]) == 0.0
    assert fp16_audit(m, (data[0][:4],)).ok         # gamma ~1: scale 316, fine (a note)
    with torch.no_grad():
        bn.weight[5] = 300.0                          # 300 / sqrt(0 + 1e-5) = 94868 > 65504
    report = fp16_audit(m, (data[0][:4],))
    assert [r.path for r in report.keep_float32] == ["stages.0.0.norm2"], report.format()
    row = report.row("stages.0.0.norm2")
    assert any("folded scale" in s and "channel 5" in s for s in row.reasons)
    assert row.scale_max == pytest.approx(300 / np.sqrt(1e-5), rel=1e-6)
    assert any("near-zero variance (channel 5" in n for n in row.notes)


def test_near_constant_channel_loses_precision():
    """mean 10, std 1e-3: float16's spacing at 10 (0.0078) is larger than the spread, the
    normalised channel is noise in float16 though the folded scale (301) is in range."""
    bn = nn.BatchNorm2d(3).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, 6, generator=g)
    x[:, 1] = 10 + 1e-3 * torch.randn(4, 6, 6, generator=g)
    recalibrate(bn, [x])
    report = fp16_audit(nn.Sequential(bn), (x,))
    row = report.row("0")
    assert row.keep_float32 and row.fp16_error > 0.1
    assert any("float16 run error" in s for s in row.reasons)
    assert row.scale_max < FP16_MAX
    # the same layer on a well-spread channel is fine
    x[:, 1] = 10 + torch.randn(4, 6, 6, generator=g)
    recalibrate(bn, [x])
    assert fp16_audit(bn, x).ok


def test_per_sample_statistics():
    g = torch.Generator().manual_seed(1)
    ln = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16))
    x = torch.randn(3, 5, 16, generator=g)
    assert fp16_audit(ln, (x,)).ok
    with torch.no_grad():
        ln[0].weight.mul_(2000.0)                    # LN input variance ~ 1e6 (values < 65504)
    report = fp16_audit(ln, (x,))
    row = report.row("1")
    with torch.no_grad():
        y = ln[0](x).double()
    assert row.stat_max == pytest.approx(float(y.var(-1, correction=0).max()), rel=1e-9)
    assert row.sumsq_max == pytest.approx(float(y.square().sum(-1).max()), rel=1e-9)
    assert row.input_absmax == pytest.approx(float(y.abs().max()), rel=1e-6)
    assert row.stat_max > FP16_MAX and any("variance over the normalised dims" in s for s in row.reasons)

    # GroupNorm: a large group whose sum of squares overflows float16 but whose variance does
    # not: float32 accumulation suffices (note, verdict ok)
    gn = nn.GroupNorm(2, 8)
    x = 3 * torch.randn(2, 8, 48, 48, generator=g)
    report = fp16_audit(gn, (x,))
    row = report.rows[0]
    assert report.ok and row.sumsq_max > FP16_MAX and row.stat_max < 20
    assert any("float32 accumulation" in n for n in row.notes)
    groups = x.double().reshape(2, 2, -1)
    assert row.sumsq_max == pytest.approx(float(groups.square().sum(-1).max()), rel=1e-9)

    # input beyond float16 range
    report = fp16_audit(nn.InstanceNorm2d(3), (torch.full((1, 3, 4, 4), 7e4) + torch.randn(1, 3, 4, 4),))
    assert any("input beyond float16 range" in s for s in report.rows[0].reasons)


def test_parameters_stored_in_float16():
    """A LayerNorm weight of 7e4 is inf in float16; on a feature that always sits at the mean
    (normalised value 0) the float64 output stays finite and in range, the float16 one is NaN."""
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight[0] = 7e4
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    x[:, 0] = 0
    x[:, 1:] -= x[:, 1:].mean(1, keepdim=True)         # feature 0 == the row mean
    report = fp16_audit(ln, (x,))
    row = report.rows[0]
    assert row.output_absmax < FP16_MAX and row.input_absmax < FP16_MAX
    assert row.reasons == ["float16 run gives inf/NaN where float64 is finite"], row.reasons


def test_modes_restored_and_errors():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = m[1].running_mean.clone()
    fp16_audit(m, torch.randn(2, 3, 4, 4))
    assert m.training and m[1].training and torch.equal(m[1].running_mean, before)
    assert m[1]._forward_hooks == {} and m[1]._forward_pre_hooks == {}
    with pytest.raises(ValueError, match="no norm layer"):
        fp16_audit(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 2, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        fp16_audit("model", torch.randn(1))


# ---- CLI -----------------------------------------------------------------------------------------

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def huge():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        with torch.no_grad():
            m[4].running_var[2] = 1e5
        return m, (torch.randn(2, 3, 8, 8),)
''')


@pytest.fixture
def audit_pkg(tmp_path, monkeypatch):
    import sys
    pkg = tmp_path / "auditpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for n in [n for n in sys.modules if n.startswith("auditpkg")]:
        del sys.modules[n]
    yield tmp_path


def test_cli_audit(audit_pkg, capsys):
    assert cli.main(["audit-fp16", "normexport.graphs:resnet18_bn"]) == 0
    out = capsys.readouterr().out
    assert "every norm layer can run in float16" in out and "stages.3.1.norm2" in out
    assert cli.main(["audit-fp16", "auditpkg.models:huge", "--input-shape", "3,3,10,10"]) == 1
    out = capsys.readouterr().out
    assert "keep in float32: 4" in out and "running variance 1e+05 (channel 2)" in out
    assert cli.main(["audit-fp16", "auditpkg.models:huge", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["keep_float32"] == ["4"]
    assert cli.main(["audit-fp16", "auditpkg.models:huge", "--input-shape", "2,5,8,8"]) == 2
    assert "rejected the inputs" in capsys.readouterr().err
    assert cli.main(["audit-fp16", "auditpkg.models:nothing"]) == 2
    assert cli.main(["audit-fp16", "auditpkg.models:huge", "--input-shape", "2,x"]) == 2
