"""The ONNX backend node tests for BatchNormalization, InstanceNormalization, GroupNormalization
and LayerNormalization (and their ``_expanded`` function-body forms, which are decomposed
patterns the fusions look for) run through every pass rule unchanged in meaning: the rewritten
model still reproduces the test's expected outputs from its inputs in ONNX Runtime, within the
node test's tolerance (onnx's runner: rtol 1e-3, atol 1e-7, elementwise).

The cases are the ``onnx/backend/test/data/node/<prefix>*`` directories of the installed onnx
package (model.onnx, test_data_set_*/input_*.pb, output_*.pb), so new ones are picked up. onnx
wheels from 1.20 on ship without that data folder; then the same cases come from onnx's own
generators (``onnx.backend.test.case.node.collect_testcases``: the code the data folder is
written from), with the tolerances they declare.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

from normexport.parity import compare
from normexport.passes import rewrite
from normexport.passes.verify import has_custom_nodes
from normexport.runtime import session
from normexport.spec import Tolerance

PREFIXES = ("test_batchnorm_", "test_instancenorm_", "test_group_normalization_", "test_layer_normalization_")
NODE_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
RUNNER_RTOL, RUNNER_ATOL = 1e-3, 1e-7     # onnx.backend.test.runner's defaults for node tests


def _from_dirs():
    if not NODE_DIR.is_dir():
        return []
    return [(d.name, d) for d in sorted(NODE_DIR.iterdir()) if d.is_dir() and d.name.startswith(PREFIXES)]


def _from_generators():
    from onnx.backend.test.case.node import collect_testcases
    return [(c.name, c) for c in collect_testcases() if c.name.startswith(PREFIXES)]


CASES = _from_dirs() or _from_generators()
SOURCE = "data" if NODE_DIR.is_dir() and _from_dirs() else "generators"


def _read_pb(path):
    t = onnx.TensorProto()
    t.ParseFromString(Path(path).read_bytes())
    return nh.to_array(t)


def load_case(case):
    """(model, [(inputs by name, expected outputs)], rtol, atol)."""
    if isinstance(case, Path):
        model = onnx.load(case / "model.onnx")
        sets = []
        for d in sorted(glob.glob(str(case / "test_data_set_*"))):
            n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
            n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
            ins = [_read_pb(os.path.join(d, f"input_{i}.pb")) for i in range(n_in)]
            outs = [_read_pb(os.path.join(d, f"output_{i}.pb")) for i in range(n_out)]
            sets.append((ins, outs))
        rtol, atol = RUNNER_RTOL, RUNNER_ATOL
    else:
        model, sets, rtol, atol = case.model, list(case.data_sets), case.rtol, case.atol
    names = [i.name for i in model.graph.input]
    inits = {i.name for i in model.graph.initializer}
    names = [n for n in names if n not in inits]
    return model, [({n: np.asarray(v) for n, v in zip(names, ins)}, [np.asarray(o) for o in outs])
                   for ins, outs in sets], rtol, atol


def test_cases_found():
    assert len(CASES) >= 60, f"{len(CASES)} cases from the onnx {SOURCE}"
    kinds = {p for p in PREFIXES if any(name.startswith(p) for name, _ in CASES)}
    assert kinds == set(PREFIXES)


@pytest.mark.parametrize("name,case", CASES, ids=[n for n, _ in CASES])
def test_backend_node_case_survives_the_passes(name, case):
    model, sets, rtol, atol = load_case(case)
    feeds, _ = sets[0]
    new, report = rewrite(model, feeds=feeds)   # every rule, verified against ORT on the test's inputs
    assert report.ok, report.format()
    paths = [True] + ([False] if has_custom_nodes(new) else [])
    worst = 0.0
    for feeds, expected in sets:
        for use_library in paths:
            got = session(new, ["CPUExecutionProvider"], use_library=use_library).run(None, feeds)
            res = compare(got[:len(expected)], expected, tolerance=Tolerance(rtol=rtol, atol=atol),
                          label=f"{name} {'library' if use_library else 'function'}")
            assert res, str(res)
            worst = max([worst] + [o.max_abs for o in res.outputs])
    applied = {k: v for k, v in report.counts().items() if v}
    print(f"{name}: rewrites {applied or 'none'}; max abs err vs expected {worst:.3g}")
    if not applied:   # nothing matched: the very same model back
        assert new is model


BN_CASES = [(n, c) for n, c in CASES if n.startswith("test_batchnorm_") and "training" not in n]


@pytest.mark.parametrize("name,case", BN_CASES, ids=[n for n, _ in BN_CASES])
def test_backend_batchnorm_with_constant_statistics_is_folded(name, case):
    """The BN node tests' statistics frozen as initializers and an identity 1x1 Conv put in
    front (same outputs by construction): fold-bn-after folds the BN, and the folded Conv still
    reproduces the node test's expected output."""
    from onnx import helper as h
    model, sets, rtol, atol = load_case(case)
    assert len(sets) == 1
    feeds, expected = sets[0]
    (bn,) = model.graph.node
    x_name = bn.input[0]
    x = feeds[x_name]
    c = x.shape[1]
    eye = np.eye(c, dtype=x.dtype).reshape((c, c) + (1,) * (x.ndim - 2))
    inits = [nh.from_array(eye, "eye")] + [nh.from_array(feeds[n], n) for n in bn.input[1:]]
    conv = h.make_node("Conv", [x_name, "eye"], ["x_conv"], name="identity_conv")
    new_bn = onnx.NodeProto()
    new_bn.CopyFrom(bn)
    new_bn.input[0] = "x_conv"
    new_bn.name = new_bn.name or "bn"
    g = h.make_graph([conv, new_bn], name, [i for i in model.graph.input if i.name == x_name],
                     list(model.graph.output), inits)
    m = h.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    onnx.checker.check_model(m)
    new, report = rewrite(m, feeds={x_name: x})
    assert report.ok and report.counts()["fold-bn-after"] == 1, report.format()
    assert [n.op_type for n in new.graph.node] == ["Conv"]
    got = session(new, ["CPUExecutionProvider"]).run(None, {x_name: x})
    res = compare(got, expected, tolerance=Tolerance(rtol=rtol, atol=atol), label=name)
    print(f"{name} (constant statistics, folded): max abs err vs expected {res.outputs[0].max_abs:.3g}")
    assert res, str(res)
