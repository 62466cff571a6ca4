"""The reference networks of normexport.graphs end to end: built (GRAPHS convention), exported
with normexport.export (fold, custom ops, dynamic batch), run in ONNX Runtime's CPU execution
provider with the op library, against torch eval on a fresh batch of another size.

Tolerance: NORMS.md's float32 bound (rtol 1e-5, atol 1e-6) for every graph, deep ones
included: measured over 5 seeds, the worst element of any graph uses 0.55x of it (folded
ResNet-18 with BN), the same order as torch float32's own error against float64 on these nets
(0.5x), so no per-graph tolerance is needed. A graph that needs one goes in TOLERANCES with
the reason.
"""

import onnx
import pytest
import torch

import normexport
from normexport.graphs import GRAPHS, random_like
from normexport.spec import DEFAULT_TOLERANCES

TOLERANCES = {}  # name -> Tolerance (none needed, see the module docstring)

#: graphs whose every BN-family layer sits right after a conv: the fold leaves no BN node
FULLY_FOLDABLE = {"resnet18_bn", "resnet18_brn"}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_exports_and_matches_torch(name, tmp_path):
    model, example = GRAPHS[name]()
    assert isinstance(model, torch.nn.Module) and not model.training
    assert isinstance(example, tuple) and all(isinstance(t, torch.Tensor) for t in example)
    report = normexport.export(model, example, tmp_path / f"{name}.onnx")
    graph = onnx.load(tmp_path / f"{name}.onnx")
    ops = {n.op_type for n in graph.graph.node}
    if name in FULLY_FOLDABLE:
        assert "BatchNormalization" not in ops, report.notes
        assert not any(n.startswith("not folded") for n in report.notes), report.notes
    sess = normexport.session(tmp_path / f"{name}.onnx", ["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(11)
    fresh = tuple(random_like(t, 3, gen) for t in example)
    ys = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), fresh)})
    with torch.no_grad():
        expected = model(*fresh)
    expected = expected if isinstance(expected, tuple) else (expected,)
    result = normexport.compare(ys, [t.numpy() for t in expected], label=name,
                                tolerance=TOLERANCES.get(name, DEFAULT_TOLERANCES["float32"]))
    assert result, str(result)


def test_graph_factories_are_deterministic():
    (m1, x1), (m2, x2) = GRAPHS["cbn_generator"](), GRAPHS["cbn_generator"]()
    assert all(torch.equal(a, b) for a, b in zip(x1, x2))
    assert x1[1].dtype == torch.int64  # labels
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
