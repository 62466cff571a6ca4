"""The native library: built, loadable, exporting one symbol, CUDA compiled where nvcc is,
and registering exactly the kernels the registry's table says."""

import os
import shutil
import subprocess

import pytest

import normexport
from normexport import registry

from conftest import CUSTOM_SPECS


def test_library_path_and_info(library):
    info = normexport.native_info()
    assert os.path.isfile(library) and os.path.basename(library) == info["LIBRARY"]
    assert info["ORT_API_VERSION"] and info["ORT_HEADERS_SOURCE"] in ("ORT_INCLUDE_DIR", "system", "debian-fetch")


def test_library_path_env_override(monkeypatch, tmp_path, library):
    monkeypatch.setenv("NORMEXPORT_LIBRARY", library)
    assert normexport.library_path() == os.path.realpath(library)
    monkeypatch.setenv("NORMEXPORT_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="NORMEXPORT_LIBRARY"):
        normexport.library_path()


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils nm not installed")
def test_only_register_custom_ops_is_exported(library):
    out = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True,
                         check=True).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols == {"RegisterCustomOps"}, symbols


def test_cuda_kernels_compiled_when_nvcc_present(library):
    """CI has nvcc and no GPU: the CUDA path must still compile into the library."""
    if shutil.which("nvcc") is None or os.environ.get("NORMEXPORT_NO_CUDA") == "1":
        pytest.skip("no nvcc on this machine (or NORMEXPORT_NO_CUDA=1): CUDA kernels not built")
    assert normexport.native_info()["CUDA"] is True, normexport.native_info()


@pytest.mark.parametrize("spec", CUSTOM_SPECS, ids=lambda s: s.name)
def test_kernel_table_matches_library(spec, library, tmp_path):
    """Every (op, CPU, dtype) the registry lists is served by a native kernel; an op whose
    table lists no CPU kernel is not served natively (float32: its function runs)."""
    import torch
    listed = spec.export.kernels.get(registry.CPU, ())
    for dtype in listed or ("float32",):
        tdt = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}[dtype]
        layer = spec.example(4, torch.Generator().manual_seed(0)).to(tdt).eval()
        inputs = tuple(t.to(tdt) for t in spec.inputs(layer, 2, torch.Generator()))
        path = tmp_path / f"{dtype}.onnx"
        normexport.export(layer, inputs, path)
        import onnx
        import onnxruntime as ort
        names = [i.name for i in onnx.load(path).graph.input]
        feeds = {n: t.numpy() for n, t in zip(names, inputs)}
        try:
            served = normexport.served_by(path, feeds, providers=[registry.CPU])
        except ort.capi.onnxruntime_pybind11_state.NotImplemented:
            if dtype != "float64":
                raise
            served = _served_by_node_alone(path, feeds)
        assert served[(spec.export.op_type, registry.CPU)] == (1 if listed else 0), (dtype, served)


def _served_by_node_alone(path, feeds):
    """ORT's CPU EP lacks some standard kernels in float64 (Resize: the SPADE layer's nearest
    upsampling), so a float64 export may not run as a whole: the normexport node is cut out of
    it (its function kept) and fed random tensors of its inputs' inferred shapes."""
    import numpy as np
    import onnx
    model = onnx.load(path)
    for vi in model.graph.input:
        for d, size in zip(vi.type.tensor_type.shape.dim, feeds[vi.name].shape):
            d.Clear()
            d.dim_value = size
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    node = next(n for n in model.graph.node if n.domain == "normexport")
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input)}
    inits = {i.name for i in model.graph.initializer}
    sub = onnx.utils.Extractor(model).extract_model([i for i in node.input if i and i not in inits],
                                                    list(node.output))
    rng = np.random.default_rng(0)
    sub_feeds = {i.name: rng.random(shapes[i.name]) + 0.5 for i in sub.graph.input}
    return normexport.served_by(sub, sub_feeds, providers=[registry.CPU])


def test_cpu_only_session_with_cuda_kernels_registered(library):
    """Registering CUDA kernels must not break a CPU-only session (every op has a CPU kernel)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.register_custom_ops_library(library)
    from test_kernels import feeds_for, frn_model
    s = ort.InferenceSession(frn_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert s.run(None, feeds_for((1, 2, 3, 3), "float32"))[0].shape == (1, 2, 3, 3)


def test_without_library_everything_runs_on_functions(monkeypatch, tmp_path, capsys):
    """An install where the native build was skipped (no compiler/headers): library_path() is
    None, `normexport ops` says why, and exported models still run (function fallback)."""
    import torch

    from normexport import _native, cli
    monkeypatch.delenv("NORMEXPORT_LIBRARY", raising=False)
    monkeypatch.setattr(_native, "LIBRARY", None)
    monkeypatch.setattr(_native, "SKIP_REASON", "no C++ compiler found")
    assert normexport.library_path() is None
    assert cli.main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "not built (no C++ compiler found)" in out and "function fallback" in out
    assert "native kernel" not in out

    spec = registry.REGISTRY["frn"]
    layer = spec.example(4, torch.Generator().manual_seed(0)).eval()
    inputs = spec.inputs(layer, 3, torch.Generator().manual_seed(1))
    normexport.export(layer, inputs, tmp_path / "m.onnx")
    sess = normexport.session(tmp_path / "m.onnx", [registry.CPU])
    y = sess.run(None, {sess.get_inputs()[0].name: inputs[0].numpy()})
    expected = spec.reference(layer, (inputs[0].double().numpy(),), False).outputs
    assert normexport.compare(y, expected)
    served = normexport.served_by(tmp_path / "m.onnx", {sess.get_inputs()[0].name: inputs[0].numpy()},
                                  providers=[registry.CPU])
    assert served[(spec.export.op_type, registry.CPU)] == 0
