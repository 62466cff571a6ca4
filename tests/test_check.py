"""`normexport.check` / `normexport check`: clean networks pass; a defect planted in one layer of
an exported graph (a wrong epsilon attribute of a normexport::GroupNorm, LayerNormalization,
InstanceNormalization or BatchNormalization node; a perturbed folded-conv or Gemm bias) fails
and is named as the first diverging layer, early / middle / last in the graph; the reported
layer error equals an independent float64 torch computation of the same defect; report formats
(text, --json, --report PNG); .npz inputs; bad arguments (exit 2).

The independent reference of each planted defect: a float64 copy of the model with the same
change made in torch (the module's eps, or the BN shift / bias the folded bias carries), whose
layer output, against the clean float64 copy, gives the normwise error the check must report."""

import copy
import json
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import normexport
from normexport import cli
from normexport.check import LAYER_TOLERANCES, CheckError, _node_scopes, check, to_float16
from normexport.graphs import GRAPHS, random_like
from normexport.parity import rel_l2

from conftest import HAS_CUDA_EP, PROVIDERS


class _User(nn.Module):
    """A user's own model (not from normexport.graphs): IN (exported as a standard
    InstanceNormalization), GN (normexport custom node), a BN folded into a conv, a ReLU shared
    by two call sites (unmappable: skipped, never reported)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.act(self.inorm(self.conv1(x)))
        x = self.act(self.bn(self.conv2(x)))
        return self.head(self.gn(x))


def _user_model():
    torch.manual_seed(5)
    m = _User()
    with torch.no_grad():
        for mod in (m.inorm, m.bn, m.gn):
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.normal_(0, 0.3)
        m.bn.running_mean.normal_(0, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval(), (torch.randn(2, 3, 12, 12),)


MODELS = {**GRAPHS, "user": _user_model}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model, example, path of the exported file), exported once per module."""
    d = tmp_path_factory.mktemp("check")
    cache = {}

    def get(name):
        if name not in cache:
            model, example = MODELS[name]()
            path = d / f"{name}.onnx"
            normexport.export(model, example, path)
            cache[name] = (model, example, path)
        return cache[name]
    return get


def _fresh(example, seed=3, batch=3):
    gen = torch.Generator().manual_seed(seed)
    return tuple(random_like(t, batch, gen) for t in example)


def _ort(path_or_proto, inputs, provider="CPUExecutionProvider"):
    sess = normexport.session(path_or_proto, [provider])
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})


# ---- clean models pass ------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_clean_model_passes(name, provider, exported):
    model, example, path = exported(name)
    x = _fresh(example)
    report = check(model, x, path, providers=[provider], localize_layers=True)
    assert report, report.format(layers="all")
    (res,) = report.results
    loc = res.localization
    assert loc.error is None and loc.layers, loc
    assert loc.first is None and not any(r.diverged for r in loc.layers)
    # measured worst clean layer: < 2e-6 on every graph (float32 CPU), bound 1e-4
    assert max(r.rel_l2 for r in loc.layers) < LAYER_TOLERANCES["float32"] / 10
    # the reported statistics are those of ORT vs torch float32, computed here on our own
    ys = _ort(path, x, provider)
    with torch.no_grad():
        ref = model(*x)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    for o, y, e in zip(res.comparison.outputs, ys, ref):
        d = np.abs(y.astype(np.float64) - e.double().numpy())
        assert o.max_abs == pytest.approx(float(d.max()), rel=1e-6, abs=1e-12)
        assert o.rel_l2 == pytest.approx(rel_l2(y, e.numpy()), rel=1e-6, abs=1e-12)
    # and the ORT outputs are within NORMS.md's float32 bound of the float64 model (anchor)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        ref64 = model64(*(t.double() if t.is_floating_point() else t for t in x))
    ref64 = [ref64] if isinstance(ref64, torch.Tensor) else list(ref64)
    assert normexport.compare(ys, [t.numpy() for t in ref64],
                              tolerance=normexport.parity.Tolerance(rtol=2e-5, atol=2e-6))


def test_user_model_mapping(exported):
    """IN / GN / folded BN / head mapped; the shared ReLU skipped with its reason; the conv
    whose output is pre-BN has no ONNX counterpart and is skipped, the BN stands for it."""
    model, example, path = exported("user")
    report = check(model, _fresh(example), path, localize_layers=True)
    loc = report.results[0].localization
    mapped = {r.module: r for r in loc.layers}
    assert {"conv1", "inorm", "bn", "gn", "head"} <= set(mapped), list(mapped)
    assert mapped["bn"].note == "folded into conv2" and mapped["bn"].op_type == "Conv"
    assert mapped["gn"].op_type == "GroupNorm" and mapped["inorm"].op_type == "InstanceNormalization"
    skipped = dict(loc.skipped)
    assert "called 2 times" in skipped["act"]
    assert "conv2" in skipped and "bn" in skipped["conv2"]
    assert [r.order for r in loc.layers] == sorted(r.order for r in loc.layers)


# ---- planted defects ----------------------------------------------------------------------------

def _node_of(proto, module, op_type):
    for n in proto.graph.node:
        sc = _node_scopes(n) or [""]
        if n.op_type == op_type and sc[-1] == module:
            return n
    raise AssertionError(f"no {op_type} node of {module}")


def _set_eps(proto, module, op_type, eps):
    a = next(a for a in _node_of(proto, module, op_type).attribute if a.name == "epsilon")
    a.f = eps


def _add_bias(proto, module, op_type, delta, channel=0):
    n = _node_of(proto, module, op_type)
    init = {i.name: i for i in proto.graph.initializer}
    b = init[n.input[2]]
    arr = numpy_helper.to_array(b).copy()
    arr[channel] += delta
    b.CopyFrom(numpy_helper.from_array(arr, b.name))


def _torch_layer_error(model, x, layer, change):
    """Normwise error at ``layer`` of a float64 copy with ``change`` applied vs a clean one."""
    outs = []
    for changed in (False, True):
        m = copy.deepcopy(model).double()
        if changed:
            with torch.no_grad():
                change(m)
        got = {}
        m.get_submodule(layer).register_forward_hook(lambda mod, i, o: got.setdefault("y", o))
        with torch.no_grad():
            m(*(t.double() if t.is_floating_point() else t for t in x))
        outs.append(got["y"].numpy())
    return rel_l2(outs[1], outs[0])


def _set_module_eps(layer, eps):
    return lambda m: setattr(m.get_submodule(layer), "eps", eps)


def _add_module_bias(layer, delta, channel=0):
    def change(m):
        m.get_submodule(layer).bias[channel] += delta
    return change


# (graph, ONNX module scope, op type, plant, expected layer, torch-side change of the same defect)
DEFECTS = {
    "gn-custom-early": ("resnet18_gn", lambda p: _set_eps(p, "stem.1.0", "GroupNorm", 0.05),
                        "stem.1.0", _set_module_eps("stem.1.0", 0.05)),
    "gn-custom-middle": ("resnet18_gn", lambda p: _set_eps(p, "stages.1.1.norm1.0", "GroupNorm", 0.05),
                         "stages.1.1.norm1.0", _set_module_eps("stages.1.1.norm1.0", 0.05)),
    "gn-custom-last": ("resnet18_gn", lambda p: _set_eps(p, "stages.3.1.norm2", "GroupNorm", 0.05),
                       "stages.3.1.norm2", _set_module_eps("stages.3.1.norm2", 0.05)),
    "folded-conv-early": ("resnet18_bn", lambda p: _add_bias(p, "stem.0", "Conv", 0.1),
                          "stem.1.0", _add_module_bias("stem.1.0", 0.1)),
    "folded-conv-shortcut": ("resnet18_bn", lambda p: _add_bias(p, "stages.2.0.shortcut.0", "Conv", 0.1, 3),
                             "stages.2.0.shortcut.1", _add_module_bias("stages.2.0.shortcut.1", 0.1, 3)),
    "gemm-last": ("resnet18_bn", lambda p: _add_bias(p, "head", "Gemm", 0.01, 2),
                  "head", _add_module_bias("head", 0.01, 2)),
    "layernorm-standard-middle": ("transformer_ln", lambda p: _set_eps(p, "blocks.1.ln1", "LayerNormalization", 0.5),
                                  "blocks.1.ln1", _set_module_eps("blocks.1.ln1", 0.5)),
    "layernorm-standard-last": ("transformer_ln", lambda p: _set_eps(p, "ln", "LayerNormalization", 0.5),
                                "ln", _set_module_eps("ln", 0.5)),
    "batchnorm-standard-last": ("cbn_generator", lambda p: _set_eps(p, "bn", "BatchNormalization", 0.5),
                                "bn", _set_module_eps("bn", 0.5)),
    "instancenorm-standard-user": ("user", lambda p: _set_eps(p, "inorm", "InstanceNormalization", 0.1),
                                   "inorm", _set_module_eps("inorm", 0.1)),
    "folded-conv-user": ("user", lambda p: _add_bias(p, "conv2", "Conv", 0.05, 1),
                         "bn", _add_module_bias("bn", 0.05, 1)),
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_planted_defect_is_named(defect, provider, exported):
    name, plant, layer, change = DEFECTS[defect]
    model, example, path = exported(name)
    proto = onnx.load(path)
    plant(proto)
    x = _fresh(example)
    report = check(model, x, proto, providers=[provider])
    assert not report, report.format()
    loc = report.results[0].localization
    assert loc is not None and loc.error is None
    first = report.first_divergence()
    assert first is not None and first.module == layer, report.format()
    # every layer before it is clean; the one named carries the defect's error, which matches
    # the float64 torch model with the same change (independent of ORT and of check)
    i = loc.layers.index(first)
    assert all(not r.diverged for r in loc.layers[:i])
    expected = _torch_layer_error(model, x, layer, change)
    assert expected > 10 * LAYER_TOLERANCES["float32"]
    assert first.rel_l2 == pytest.approx(expected, rel=0.02), (first.rel_l2, expected)
    text = report.format()
    assert f"first divergence at layer {layer} " in text


def test_fp16_run_passes_clean_and_names_a_defect(exported):
    model, example, path = exported("resnet18_gn")
    x = _fresh(example)
    report = check(model, x, path, dtypes=("float32", "float16"), localize_layers=True)
    assert report, report.format()
    r16 = report.results[1]
    assert r16.dtype == "float16" and r16.comparison.outputs[0].tolerance.rtol == 1e-2
    # float16 really ran: its error is far above float32's, below the float16 bound
    assert r16.comparison.outputs[0].max_abs > 10 * report.results[0].comparison.outputs[0].max_abs
    assert max(r.rel_l2 for r in r16.localization.layers) < LAYER_TOLERANCES["float16"]
    proto = onnx.load(path)
    _set_eps(proto, "stages.1.1.norm1.0", "GroupNorm", 1.0)
    bad = check(model, x, proto, dtypes="float16")
    assert not bad and bad.first_divergence().module == "stages.1.1.norm1.0", bad.format()


def test_to_float16_keeps_resize_scales_float32(exported):
    _, _, path = exported("adain_style")
    m16 = to_float16(onnx.load(path))
    onnx.checker.check_model(m16)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in m16.graph.input)
    assert all(t.data_type != onnx.TensorProto.FLOAT for t in m16.graph.initializer)


def test_unscoped_file_localizes_nothing_falsely(exported):
    """A file without the exporter's node metadata: no layer mapped (no false divergence), said."""
    model, example, path = exported("resnet18_gn")
    proto = onnx.load(path)
    for n in proto.graph.node:
        del n.metadata_props[:]
        n.name = n.name.replace("/", "_")
    report = check(model, _fresh(example), proto, localize_layers=True)
    assert report
    assert report.results[0].localization.layers == []
    assert any("carry no module scope" in n for n in report.notes)


# ---- CLI -------------------------------------------------------------------------------------------

USER_PKG = textwrap.dedent('''
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
        return m, ((2, 3, 10, 10),)


    def build_bn(stale=False):
        """Conv + BN with running statistics calibrated on N(0, 1) inputs (exact: momentum None),
        or, stale=True, a running mean 3 sigma off in channel 0."""
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU())
        with torch.no_grad():
            m.train()
            m(torch.randn(256, 3, 10, 10))
            if stale:
                m[1].running_mean[0] += 3 * m[1].running_var[0].sqrt()
        return m.eval(), ((2, 3, 10, 10),)


    def build_bn_stale():
        return build_bn(stale=True)
''')


@pytest.fixture
def userpkg(tmp_path, monkeypatch):
    root = tmp_path / "src"
    (root / "chkpkg").mkdir(parents=True)
    (root / "chkpkg" / "__init__.py").write_text("")
    (root / "chkpkg" / "models.py").write_text(USER_PKG)
    monkeypatch.syspath_prepend(str(root))
    for n in [n for n in sys.modules if n.startswith("chkpkg")]:
        del sys.modules[n]
    model, ex = __import__("chkpkg.models", fromlist=["build"]).build()
    path = tmp_path / "m.onnx"
    normexport.export(model.eval(), (torch.randn(*ex[0]),), path)
    return path


def test_cli_pass_json_schema(userpkg, capsys):
    rc = cli.main(["check", "chkpkg.models:build", str(userpkg), "--json", "--layers"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(out)
    assert doc["passed"] is True and doc["reference"] == "torch float32 eval"
    assert doc["inputs"] == [{"name": "input", "shape": [2, 3, 10, 10], "dtype": "float32",
                              "source": "seeded random, seed 0"}]
    (res,) = doc["results"]
    assert res["provider"] == "CPUExecutionProvider" and res["dtype"] == "float32" and res["passed"]
    (o,) = res["outputs"]
    assert set(o) >= {"name", "shape", "passed", "rtol", "atol", "max_abs", "mean_abs", "max_rel",
                      "rel_l2", "quantiles", "n_bad", "n_elements"}
    assert set(o["quantiles"]) == {"p50", "p90", "p99"} and o["quantiles"]["p99"] <= o["max_abs"]
    loc = res["localization"]
    assert loc["first_divergence"] is None
    assert [r["module"] for r in loc["layers"]] == ["0", "1", "2", "3"]
    assert all(set(r) >= {"module", "class", "onnx_node", "rel_l2", "max_abs", "tolerance", "diverged"}
               for r in loc["layers"])


def test_cli_fail_names_layer_and_writes_report(userpkg, tmp_path, capsys):
    proto = onnx.load(userpkg)
    _set_eps(proto, "1", "GroupNorm", 0.5)
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    rc = cli.main(["check", "chkpkg.models:build", str(bad), "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "first divergence at layer 1 (GroupNorm)" in out and "check: FAIL" in out
    png = (tmp_path / "rep" / "layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["passed"] is False
    (o,) = doc["results"][0]["outputs"]
    assert o["passed"] is False and o["n_bad"] > 0 and o["max_abs"] > 1e-3
    assert doc["results"][0]["localization"]["first_divergence"]["module"] == "1"
    assert "FIRST DIVERGENCE" in (tmp_path / "rep" / "report.txt").read_text()


def test_cli_npz_inputs(userpkg, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((3, 3, 10, 10)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    rc = cli.main(["check", "chkpkg.models:build", str(userpkg), "--inputs", str(tmp_path / "in.npz"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["inputs"][0]["shape"] == [3, 3, 10, 10]
    assert doc["inputs"][0]["source"].startswith("from ")
    # the numbers are those of this input: ORT vs torch on x, computed here
    model = __import__("chkpkg.models", fromlist=["build"]).build()[0].eval()
    with torch.no_grad():
        e = model(torch.from_numpy(x)).numpy()
    y = _ort(userpkg, (torch.from_numpy(x),))[0]
    assert doc["results"][0]["outputs"][0]["max_abs"] == pytest.approx(float(np.abs(y - e).max()), rel=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--input-shape", "2,4,10,10"], "input 'input': shape (2, 4, 10, 10) but the model expects"),
    (["--input-shape", "2,3,10"], "input 'input': rank 3"),
    (["--inputs", "missing.npz"], "missing.npz does not exist"),
    (["--inputs", "WRONG"], "missing ['input']"),
    (["--providers", "nosuch"], "execution provider 'nosuch'"),
])
def test_cli_bad_inputs_exit_2(userpkg, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    if "WRONG" in extra:
        np.savez(tmp_path / "w.npz", a=np.zeros(3, np.float32), b=np.zeros(3, np.float32))
        extra = ["--inputs", "w.npz"]
    rc = cli.main(["check", "chkpkg.models:build", str(userpkg), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err


def test_cli_missing_file_and_bad_factory(userpkg, tmp_path, capsys):
    assert cli.main(["check", "chkpkg.models:build", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx does not exist" in capsys.readouterr().err
    assert cli.main(["check", "chkpkg.models:nothing", str(userpkg)]) == 2
    assert "has no 'nothing'" in capsys.readouterr().err


@pytest.mark.skipif(HAS_CUDA_EP, reason="checks the message for a missing CUDA execution provider; "
                    "this machine has one (the CUDA cases run instead)")
def test_cli_unavailable_cuda_names_what_is_available(userpkg, capsys):
    assert cli.main(["check", "chkpkg.models:build", str(userpkg), "--providers", "cpu,cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider" in err and "available: " in err and "CPUExecutionProvider" in err


def test_api_errors(exported):
    model, example, path = exported("user")
    with pytest.raises(CheckError, match="training mode"):
        check(copy.deepcopy(model).train(), example, path)
    with pytest.raises(CheckError, match="takes 1"):
        check(model, (example[0], example[0]), path)
    with pytest.raises(CheckError, match="dtype 'bfloat16'"):
        check(model, example, path, dtypes="bfloat16")


def test_cli_calib_and_fp16_sections(userpkg, tmp_path, capsys):
    """--calib adds normexport.calibrate's train/infer-gap section, --fp16 the float16 ORT run
    and normexport.fp16audit's section: a stale running mean fails the check through the gap
    section although ORT matches torch (the export carries the stale statistics faithfully)."""
    models = __import__("chkpkg.models", fromlist=["build_bn"])
    x = np.random.default_rng(1).standard_normal((64, 3, 10, 10)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    for name, want_rc in (("build_bn", 0), ("build_bn_stale", 1)):
        model, ex = getattr(models, name)()
        path = tmp_path / f"{name}.onnx"
        normexport.export(model, (torch.randn(*ex[0]),), path)
        rc = cli.main(["check", f"chkpkg.models:{name}", str(path), "--calib", str(tmp_path / "calib.npz"),
                       "--fp16", "--json"])
        doc = json.loads(capsys.readouterr().out)
        assert rc == want_rc, json.dumps(doc["sections"])[:2000]
        assert [r["dtype"] for r in doc["results"]] == ["float32", "float16"]
        assert all(r["passed"] for r in doc["results"])          # ORT == torch either way
        gap = doc["sections"]["train_infer_gap"]
        assert gap["ok"] is (want_rc == 0) and gap["rows"]
        assert doc["sections"]["fp16_audit"]["ok"] is True
        assert doc["passed"] is (want_rc == 0)
    rc = cli.main(["check", "chkpkg.models:build", str(userpkg), "--calib", str(tmp_path / "calib.npz")])
    assert rc == 2 and "--calib" in capsys.readouterr().err   # no BN-family layer: nothing to measure


def test_subtle_defect_below_layer_bound_names_a_suspect(exported):
    """A GN eps of 5e-5 instead of 1e-5 fails the output bound (elementwise rtol 1e-5) while no
    layer's normwise error reaches 1e-4: the report names the layer where the error jumps as
    the suspect. At 2e-5 the outputs stay within NORMS.md's bound and the check passes."""
    model, example, path = exported("resnet18_gn")
    x = _fresh(example)
    proto = onnx.load(path)
    _set_eps(proto, "stages.1.1.norm1.0", "GroupNorm", 5e-5)
    report = check(model, x, proto)
    assert not report
    loc = report.results[0].localization
    assert loc.first is None and loc.suspect is not None, report.format()
    assert loc.suspect.module == "stages.1.1.norm1.0"
    assert "suspect: stages.1.1.norm1.0 (GroupNorm)" in report.format()
    proto = onnx.load(path)
    _set_eps(proto, "stages.1.1.norm1.0", "GroupNorm", 2e-5)
    assert check(model, x, proto)


def test_unfolded_export_maps_the_bn(tmp_path):
    """fold=False: torch's exporter fuses the Conv + BN pair itself, into one Conv scoped to the
    BN module: check maps that Conv to the BN (no fold note needed) and skips the conv, whose
    pre-BN output the file no longer holds; a bias defect there names the BN."""
    model, example = _user_model()
    path = tmp_path / "unfolded.onnx"
    normexport.export(model, example, path, fold=False)
    x = _fresh(example)
    report = check(model, x, path, localize_layers=True)
    assert report, report.format()
    loc = report.results[0].localization
    mapped = {r.module: r for r in loc.layers}
    assert mapped["bn"].op_type == "Conv" and "conv2" not in mapped
    proto = onnx.load(path)
    _add_bias(proto, "bn", "Conv", 0.05, 1)
    bad = check(model, x, proto)
    assert not bad and bad.first_divergence().module == "bn", bad.format()
    expected = _torch_layer_error(model, x, "bn", _add_module_bias("bn", 0.05, 1))
    assert bad.first_divergence().rel_l2 == pytest.approx(expected, rel=0.02)


def test_cli_per_output_tolerance(userpkg, tmp_path, capsys):
    """--output-tol NAME=RTOL,ATOL sets one output's bound: a defect of ~5% passes a 50% bound
    and fails the default one; an unknown output name is a usage error naming the outputs."""
    proto = onnx.load(userpkg)
    _set_eps(proto, "1", "GroupNorm", 0.5)
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    out = proto.graph.output[0].name
    assert cli.main(["check", "chkpkg.models:build", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    o = doc["results"][0]["outputs"][0]
    assert 1e-3 < o["max_rel"] or o["max_abs"] > 1e-3
    assert cli.main(["check", "chkpkg.models:build", str(bad), "--json", "--output-tol", f"{out}=0.5,0.5"]) == 0
    o = json.loads(capsys.readouterr().out)["results"][0]["outputs"][0]
    assert o["rtol"] == 0.5 and o["atol"] == 0.5 and o["passed"]
    assert cli.main(["check", "chkpkg.models:build", str(bad), "--output-tol", "nope=1,1"]) == 2
    assert f"the model's outputs are {out}" in capsys.readouterr().err


def test_float64_reference(exported):
    """reference="float64": the outputs are compared with a float64 copy of the model; the
    reported error equals ORT vs a float64 torch run made here."""
    model, example, path = exported("resnet18_gn")
    x = _fresh(example)
    report = check(model, x, path, reference="float64", localize_layers=True)
    assert report and report.reference == "torch float64 eval", report.format()
    assert report.results[0].localization.first is None
    with torch.no_grad():
        e = copy.deepcopy(model).double()(x[0].double()).numpy()
    y = _ort(path, x)[0]
    assert report.results[0].comparison.outputs[0].max_abs == pytest.approx(float(np.abs(y - e).max()), rel=1e-6)


def test_function_fallback_path(exported):
    """use_library=False: the normexport nodes run on their ONNX function bodies; a custom node
    is still one layer (its body's values are not reachable), and a defect in it is named."""
    model, example, path = exported("user")
    x = _fresh(example)
    assert check(model, x, path, use_library=False)
    proto = onnx.load(path)
    _set_eps(proto, "gn", "GroupNorm", 0.5)
    bad = check(model, x, proto, use_library=False)
    assert not bad and bad.first_divergence().module == "gn", bad.format()
    expected = _torch_layer_error(model, x, "gn", _set_module_eps("gn", 0.5))
    assert bad.first_divergence().rel_l2 == pytest.approx(expected, rel=0.02)
