"""normexport.passes driver: rewrite / rewrite_file / PassReport and the ``normexport fold`` CLI:
bad files give a clear error and write nothing, a rule that breaks parity is named and nothing is
written, dry runs write nothing, counts and explanations, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from normexport import cli, passes
from normexport.passes import PassError, Rule, rewrite, rewrite_file
from normexport.passes.base import Match, NoMatch
from normexport.passes.verify import input_specs, make_feeds


def conv_bn_relu(rng, *, x_shape=("N", 3, 6, 6), c=4):
    inits = [nh.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "W"),
             nh.from_array(rng.standard_normal(c).astype(np.float32), "b"),
             nh.from_array((rng.random(c) + 0.5).astype(np.float32), "s"),
             nh.from_array(rng.standard_normal(c).astype(np.float32), "B"),
             nh.from_array(rng.standard_normal(c).astype(np.float32), "m"),
             nh.from_array((rng.random(c) + 0.5).astype(np.float32), "v")]
    nodes = [h.make_node("Conv", ["x", "W", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c", "s", "B", "m", "v"], ["n"], name="bn"),
             h.make_node("Relu", ["n"], ["y"], name="relu")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, list(x_shape))],
                     [h.make_tensor_value_info("y", TP.FLOAT, [None] * 4)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


@pytest.fixture
def model(rng):
    return conv_bn_relu(rng)


@pytest.fixture
def model_file(tmp_path, model):
    p = tmp_path / "in.onnx"
    onnx.save(model, p)
    return p


class ReluToIdentity(Rule):
    """Test-only, deliberately wrong: Relu -> Identity."""
    name = "broken-relu"
    summary = "wrong on purpose"
    anchors = ("Relu",)

    def match(self, ctx, node):
        return Match([node])

    def rewrite(self, ctx, m):
        (n,) = m.nodes
        return [ctx.node("Identity", [n.inputs[0]], list(n.outputs), origin=n)]


class Raises(Rule):
    name = "raises"
    anchors = ("Relu",)

    def match(self, ctx, node):
        return Match([node])

    def rewrite(self, ctx, m):
        raise RuntimeError("bug in the rule")


class NeverMatches(Rule):
    name = "never"
    anchors = ("Relu",)

    def match(self, ctx, node):
        return NoMatch("relu is always left alone here")


# ---- rewrite() -------------------------------------------------------------------------------------

def test_rewrite_folds_and_counts(model):
    new, report = rewrite(model)
    assert report.ok and report.counts()["fold-bn-after"] == 1 and report.counts()["fold-bn-before"] == 0
    assert [n.op_type for n in new.graph.node] == ["Conv", "Relu"]
    assert report.nodes_before["BatchNormalization"] == 1 and "BatchNormalization" not in report.nodes_after
    (v,) = report.verifications
    assert v.passed and v.path == "library" and v.outputs[0].max_abs < v.outputs[0].bound
    assert report.inputs == {"x": ((2, 3, 6, 6), "float32")}
    d = report.to_dict()
    json.dumps(d)
    assert d["counts"]["fold-bn-after"] == 1 and d["verifications"][0]["passed"]
    text = report.format()
    assert re.search(r"^fold-bn-after +1$", text, re.M) and "PASS" in text


def test_broken_rule_fails_verification_and_is_named(model):
    before = model.SerializeToString()
    new, report = rewrite(model, ["fold-bn-after", ReluToIdentity()])
    assert not report.ok and report.failed_rule == "broken-relu" and report.failed_nodes == ["relu"]
    assert new is model and model.SerializeToString() == before
    assert "broken-relu broke parity" in report.error
    assert "FAILED: rule broken-relu broke parity (it rewrote relu)" in report.format()
    # the fold before it verified fine
    assert [v.label for v in report.verifications] == ["after fold-bn-after", "after broken-relu"]
    assert report.verifications[0].passed and not report.verifications[1].passed


def test_rule_that_raises_is_named(model):
    new, report = rewrite(model, [Raises()])
    assert not report.ok and report.failed_rule == "raises" and "bug in the rule" in report.error and new is model


def test_without_verification_a_broken_rule_goes_through(model):
    """--no-verify really skips the check (so the check above is what catches the break)."""
    new, report = rewrite(model, [ReluToIdentity()], verify=False)
    assert report.ok and [n.op_type for n in new.graph.node][-1] == "Identity" and not report.verifications


def test_explain_collects_reasons(model):
    _, report = rewrite(model, [NeverMatches(), "fold-bn-before"], explain=True)
    reasons = {(e.rule, e.node): e.reason for e in report.explanations}
    assert reasons[("never", "relu")] == "relu is always left alone here"
    assert "is read by" not in reasons[("fold-bn-before", "bn")]
    assert "Relu 'relu'" in reasons[("fold-bn-before", "bn")]
    assert "not rewritten (--explain)" in report.format()
    _, quiet = rewrite(model, [NeverMatches()])
    assert quiet.explanations == []


def test_explanations_dropped_for_nodes_folded_later(rng):
    """fold-bn-after explains why bn is not after a layer; fold-bn-before then folds it: the
    report does not list the stale reason."""
    inits = [nh.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "W")] + \
        [nh.from_array((rng.random(3) + .5).astype(np.float32), k) for k in ("s", "B", "m", "v")]
    g = h.make_graph([h.make_node("BatchNormalization", ["x", "s", "B", "m", "v"], ["n"], name="bn"),
                      h.make_node("Conv", ["n", "W"], ["y"], name="conv")], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 4, 4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [None] * 4)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    _, report = rewrite(m, explain=True)
    assert report.counts() == {"fold-bn-after": 0, "fold-bn-before": 1} | {
        k: 0 for k in passes.RULES if k not in ("fold-bn-after", "fold-bn-before")}
    assert [e for e in report.explanations if e.node == "bn"]          # recorded
    assert "bn" not in [e["node"] for e in report.to_dict()["explanations"]]   # but not reported


def test_unknown_rule_name():
    with pytest.raises(PassError, match="unknown rule 'nope'; the rules are: .*fold-bn-after"):
        rewrite(onnx.ModelProto(), ["nope"])


def test_symbolic_non_batch_dim_needs_a_shape(rng):
    m = conv_bn_relu(rng, x_shape=("N", 3, "H", "W"))
    with pytest.raises(PassError, match=r"graph input 'x' dim 2 is symbolic \('H'\).*--input-shape x=2x3x<H>x<W>"):
        rewrite(m)
    new, report = rewrite(m, input_shapes={"x": (1, 3, 5, 7)})
    assert report.ok and report.inputs["x"][0] == (1, 3, 5, 7)
    with pytest.raises(PassError, match="dim 1 is fixed to 3"):
        rewrite(m, input_shapes={"x": (1, 4, 5, 7)})
    with pytest.raises(PassError, match="'y'.*not take as input"):
        rewrite(m, input_shapes={"y": (1, 3, 5, 7)})


def test_make_feeds_dtypes():
    g = h.make_graph([], "g", [h.make_tensor_value_info("f", TP.FLOAT16, ["batch", 3]),
                               h.make_tensor_value_info("i", TP.INT64, ["batch"]),
                               h.make_tensor_value_info("b", TP.BOOL, [4])],
                     [h.make_tensor_value_info("f", TP.FLOAT16, ["batch", 3])])
    m = h.make_model(g)
    feeds = make_feeds(m)
    assert feeds["f"].dtype == np.float16 and feeds["f"].shape == (2, 3)
    assert feeds["i"].dtype == np.int64 and feeds["i"].shape == (2,) and feeds["i"].min() >= 0
    assert feeds["b"].dtype == bool
    assert input_specs(m)["i"][0] == (2,)   # "batch" names dim 0 of f: the batch size everywhere


# ---- rewrite_file() ----------------------------------------------------------------------------------

def test_rewrite_file_writes_only_when_verified(tmp_path, model_file):
    out = tmp_path / "out.onnx"
    report = rewrite_file(model_file, out)
    assert report.ok and report.written and out.is_file()
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp files left


def test_dry_run_writes_nothing(tmp_path, model_file):
    out = tmp_path / "out.onnx"
    report = rewrite_file(model_file, out, dry_run=True)
    assert report.ok and not report.written and not out.exists()
    assert report.counts()["fold-bn-after"] == 1 and "dry run: nothing written" in report.format()


def test_failed_verification_leaves_existing_output_untouched(tmp_path, model_file):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous content")
    st = os.stat(out)
    report = rewrite_file(model_file, out, ["fold-bn-after", ReluToIdentity()])
    assert not report.ok and not report.written and report.failed_rule == "broken-relu"
    assert out.read_bytes() == b"previous content" and os.stat(out).st_mtime_ns == st.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]


@pytest.mark.parametrize("case", ["missing", "random", "truncated", "empty", "checker", "directory"])
def test_bad_input_files(tmp_path, model_file, case, rng):
    src = tmp_path / "bad.onnx"
    if case == "random":
        src.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        want = "is not an ONNX model, or is truncated"
    elif case == "truncated":
        data = model_file.read_bytes()
        src.write_bytes(data[:len(data) // 2])
        want = "is not an ONNX model, or is truncated"
    elif case == "empty":
        src.write_bytes(b"")
        want = "is empty"
    elif case == "checker":
        m = onnx.load(model_file)
        m.graph.node[2].input[0] = "nowhere"     # Relu reads an undefined tensor
        src.write_bytes(m.SerializeToString())
        want = "the input model fails onnx.checker: .*nowhere"
    elif case == "directory":
        src.mkdir()
        want = "is not a file"
    else:
        want = "does not exist"
    out = tmp_path / "out.onnx"
    with pytest.raises(PassError, match=want):
        rewrite_file(src, out)
    assert not out.exists()
    assert cli.main(["fold", str(src), str(out)]) == 2
    assert not out.exists()


def test_external_data_in_and_out(tmp_path, rng):
    m = conv_bn_relu(rng, c=32)   # a 3.5 kB weight: above the 1 kB external-data threshold
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    onnx.save_model(onnx.ModelProto.FromString(m.SerializeToString()), src_dir / "in.onnx", save_as_external_data=True, location="in.weights", size_threshold=64)
    assert (src_dir / "in.weights").is_file()
    out = tmp_path / "dst" / "out.onnx"
    report = rewrite_file(src_dir / "in.onnx", out)
    assert report.ok and report.written
    assert (out.parent / "out.onnx.data").is_file()
    loaded = onnx.load(out)   # loads the data from beside it
    new, _ = rewrite(m, verify=False)
    assert {i.name: nh.to_array(i).tobytes() for i in loaded.graph.initializer} == \
           {i.name: nh.to_array(i).tobytes() for i in new.graph.initializer}
    # a missing data file is a clear error
    (src_dir / "in.weights").unlink()
    with pytest.raises(PassError, match="external data that cannot be read"):
        rewrite_file(src_dir / "in.onnx", tmp_path / "x.onnx")


def test_feeds_from_npz(tmp_path, model_file, rng):
    npz = tmp_path / "feeds.npz"
    np.savez(npz, x=rng.standard_normal((3, 3, 6, 6)).astype(np.float32))
    report = rewrite_file(model_file, tmp_path / "o.onnx", feeds=npz)
    assert report.ok and report.inputs["x"][0] == (3, 3, 6, 6)
    np.savez(npz, z=np.zeros(3, np.float32))
    with pytest.raises(PassError, match="no array for input\\(s\\) 'x'; arrays for 'z'"):
        rewrite_file(model_file, tmp_path / "o.onnx", feeds=npz)


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_exit_codes_and_output(tmp_path, model_file, capsys, monkeypatch):
    out = tmp_path / "out.onnx"
    assert cli.main(["fold", str(model_file), str(out)]) == 0 and out.is_file()
    text = capsys.readouterr().out
    assert re.search(r"^fold-bn-after +1$", text, re.M) and f"wrote {out}" in text
    assert cli.main(["fold", str(model_file), str(out), "--explain", "--rules", "fold-bn-before"]) == 0
    text = capsys.readouterr().out
    assert "not rewritten (--explain)" in text and "nothing was rewritten" in text
    assert re.search(r"^fold-bn-before +bn +BatchNormalization 'bn''s output goes to Relu 'relu'", text, re.M)
    # dry run: 0, nothing written
    out2 = tmp_path / "dry.onnx"
    assert cli.main(["fold", str(model_file), str(out2), "--dry-run"]) == 0 and not out2.exists()
    assert "dry run: nothing written" in capsys.readouterr().out
    # JSON
    assert cli.main(["fold", str(model_file), str(out2), "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["counts"]["fold-bn-after"] == 1 and not doc["written"]
    # a broken rule, by name: 1, nothing written
    monkeypatch.setitem(passes.RULES, "broken-relu", ReluToIdentity())
    assert cli.main(["fold", str(model_file), str(out2), "--rules", "fold-bn-after,broken-relu"]) == 1
    assert not out2.exists()
    err = capsys.readouterr()
    assert "rule broken-relu broke parity" in err.err and "FAILED: rule broken-relu" in err.out
    # usage errors: 2
    assert cli.main(["fold", str(model_file), str(out2), "--rules", "nope"]) == 2
    assert cli.main(["fold", str(model_file)]) == 2
    assert cli.main(["fold", str(model_file), str(out2), "--input-shape", "x=1xAx3"]) == 2
    assert cli.main(["fold", str(model_file), str(out2), "--rtol", "-1"]) == 2
    assert not out2.exists()
    assert cli.main(["fold", "--list-rules"]) == 0
    listed = capsys.readouterr().out
    assert "fold-bn-after" in listed and "fold-bn-before" in listed


def test_cli_input_shape(tmp_path, rng, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(conv_bn_relu(rng, x_shape=("N", 3, "H", "W")), src)
    assert cli.main(["fold", str(src), str(tmp_path / "o.onnx")]) == 2
    assert "dim 2 is symbolic" in capsys.readouterr().err
    assert cli.main(["fold", str(src), str(tmp_path / "o.onnx"), "--input-shape", "x=1x3x9x5"]) == 0
    assert "x 1x3x9x5 float32" in capsys.readouterr().out


def test_console_entry_point(tmp_path, model_file):
    r = subprocess.run([sys.executable, "-m", "normexport.cli", "fold", str(model_file), str(tmp_path / "o.onnx"),
                        "--no-verify"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "verification: off" in r.stdout


class ReluToMissingOp(Rule):
    """Test-only: a rewrite ORT cannot run (an op no one defines)."""
    name = "unrunnable"
    anchors = ("Relu",)

    def match(self, ctx, node):
        return Match([node])

    def rewrite(self, ctx, m):
        (n,) = m.nodes
        return [ctx.node("NoSuchOp", [n.inputs[0]], list(n.outputs), domain="test.domain", origin=n)]


def test_rewritten_graph_that_does_not_run_fails_cleanly(model):
    new, report = rewrite(model, [ReluToMissingOp()])
    assert not report.ok and new is model and report.failed_rule == "unrunnable"
    assert "does not run" in report.error or "fails onnx.checker" in report.error
    json.dumps(report.to_dict(), allow_nan=False)


def test_feeds_must_fit_the_graph(model, rng):
    x = rng.standard_normal((2, 3, 6, 6))
    with pytest.raises(PassError, match="input 'x' is float64, the graph takes float32"):
        rewrite(model, feeds={"x": x})
    with pytest.raises(PassError, match=r"input 'x' has shape \(2, 4, 6, 6\): dim 1 must be 3"):
        rewrite(model, feeds={"x": rng.standard_normal((2, 4, 6, 6)).astype(np.float32)})
    with pytest.raises(PassError, match="the graph takes rank 4"):
        rewrite(model, feeds={"x": rng.standard_normal((2, 3, 6)).astype(np.float32)})


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export_with_groupnorm_and_bns_all_rules(dynamo):
    """Conv(no bias) -> BN -> ReLU -> GroupNorm -> Conv -> BN from torch's exporters through
    every rule: both BNs folded; the GroupNorm fused into normexport::GroupNorm where a fusion
    rule recognizes the exporter's pattern (TorchScript's Reshape-InstanceNormalization chain);
    the result verified on the library and the function path, and equal to torch in float64."""
    import contextlib
    import io
    import warnings

    import torch
    from normexport.runtime import session
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        for bn in (m[1], m[5]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        m[3].weight.uniform_(0.5, 1.5)
        m[3].bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            proto = torch.onnx.export(m, (x,), dynamo=True, optimize=False).model_proto
        else:
            torch.onnx.export(m, (x,), f, dynamo=False, do_constant_folding=False)
            proto = onnx.load_from_string(f.getvalue())
    new, report = rewrite(proto)
    assert report.ok, report.format()
    counts = report.counts()
    assert counts["fold-bn-after"] == 2
    ops = [n.op_type for n in new.graph.node]
    assert "BatchNormalization" not in ops
    fused = sum(v for k, v in counts.items() if k.startswith("fuse-groupnorm"))
    if not dynamo:
        assert fused == 1 and "GroupNorm" in ops and "InstanceNormalization" not in ops, report.format()
        assert {v.path for v in report.verifications} == {"library", "function"}
    xs = torch.randn(2, 3, 8, 8)   # a static batch: these exports fix it
    with torch.no_grad():
        expected = m.double()(xs.double()).numpy()
    for use_library in (True, False):
        got = session(new, ["CPUExecutionProvider"], use_library=use_library).run(
            None, {proto.graph.input[0].name: xs.numpy()})[0]
        err = np.abs(got - expected).max()
        assert err <= 1e-6 + 1e-5 * np.abs(expected).max(), err
