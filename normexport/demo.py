"""``normexport demo``: the main job end to end on bundled defaults.

1. Train a small FRN ResNet on synthetic data for a few steps, export it, run it in ONNX
   Runtime through the native kernels and through the ONNX function fallback, and print a
   parity table (against torch eval mode and against the same model in float64) and a timing
   table.
2. The norm sweep: every registry entry's layer trained a few steps, exported, and run in ONNX
   Runtime; torch eval and ONNX Runtime against the entry's float64 reference.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import registry
from .export import export
from .parity import compare, format_table
from .runtime import library_path, served_by, session


def _synthetic_batch(gen: torch.Generator, proj: torch.Tensor, n: int, size: int):
    x = torch.randn(n, 3, size, size, generator=gen)
    y = (x.mean(dim=(2, 3)) @ proj).argmax(dim=1)
    return x, y


def _median_ms(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def run(out_dir: str | None = None, steps: int = 30, batch: int = 8, size: int = 32,
        repeat: int = 20, seed: int = 0, log=print) -> bool:
    from .graphs import GRAPHS
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, _ = GRAPHS["resnet18_frn"]()
    proj = torch.randn(3, 10, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = _synthetic_batch(gen, proj, 32, size)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    log(f"trained resnet18_frn for {steps} steps on synthetic data: loss {losses[0]:.3f} -> "
        f"{np.mean(losses[-5:]):.3f} (mean of last 5)")
    model.eval()

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="normexport-demo-")
        out_dir = tmp.name
    path = Path(out_dir) / "resnet18_frn.onnx"
    x, _ = _synthetic_batch(gen, proj, batch, size)
    report = export(model, (x,), path)
    log(str(report))

    feeds = {"x": x.numpy()}
    with torch.no_grad():
        ref32 = model(x).numpy()
        ref64 = copy.deepcopy(model).double()(x.double()).numpy()
    lib = library_path()
    paths = {"torch eval (float32)": lambda: [ref32]}
    sessions = {}
    if lib:
        sessions["ORT + normexport kernels"] = session(path, ["CPUExecutionProvider"])
    sessions["ORT function fallback"] = session(path, ["CPUExecutionProvider"], use_library=False)
    for name, s in sessions.items():
        in_name = s.get_inputs()[0].name
        feeds = {in_name: x.numpy()}
        paths[name] = (lambda s_, f_: lambda: s_.run(None, f_))(s, feeds)

    rows, ok = [], True
    for name, fn in paths.items():
        outs = fn()
        vs_torch = compare(outs, [ref32], label=name, names=["logits"])
        vs64 = compare(outs, [ref64], label=name, names=["logits"])
        if name != "torch eval (float32)":
            ok &= bool(vs_torch)
        o, o64 = vs_torch.outputs[0], vs64.outputs[0]
        rows.append([name, f"{o.max_abs:.2e}", f"{o.max_rel:.2e}", f"{o64.max_abs:.2e}",
                     f"{o64.max_rel:.2e}", "PASS" if o else "FAIL"])
    log("\nparity on a fresh batch of %d (tolerance rtol=%g atol=%g vs torch eval):" % (
        batch, registry.DEFAULT_TOLERANCES["float32"].rtol, registry.DEFAULT_TOLERANCES["float32"].atol))
    log(format_table(["path", "max abs vs torch", "max rel vs torch", "max abs vs float64",
                      "max rel vs float64", "result"], rows))
    if not lib:
        log("note: the native op library is not built; only the function fallback ran "
            "(see `normexport ops`)")
    else:
        served = served_by(path, feeds)
        ops = registry.custom_ops()
        native = {k: v for k, v in served.items() if k[0] in ops}
        log("custom nodes served by native kernels: " +
            (", ".join(f"{op} x{n} on {ep}" for (op, ep), n in sorted(native.items())) or "none"))
        if not native:
            ok = False
            log("FAIL: the library is loaded but no normexport kernel ran")

    timing = []
    with torch.no_grad():
        t_torch = _median_ms(lambda: model(x), repeat)
    timing.append(["torch eager (float32)", f"{t_torch:.3f}", "1.00"])
    for name, fn in list(paths.items())[1:]:
        t = _median_ms(fn, repeat)
        timing.append([name, f"{t:.3f}", f"{t_torch / t:.2f}"])
    log(f"\ntiming, batch {batch} x 3 x {size} x {size}, median of {repeat} runs, "
        f"{torch.get_num_threads()} torch threads, ORT default threads:")
    log(format_table(["path", "ms / batch", "speed vs torch"], timing))
    ok &= sweep(out_dir, log=log)
    log("\nparity: " + ("PASS" if ok else "FAIL"))
    if tmp is not None:
        tmp.cleanup()
    return ok


def _outputs(y) -> list:
    return list(y) if isinstance(y, (tuple, list)) else [y]


def sweep(out_dir: str | Path, steps: int = 5, log=print) -> bool:
    """Every registry entry: train, export, run in ORT, compare with the float64 reference."""
    from .export import ExportError
    from .spec import np64
    rows, ok = [], True
    lib = library_path()
    for spec in registry.REGISTRY.values():
        gen = torch.Generator().manual_seed(spec.row)
        layer = spec.example(8, gen)
        train_inputs = spec.inputs(layer, max(8, spec.min_train_batch), gen)
        params = [p for p in layer.parameters() if p.requires_grad]
        layer.train()
        if params:
            opt = torch.optim.Adam(params, lr=1e-2)
            for _ in range(steps):
                loss = sum(o.float().square().mean() for o in _outputs(layer(*train_inputs))
                           if o.is_floating_point())
                opt.zero_grad()
                loss.backward()
                opt.step()
        else:
            with torch.no_grad():
                layer(*train_inputs)
        layer.eval()
        inputs = spec.inputs(layer, 4, gen)
        expected = spec.reference(layer, tuple(np64(t) if t.is_floating_point() else t.numpy()
                                               for t in inputs), False).outputs
        tol = spec.tolerances["float32"]
        with torch.no_grad():
            torch_out = [t.numpy() for t in _outputs(layer(*inputs))]
        c_torch = compare(torch_out, expected, tolerance=tol)
        rule = spec.export.kind if spec.export is not None else "traced"
        row = [spec.name, str(spec.row), rule]
        path = Path(out_dir) / f"sweep_{spec.name}.onnx"
        try:
            report = export(layer, inputs, path)
        except ExportError as e:
            ok = False
            rows.append(row + ["-", _max_rel(c_torch), "-", f"FAIL: {e}"])
            continue
        s = session(path, ["CPUExecutionProvider"])
        feeds = {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs)}
        c_ort = compare(s.run(None, feeds), expected, tolerance=tol)
        custom = sum(n for k, n in report.node_counts.items() if k.startswith("normexport::"))
        nodes = f"{sum(report.node_counts.values())} ({custom} normexport)" if custom else \
            str(sum(report.node_counts.values()))
        good = bool(c_torch) and bool(c_ort)
        ok &= good
        rows.append(row + [nodes, _max_rel(c_torch), _max_rel(c_ort), "PASS" if good else
                           "FAIL: " + "; ".join(f"{lbl} {o.error or f'{o.n_bad} elements off'}"
                                                for lbl, c in (("torch", c_torch), ("ORT", c_ort))
                                                for o in c.outputs if not o)])
    log(f"\nnorm sweep: each registry layer trained {steps} steps, exported, run in ORT "
        f"({'with' if lib else 'without'} the op library); max rel error vs its float64 reference:")
    log(format_table(["norm", "row", "declared rule", "ONNX nodes", "torch eval", "ORT", "result"], rows))
    return ok


def _max_rel(c) -> str:
    return f"{max(o.max_rel for o in c.outputs):.1e}"
