"""normexport.calibrate: train_infer_gap flags stale running statistics naming the layer;
recalibrate (precise BN, sequential eval mode) writes the exact float64 population statistics
(first layer vs numpy on the concatenated data, deeper layers vs a float64 torch run of the
recalibrated model), fixes a planted stale mean in graphs' resnet18_bn, handles every BN-family
layer of the registry, leaves other buffers and the train/eval flags alone; the
``normexport recalibrate`` CLI."""

import copy
import math
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from normexport import cli, registry
from normexport.calibrate import (DEFAULT_MEAN_THRESHOLD, DEFAULT_VAR_THRESHOLD, bn_family_layers,
                                  recalibrate, train_infer_gap)
from normexport.graphs import GRAPHS
from normexport.nn import SwitchableNorm2d


def _batches(shapes, seed=0, scale=2.0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * scale + shift for s in shapes]


def _two_bn_net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1),
                      nn.BatchNorm2d(5), nn.ReLU())
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.3)
            bn.running_mean.normal_(0, 2.0)      # stale on purpose: far from the data's
            bn.running_var.uniform_(0.1, 5.0)
            bn.num_batches_tracked.fill_(17)
    return m.eval()


def _inputs_of(model, layer, data):
    """Concatenated inputs of ``layer`` over ``data`` in eval mode (float64 numpy)."""
    seen = []
    h = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().to(torch.float64)))
    try:
        with torch.no_grad():
            model(data)
    finally:
        h.remove()
    return torch.cat(seen).numpy()


def _channel_stats(x: np.ndarray, ddof: int = 1):
    c = x.shape[1]
    v = np.moveaxis(x, 1, 0).reshape(c, -1).astype(np.float64)
    return v.mean(1), v.var(1, ddof=ddof)


# ---- recalibration exactness -------------------------------------------------------------------

def test_first_layer_equals_numpy_float64_of_concatenated_data():
    model = _two_bn_net()
    data = _batches([(3, 3, 9, 7), (5, 3, 9, 7), (7, 3, 9, 7)])   # unequal batches: Chan's formula
    conv_out = [model[0](x).detach().numpy() for x in data]         # float32, what BN 1 receives
    report = recalibrate(model, data)
    mean, var = _channel_stats(np.concatenate(conv_out).astype(np.float64), ddof=1)
    got_m = model[1].running_mean.double().numpy()
    got_v = model[1].running_var.double().numpy()
    # float32 buffers: the float64 result rounded once (at most one float32 ulp from numpy's)
    np.testing.assert_allclose(got_m, mean, rtol=2 ** -23, atol=1e-9)
    np.testing.assert_allclose(got_v, var, rtol=2 ** -23)
    assert report and report.batches == 3 and report.samples == 15
    assert report.rows[0].count == 15 * 7 * 5


def test_first_layer_float64_buffers_exact():
    model = _two_bn_net().double()
    data = [x.double() for x in _batches([(2, 3, 9, 7), (6, 3, 9, 7), (3, 3, 9, 7), (4, 3, 9, 7)], seed=3,
                                        scale=50.0, shift=1e3)]   # large mean: no E[x^2] - E[x]^2
    conv_out = np.concatenate([model[0](x).detach().numpy() for x in data])
    recalibrate(model, data)
    mean, var = _channel_stats(conv_out, ddof=1)
    np.testing.assert_allclose(model[1].running_mean.numpy(), mean, rtol=1e-13)
    np.testing.assert_allclose(model[1].running_var.numpy(), var, rtol=1e-11)


def test_deeper_layer_sees_recalibrated_upstream():
    """BN 2's statistics are those of its input in the recalibrated eval model (float64 torch
    run on the concatenated data), not of the input the stale BN 1 produced."""
    model = _two_bn_net()
    data = _batches([(4, 3, 9, 7), (6, 3, 9, 7), (5, 3, 9, 7)], seed=1)
    stale_in = _inputs_of(model, model[4], torch.cat(data))
    recalibrate(model, data)
    m64 = copy.deepcopy(model).double()
    x2 = _inputs_of(m64, m64[4], torch.cat(data).double())
    mean, var = _channel_stats(x2, ddof=1)
    np.testing.assert_allclose(model[4].running_mean.double().numpy(), mean, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(model[4].running_var.double().numpy(), var, rtol=2e-5)
    # the stale upstream would have given something else entirely
    stale_mean, _ = _channel_stats(stale_in)
    assert np.abs(stale_mean - mean).max() > 0.1
    # the fixed point: the gap after recalibration is float rounding
    gap = train_infer_gap(model, data)
    assert gap.ok and max(r.mean_gap_max for r in gap.rows) < 1e-5
    assert max(r.var_log_ratio_max for r in gap.rows) < 1e-5


def test_other_state_untouched_and_modes_restored():
    model = _two_bn_net()
    model.train()
    model[4].eval()                                      # mixed flags come back as they were
    flags = [m.training for m in model.modules()]
    params = {k: v.clone() for k, v in model.named_parameters()}
    nbt = [int(model[i].num_batches_tracked) for i in (1, 4)]
    report = recalibrate(model, _batches([(4, 3, 9, 7)] * 2))
    assert [m.training for m in model.modules()] == flags
    assert [int(model[i].num_batches_tracked) for i in (1, 4)] == nbt
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    assert report.passes == 3          # gap pass (+ layer 1), layer 2, gap after


def test_modules_selection_and_num_batches():
    model = _two_bn_net()
    before = model[4].running_mean.clone()
    data = _batches([(4, 3, 9, 7)] * 5, seed=2)
    report = recalibrate(model, data, num_batches=2, modules=["1"])
    assert torch.equal(model[4].running_mean, before)          # not selected: left alone
    assert [r.recalibrated for r in report.rows] == [True, False]
    assert report.batches == 2
    conv = np.concatenate([model[0](x).detach().numpy() for x in data[:2]])
    np.testing.assert_allclose(model[1].running_mean.double().numpy(), _channel_stats(conv)[0], rtol=1e-6)
    assert not report.ok and report.after.flagged[0].path == "4"   # the stale one is still flagged


# ---- the planted stale mean in resnet18_bn ------------------------------------------------------

PLANTED = "stages.1.0.norm2"


@pytest.fixture(scope="module")
def resnet():
    model, _ = GRAPHS["resnet18_bn"]()
    data = _batches([(8, 3, 16, 16)] * 4, seed=5, scale=1.0, shift=0.0)
    return model, data


def test_gap_flags_planted_stale_mean_and_recalibrate_fixes_it(resnet):
    model, data = resnet
    # the model with properly computed statistics for this data (16x16 inputs: the graph was
    # calibrated on 32x32 ones, whose deep-layer statistics differ, which the gap does flag)
    proper = copy.deepcopy(model)
    first = recalibrate(proper, data)
    assert not first.before.ok and first.ok          # the 32x32 statistics are stale for 16x16
    clean_gap = train_infer_gap(proper, data)
    assert clean_gap.ok, clean_gap.format()
    names = [r.path for r in clean_gap.rows]
    assert len(names) == 20 and names[0] == "stem.1.0"           # forward order

    planted = copy.deepcopy(proper)
    bn = planted.get_submodule(PLANTED)
    with torch.no_grad():
        bn.running_mean[3] += 3 * (bn.running_var[3] + bn.eps).sqrt()
    gap = train_infer_gap(planted, data)
    assert not gap.ok
    row = gap.row(PLANTED)
    assert row.flagged and abs(row.mean_gap_max - 3) < 1e-3 and row.worst_channel == 3
    assert gap.flagged[0].path == PLANTED                        # the first flagged layer, and the worst
    assert max(gap.rows, key=lambda r: r.mean_gap_max).path == PLANTED
    assert PLANTED in gap.format() and "channel 3" in row.reason
    for r in gap.rows[:names.index(PLANTED)]:                  # upstream layers unaffected
        assert r.mean_gap_max == clean_gap.row(r.path).mean_gap_max

    report = recalibrate(planted, data)
    assert report.ok, report.format()
    fixed = report.after.row(PLANTED)
    assert not fixed.flagged and fixed.mean_gap_max < 1e-5
    assert report.before.row(PLANTED).flagged
    assert train_infer_gap(planted, data).ok

    # the eval output equals that of the model with properly computed statistics
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(planted(x), proper(x), rtol=1e-5, atol=1e-6)
        for name, buf in proper.named_buffers():
            torch.testing.assert_close(planted.get_buffer(name), buf, rtol=1e-5, atol=1e-6)
    text = report.format()
    assert PLANTED in text and "fixed" in text and report.to_dict()["ok"] is True
    import json
    json.dumps(report.to_dict())
    json.dumps(gap.to_dict())


def test_one_pass_mode_leaves_downstream_gap(resnet):
    """Why sequential is the default: one pass measures the layers after a stale one on the
    inputs the stale one produced; they stay off until a second recalibration."""
    model, data = resnet
    proper = copy.deepcopy(model)
    recalibrate(proper, data)
    planted = copy.deepcopy(proper)
    bn = planted.get_submodule(PLANTED)
    with torch.no_grad():
        bn.running_mean[3] += 3 * (bn.running_var[3] + bn.eps).sqrt()
    one = recalibrate(planted, data, sequential=False)
    assert one.passes == 2 and one.mode == "one-pass eval"
    assert one.after.row(PLANTED).mean_gap_max < 1e-5          # its own input was right
    downstream = [r for r in one.after.rows if r.path != PLANTED and r.mean_gap_max > 1e-3]
    assert downstream and all(names_after(one, r.path) for r in downstream)
    again = recalibrate(planted, data)
    assert max(r.mean_gap_max for r in again.after.rows) < 1e-5


def names_after(report, path):
    paths = [r.path for r in report.rows]
    return paths.index(path) > paths.index(PLANTED)


def test_gap_report_fields(resnet):
    model, data = resnet
    gap = train_infer_gap(model, data)
    row = gap.rows[0]
    # the batch statistics in the report are the exact ones of the layer's input
    x = _inputs_of(model, model.get_submodule(row.path), torch.cat(data))
    mean, var = _channel_stats(x)
    np.testing.assert_allclose(row.batch_mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(row.batch_var, var, rtol=1e-9)
    rm, rv = row.running_mean, row.running_var
    eps = 1e-5
    np.testing.assert_allclose(row.mean_gap_max, np.max(np.abs(mean - rm) / np.sqrt(rv + eps)), rtol=1e-9)
    np.testing.assert_allclose(row.var_log_ratio_max, np.max(np.abs(np.log((var + eps) / (rv + eps)))),
                               rtol=1e-9)
    # output effect: RMS of the normalised eval output minus the one with batch statistics
    c = x.shape[1]
    v = np.moveaxis(x, 1, 0).reshape(c, -1)
    z_r = (v - rm[:, None]) / np.sqrt(rv[:, None] + eps)
    z_b = (v - mean[:, None]) / np.sqrt(var[:, None] + eps)
    np.testing.assert_allclose(row.output_effect, np.sqrt(((z_r - z_b) ** 2).mean(1)).max(), rtol=1e-6)
    assert gap.mean_threshold == DEFAULT_MEAN_THRESHOLD and gap.var_threshold == DEFAULT_VAR_THRESHOLD


def test_gap_flags_variance_and_respects_thresholds():
    model = _two_bn_net()
    data = _batches([(4, 3, 9, 7)] * 2)
    recalibrate(model, data)
    with torch.no_grad():
        model[4].running_var[2] *= 4
    gap = train_infer_gap(model, data)
    assert [r.path for r in gap.flagged] == ["4"]
    assert "variance off by a factor 0.25" in gap.row("4").reason
    assert train_infer_gap(model, data, var_threshold=math.log(5)).ok


# ---- every BN-family layer of the registry -----------------------------------------------------

def _expected(module, x: np.ndarray, kind: str):
    if kind == "instance":
        n, c = x.shape[:2]
        planes = x.reshape(n, c, -1)
        return planes.mean(2).mean(0), planes.var(2, ddof=1).mean(0)
    return _channel_stats(x, ddof=1 if kind == "unbiased" else 0)


def _registry_bn_cases():
    cases = []
    for spec in registry.REGISTRY.values():
        m = spec.example(4, torch.Generator().manual_seed(0))
        if any(getattr(s, "running_mean", None) is not None for s in m.modules()):
            cases.append(pytest.param(spec.name, id=spec.name))
    return cases


@pytest.mark.parametrize("name", _registry_bn_cases())
def test_every_registry_bn_family_layer(name):
    spec = registry.REGISTRY[name]
    gen = torch.Generator().manual_seed(0)
    layer = spec.example(4, gen)
    found = bn_family_layers(layer)
    with_buffers = [p for p, s in layer.named_modules() if isinstance(getattr(s, "running_mean", None),
                                                                      torch.Tensor)]
    assert [l.path for l in found] == with_buffers and found
    target = found[0]
    state = {k: v.clone() for k, v in layer.state_dict(keep_vars=False).items()}
    extra = {k: v.clone() for k, v in layer.named_buffers() if k not in state}   # non-persistent
    layer.train()
    batches = [spec.inputs(layer, b, gen) for b in (3, 5, 4)]
    report = recalibrate(layer, batches)
    assert layer.training and all(s.training for s in layer.modules())
    mod = target.module
    xs = np.concatenate([b[0].double().numpy() for b in batches])   # the layer's input is x
    mean, var = _expected(mod, xs, target.kind)
    np.testing.assert_allclose(mod.running_mean.double().numpy(), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mod.running_var.double().numpy(), var, rtol=1e-6)
    for k, v in layer.state_dict().items():
        if not k.endswith(("running_mean", "running_var")):
            assert torch.equal(v, state[k]), k
    for k, v in layer.named_buffers():
        if k in extra:
            assert torch.equal(v, extra[k]), k
    assert report.ok and report.rows[0].recalibrated
    if name == "spade":                      # the SPADE module selects its parameter-free BN
        assert recalibrate(layer, batches, modules=[layer]).rows[0].recalibrated


def test_switchable_batch_average_is_biased_and_instance_norm_averages_instances():
    sn = SwitchableNorm2d(3, using_moving_average=False)
    data = _batches([(3, 3, 5, 4), (6, 3, 5, 4)], seed=4)
    assert bn_family_layers(sn)[0].kind == "biased"
    recalibrate(sn, data)
    mean, var = _channel_stats(torch.cat(data).double().numpy(), ddof=0)
    np.testing.assert_allclose(sn.running_var.double().numpy(), var, rtol=1e-6)
    np.testing.assert_allclose(sn.running_mean.double().numpy(), mean, rtol=1e-6, atol=1e-7)

    inorm = nn.InstanceNorm2d(3, track_running_stats=True)
    assert bn_family_layers(inorm)[0].kind == "instance"
    recalibrate(inorm, data)
    x = torch.cat(data).double().numpy().reshape(9, 3, -1)
    np.testing.assert_allclose(inorm.running_mean.double().numpy(), x.mean(2).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(inorm.running_var.double().numpy(), x.var(2, ddof=1).mean(0), rtol=1e-6)
    # torch's own running-statistic update (momentum 1) on the concatenated data gives the same
    ref = nn.InstanceNorm2d(3, track_running_stats=True, momentum=1.0).train()
    ref(torch.cat(data))
    torch.testing.assert_close(inorm.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inorm.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)


# ---- errors --------------------------------------------------------------------------------------

class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.BatchNorm2d(3)
        self.b = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.a(x)                    # self.b is never reached


def test_errors():
    data = _batches([(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="no BN-family layer"):
        recalibrate(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GroupNorm(1, 3)), data)
    with pytest.raises(ValueError, match="no BN-family layer"):
        train_infer_gap(nn.Sequential(nn.LayerNorm(4)), data)
    with pytest.raises(TypeError, match="calibration batch 1"):
        recalibrate(_two_bn_net(), [data[0], "nope"])
    with pytest.raises(TypeError, match="single tensor"):
        recalibrate(_two_bn_net(), data[0])
    with pytest.raises(ValueError, match="no calibration batches"):
        recalibrate(_two_bn_net(), [])
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\) is not a BN-family layer"):
        recalibrate(_two_bn_net(), data, modules=["0"])
    with pytest.raises(ValueError, match="no module 'nope'"):
        recalibrate(_two_bn_net(), data, modules=["nope"])
    m = _Branchy()
    before = m.b.running_mean.clone(), m.a.running_mean.clone()
    with pytest.raises(ValueError, match=r"does not reach b \(BatchNorm2d\)"):
        recalibrate(m, data)
    assert torch.equal(m.b.running_mean, before[0]) and torch.equal(m.a.running_mean, before[1])
    gap = train_infer_gap(m, data)
    assert gap.row("b").flagged and "not called" in gap.row("b").reason
    assert [r.path for r in gap.rows] == ["a", "b"]           # called first, then the unreached
    recalibrate(m, data, modules=["a"])      # the reachable one alone is fine
    recalibrate(m, data, modules=[m.a])


# ---- CLI -----------------------------------------------------------------------------------------

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def stale():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        with torch.no_grad():
            m[4].running_mean.fill_(5.0)
        return m, (torch.randn(2, 3, 8, 8),)


    def two_inputs():
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.bn = nn.BatchNorm2d(3)

            def forward(self, x, y):
                return self.bn(x) + y
        return M()


    def no_bn():
        return nn.Sequential(nn.Conv2d(3, 3, 1), nn.GroupNorm(1, 3))
''')


@pytest.fixture
def calib_pkg(tmp_path, monkeypatch):
    import sys
    pkg = tmp_path / "calibpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for n in [n for n in sys.modules if n.startswith("calibpkg")]:
        del sys.modules[n]
    yield tmp_path


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_cli_recalibrate(calib_pkg, capsys):
    x = np.random.default_rng(0).normal(size=(20, 3, 8, 8)).astype(np.float32)
    data = _npz(calib_pkg / "calib.npz", input=x)
    out = calib_pkg / "state.pt"
    rc = cli.main(["recalibrate", "calibpkg.models:stale", "--data", data, "--batch-size", "6",
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    state = torch.load(out)
    from calibpkg.models import stale
    model, _ = stale()
    bn_before = train_infer_gap(model.eval(), [torch.from_numpy(x)])
    assert bn_before.row("4").flagged         # (fresh BN "1" is off too: unit running stats)
    model.load_state_dict(state)
    assert train_infer_gap(model, [torch.from_numpy(x[i:i + 6]) for i in range(0, 20, 6)]).ok
    assert "4" in text and "->" in text and "fixed" in text and "4 batches / 20 samples" in text
    # --num-batches: only the first 2 batches of 6
    rc = cli.main(["recalibrate", "calibpkg.models:stale", "--data", data, "--batch-size", "6",
                   "--num-batches", "2", "--out", str(out)])
    assert rc == 0 and "2 batches / 12 samples" in capsys.readouterr().out
    model.load_state_dict(torch.load(out))
    conv = torch.cat([model[0](torch.from_numpy(x[:12]))]).detach().numpy()
    np.testing.assert_allclose(model[1].running_mean.double().numpy(), _channel_stats(conv)[0], rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("arrays,factory,message", [
    (dict(input=np.zeros((4, 5, 8, 8), np.float32)), "stale", "array 'input'"),
    (dict(input=np.zeros((4, 3, 8), np.float32)), "stale", "array 'input'"),
    (dict(a=np.zeros((4, 3, 8, 8), np.float32), b=np.zeros((4, 3, 8, 8), np.float32)), "stale",
     "2 arrays"),
    (dict(x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros((3, 3, 8, 8), np.float32)), "two_inputs",
     "'y' has 3"),
    (dict(input=np.zeros((4, 3, 8, 8), np.float32)), "no_bn", "no BN-family layer"),
    (dict(), "stale", "no arrays"),
])
def test_cli_recalibrate_bad_input(calib_pkg, capsys, arrays, factory, message):
    data = _npz(calib_pkg / "bad.npz", **arrays)
    out = calib_pkg / "state.pt"
    rc = cli.main(["recalibrate", f"calibpkg.models:{factory}", "--data", data, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not out.exists()


def test_cli_recalibrate_missing_file_and_bad_factory(calib_pkg, capsys):
    out = calib_pkg / "s.pt"
    assert cli.main(["recalibrate", "calibpkg.models:stale", "--data", str(calib_pkg / "none.npz"),
                     "--out", str(out)]) == 2
    assert "none.npz" in capsys.readouterr().err
    data = _npz(calib_pkg / "c.npz", input=np.zeros((4, 3, 8, 8), np.float32))
    assert cli.main(["recalibrate", "calibpkg.models:missing", "--data", data, "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["recalibrate", "calibpkg.models:stale", "--data", data, "--batch-size", "0",
                     "--out", str(out)]) == 2
    assert not out.exists()
