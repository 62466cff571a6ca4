"""`normexport bench`: the JSON document's structure (every registry custom op, every
measurement positive and finite or null where it does not apply, ratios = quotients of the
times, every path computing the same outputs). No timing assertions: speed claims live in
the bench output only."""

import json
import math
import subprocess
import sys

import pytest

import normexport
from normexport import bench, registry


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "normexport.cli", "bench", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def doc():
    r = _run("--quick", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_header(doc):
    assert doc["quick"] is True and doc["repeat"] == 2 and doc["threads"] == 2
    assert _positive(doc["llc_bytes"]) and doc["llc_source"]
    assert doc["library"] == normexport.library_path()


def test_every_custom_op_present(doc):
    assert {r["op"] for r in doc["ops"]} == set(registry.custom_ops())
    assert all(r["size"] == "quick" for r in doc["ops"])


def test_measurements_positive_or_not_applicable(doc):
    lib = normexport.library_path()
    for r in doc["ops"]:
        m = r["measurements"]
        assert {"native", "function", "torch", "copy"} <= set(m), r["op"]
        native_expected = bool(lib) and "float32" in registry.custom_ops()[r["op"]].kernels.get(registry.CPU, ())
        assert (m["native"] is not None) == native_expected, (r["op"], r["notes"])
        if m["native"] is None:
            assert any("function path only" in n for n in r["notes"]), r
        assert any(k.startswith("stock:") for k in m), f"{r['op']}: no stock-ORT formulation"
        assert _positive(r["bytes"])
        for k, v in m.items():
            if k == "native" and v is None:
                continue
            assert v is not None, (r["op"], k)
            assert _positive(v["ms"]) and _positive(v["gbps"]), (r["op"], k, v)
            assert math.isclose(v["gbps"], r["bytes"] / (v["ms"] * 1e-3) / 1e9, rel_tol=1e-9)


def test_ratios_are_quotients_of_the_times(doc):
    for r in doc["ops"]:
        m = r["measurements"]
        assert {"native/copy", "function/native", "torch/native"} <= set(r["ratios"])
        assert {f"{k}/native" for k in m if k.startswith("stock:")} <= set(r["ratios"])
        for key, ratio in r["ratios"].items():
            a, b = key.rsplit("/", 1)
            if m[a] is None or m[b] is None:
                assert ratio is None, (r["op"], key)
            else:
                assert _positive(ratio) and math.isclose(ratio, m[a]["ms"] / m[b]["ms"], rel_tol=1e-9), (r["op"], key)


def test_every_path_computes_the_same_outputs(doc):
    """A wrong stock formulation would make a bogus race: all agree with the function body."""
    for r in doc["ops"]:
        diffs = r["max_abs_diff_vs_function"]
        assert {k for k, v in r["measurements"].items() if v is not None} - {"function", "copy"} == set(diffs)
        for k, d in diffs.items():
            assert d < 1e-4, (r["op"], k, d)


def test_model_section(doc):
    assert [g["graph"] for g in doc["graphs"]] == list(bench.QUICK_GRAPHS)
    for g in doc["graphs"]:
        assert _positive(g["ms"]["ort_function"]) and _positive(g["ms"]["torch"])
        if normexport.library_path():
            assert _positive(g["ms"]["ort_library"])
            assert math.isclose(g["ratios"]["ort_function/ort_library"],
                                g["ms"]["ort_function"] / g["ms"]["ort_library"], rel_tol=1e-9)


def test_text_report_and_op_filter(capsys):
    from normexport import cli
    assert cli.main(["bench", "--quick", "--ops", "FilterResponseNorm,groupnorm", "--graphs", "none"]) == 0
    out = capsys.readouterr().out
    assert "normexport::FilterResponseNorm" in out and "normexport::GroupNorm" in out
    assert "normexport::AdaIN" not in out and "models" not in out
    assert "memory copy" in out and "x native" in out and "GB/s" in out
    assert "summary, native kernel against" in out


def test_bad_arguments(capsys):
    from normexport import cli
    for args in (["--ops", "NoSuchOp"], ["--sizes", "huge"], ["--graphs", "nope"]):
        assert cli.main(["bench", "--quick", *args]) == 2, args
        assert "normexport bench" in capsys.readouterr().err, args


def test_small_size_runs_every_cache_resident_shape():
    """`--sizes small` runs each of bench.SMALL_SHAPES (a tiny sample and a batch of ResNet-stage
    maps), every one fitting in the last-level cache."""
    r = _run("--ops", "GroupNorm", "--sizes", "small", "--repeat", "1", "--graphs", "none", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert [tuple(x["shape"]) for x in d["ops"]] == list(bench.SMALL_SHAPES)
    assert len(bench.SMALL_SHAPES) >= 2 and any(s[0] > 1 for s in bench.SMALL_SHAPES)
    for x in d["ops"]:
        assert x["size"] == "small" and 0 < x["bytes"] < d["llc_bytes"], x
        assert x["measurements"]["native"] is None or _positive(x["measurements"]["native"]["ms"])


def test_large_shapes_batch_and_one_sample():
    """`large` is two shapes per op, each moving >= the target bytes: a batch of (64, 56, 56) maps
    (planes, groups and samples cache-sized) and one huge sample."""
    target = 48 << 20
    for op, recipe in bench.RECIPES.items():
        batch, one = bench.large_shapes(recipe, target)
        assert batch[0] > 1 and batch[1:] == (bench.LARGE_CHANNELS, *bench.LARGE_PLANE), (op, batch)
        assert one[0] == 1 and one[1] == bench.LARGE_CHANNELS and one[2] == one[3] > 3 * batch[2], (op, one)
        for shape in (batch, one):
            assert bench._case_bytes(recipe(shape, bench._rng())) >= target, (op, shape)


def test_baseline_library_is_timed_in_paired_rounds():
    """`--baseline LIB`: another build's native kernel timed against this build's in alternating
    rounds; the document carries both medians and the paired ratio, and the baseline's outputs are
    compared like every other path. (The installed library as its own baseline: a ratio near 1 is
    expected, but no timing is asserted.)"""
    lib = normexport.library_path()
    if lib is None:
        pytest.skip("the op library is not built (no C++ toolchain at install time)")
    r = _run("--quick", "--ops", "FilterResponseNorm", "--graphs", "none", "--json", "--baseline", lib)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["baseline_library"] == lib
    (x,) = d["ops"]
    bl = x["baseline"]
    assert bl["library"] == lib and bl["rounds"] == bench.BASELINE_ROUNDS
    assert _positive(bl["native_ms"]) and _positive(bl["baseline_ms"]) and _positive(bl["baseline/native"])
    assert x["max_abs_diff_vs_function"]["baseline"] <= 1e-5
    text = bench.format_report(d)
    assert "baseline / native (paired)" in text and "alternating rounds" in text


def test_paired_ratio_is_the_median_of_round_ratios():
    import itertools
    import time as _time
    calls = itertools.count()

    def slow():
        next(calls)
        _time.sleep(0.002)
    ta, tb, ratio = bench._paired_ms(lambda: None, slow, 3)
    assert next(calls) == 3 * 4          # 3 rounds x (1 warm-up + 3 timed runs)
    assert tb > ta and ratio > 1 and tb >= 2.0


def test_bad_baseline_path_is_refused(capsys):
    from normexport import cli
    assert cli.main(["bench", "--quick", "--graphs", "none", "--baseline", "/nonexistent/lib.so"]) == 2
    err = capsys.readouterr().err
    assert "--baseline" in err and "/nonexistent/lib.so" in err and "not a file" in err
