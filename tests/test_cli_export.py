"""`normexport export PKG.MODULE:FACTORY out.onnx`: a graph of normexport.graphs, a factory in
a package of the user's (found through PYTHONPATH), --no-fold, parity FAIL, bad arguments."""

import os
import subprocess
import sys
import textwrap

import onnx
import pytest

from normexport import cli

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def build():
        """BN before a 1x1 conv (folded into it by normexport.fold; torch's exporter leaves it as
        BatchNormalization), a conv, and BN after it. Returned in train mode: the CLI sets eval."""
        torch.manual_seed(0)
        m = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        with torch.no_grad():
            for bn in (m[0], m[4]):
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.3)
        return m


    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.rand_like(x)   # ONNX draws other numbers: parity FAIL


    not_a_factory = 3
''')


@pytest.fixture
def user_package(tmp_path):
    def forget():  # each test has its own userpkg folder: drop the one imported before
        for name in [n for n in sys.modules if n == "userpkg" or n.startswith("userpkg.")]:
            del sys.modules[name]
    root = tmp_path / "src"
    (root / "userpkg").mkdir(parents=True)
    (root / "userpkg" / "__init__.py").write_text("")
    (root / "userpkg" / "models.py").write_text(MODELS)
    forget()
    yield root
    forget()


def _table(out: str, title: str) -> dict:
    """{op: [counts...]} from the node table after ``title``."""
    lines = out.split(title, 1)[1].strip().splitlines()[2:]
    rows = {}
    for ln in lines:
        if not ln.strip():
            break
        op, *counts = ln.split()
        rows[op] = [int(c) for c in counts]
    return rows


def test_factory_in_user_package_via_pythonpath(user_package, tmp_path):
    out = tmp_path / "m.onnx"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(user_package), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "normexport.cli", "export", "userpkg.models:build", str(out),
                        "--input-shape", "2,3,8,8", "--dynamic-spatial"], capture_output=True, text=True,
                       env=env, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = _table(r.stdout, "nodes by type:")
    assert nodes["BatchNormalization"] == [1, 0]      # before fold, after fold
    assert nodes["Conv"] == [2, 2] and "parity: PASS" in r.stdout
    assert "custom ops emitted:\nnone" in r.stdout
    for stage in ("loading userpkg.models:build", "exporting without folding", "folding", "tracing",
                  "writing", "checking parity"):
        assert stage in r.stderr, r.stderr
    assert "s] loading" in r.stderr   # elapsed seconds
    model = onnx.load(out)
    assert {n.op_type for n in model.graph.node} == {"Conv", "Relu"}
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == \
        ["batch", "", "input_height", "input_width"]


def test_graph_shortcut_with_labels_input(tmp_path, capsys):
    out = tmp_path / "g.onnx"
    rc = cli.main(["export", "normexport.graphs:cbn_generator", str(out), "--input-shape", "3,16",
                   "--input-shape", "3:int64:5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert "random input 3x16, 3 int64" in captured.out and "parity: PASS" in captured.out
    nodes = _table(captured.out, "nodes by type:")
    assert nodes["Gather"][0] == nodes["Gather"][1] > 0     # per-class gamma / beta lookups
    assert "note: not folded: bn" in captured.out            # the final BN feeds a ReLU, not a conv
    assert out.is_file()


def test_no_fold_no_custom_ops(user_package, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_package))
    rc = cli.main(["export", "userpkg.models:build", str(tmp_path / "m.onnx"), "--input-shape", "2,3,8,8",
                   "--no-fold", "--no-custom-ops", "--opset", "18"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert "before fold" not in captured.out and "exporting without folding" not in captured.err
    assert _table(captured.out, "nodes by type:")["BatchNormalization"] == [1]
    assert "opset 18" in captured.out and "not folded" in captured.out
    assert {o.domain: o.version for o in onnx.load(tmp_path / "m.onnx").opset_import}[""] == 18


def test_parity_fail_exits_1(user_package, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_package))
    rc = cli.main(["export", "userpkg.models:Noisy", str(tmp_path / "m.onnx"), "--input-shape", "2,3",
                   "--no-fold"])
    captured = capsys.readouterr()
    assert rc == 1 and "parity: FAIL" in captured.out and "FAIL (" in captured.out


@pytest.mark.parametrize("factory,args,message", [
    ("userpkg.models", [], "expected PKG.MODULE:FACTORY"),
    ("no_such_module_xyz:build", [], "cannot import module 'no_such_module_xyz'"),
    ("userpkg.models:missing", [], "has no 'missing'"),
    ("normexport.graphs:resnet99", [], "its GRAPHS: resnet18_frn"),
    ("userpkg.models:not_a_factory", [], "not a callable"),
    ("userpkg.models:build", [], "pass --input-shape"),
    ("userpkg.models:build", ["--input-shape", "4:int64"], "needs its range"),
    ("userpkg.models:build", ["--input-shape", "2,three"], "comma-separated integers"),
    ("userpkg.models:build", ["--input-shape", "2,3,8,8:float8"], "is not one of"),
])
def test_bad_factory_or_inputs_exit_2_and_write_nothing(factory, args, message, user_package, tmp_path,
                                                        capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_package))
    out = tmp_path / "m.onnx"
    rc = cli.main(["export", factory, str(out), *args])
    captured = capsys.readouterr()
    assert rc == 2
    assert "normexport export: error:" in captured.err and message in captured.err, captured.err
    assert not out.exists()


def test_export_refusal_exits_2(user_package, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_package))
    (user_package / "userpkg" / "nostats.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False))\n")
    rc = cli.main(["export", "userpkg.nostats:build", str(tmp_path / "m.onnx"), "--input-shape", "2,3,4,4"])
    captured = capsys.readouterr()
    assert rc == 2 and "track_running_stats=False" in captured.err
    assert not (tmp_path / "m.onnx").exists()


def test_help_documents_input_spec(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "4:int64:10" in out and "Exit status" in out and "--dynamic-spatial" in out
