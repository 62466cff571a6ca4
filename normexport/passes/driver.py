"""The pass driver: :func:`rewrite` (a ModelProto) and :func:`rewrite_file` (in.onnx -> out.onnx),
with :class:`PassReport`.

Order of work in :func:`rewrite`:

1. the input is checked with ``onnx.checker`` (full check: strict shape inference; a model
   that passes only the plain check is accepted and its result gets the plain check too);
2. with verification on, the feeds are drawn (or taken) once and the original runs once
   (ORT; ONNX's reference evaluator when ORT cannot run it);
3. the rules run one at a time in ``RULES`` order (fusions, then folds): import the current
   model into onnx-graphsurgeon, apply the rule everywhere it matches, export, attach the
   ``normexport`` functions. When the rule changed something, the new model is verified
   against the original's outputs (with the op library, and without it when it holds
   ``normexport`` nodes). A failure stops the run: the report names the rule and the nodes it
   rewrote, ``ok`` is False and the caller gets the original model back untouched;
4. the result gets ``onnx.checker`` (full check).

A model no rule changes comes back as the same object, untouched.

:func:`rewrite_file` adds the file handling: a missing, empty, non-ONNX or truncated file, a
model that fails the checker, or missing external data is a :class:`PassError` (nothing
written); models with external data are loaded from the model's folder and written with
external data (one ``<out name>.data`` file beside the output); every file is written
atomically (``normexport._io``), and only when the report is ok and it is not a dry run.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .._io import atomic_write_bytes
from . import verify as _verify
from .base import Applied, Explanation, PassError, Rule, RuleRun, apply_rule, export_graph, import_graph

_TWO_GB = 2**31 - 1


def _counts(model: onnx.ModelProto) -> dict[str, int]:
    c = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                for n in model.graph.node)
    return dict(sorted(c.items()))


@dataclass
class PassReport:
    """What a rewrite did. ``ok``: every step verified (or verification off) and the result
    passes the checker; ``failed_rule`` / ``failed_nodes`` name the step that broke parity."""

    rules: list[str] = field(default_factory=list)
    applied: list[Applied] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    verifications: list = field(default_factory=list)      # verify.Verification, in order
    verify: bool = True
    inputs: dict = field(default_factory=dict)             # fed input -> [shape, dtype]
    reference: str = ""                                    # what ran the original
    ok: bool = True
    failed_rule: str | None = None
    failed_nodes: list[str] = field(default_factory=list)
    error: str | None = None
    nodes_before: dict = field(default_factory=dict)
    nodes_after: dict = field(default_factory=dict)
    functions: list[str] = field(default_factory=list)
    src: str | None = None
    dst: str | None = None
    dry_run: bool = False
    written: bool = False

    def counts(self) -> dict[str, int]:
        """Rewrites per rule, every rule that ran listed (0 when it never matched)."""
        out = {r: 0 for r in self.rules}
        for a in self.applied:
            out[a.rule] = out.get(a.rule, 0) + 1
        return out

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    def _live_explanations(self) -> list[Explanation]:
        """Explanations minus those about a node a later rule rewrote after all."""
        rewritten = {n for a in self.applied for n in a.nodes}
        return [e for e in self.explanations if e.node not in rewritten]

    def format(self) -> str:
        from ..parity import format_table
        lines = []
        if self.src or self.dst:
            lines.append(f"normexport fold: {self.src} -> {self.dst}")
        lines.append(format_table(["rule", "rewrites"], [[r, str(n)] for r, n in self.counts().items()]))
        for a in self.applied:
            lines.append(f"  {a.rule}: {', '.join(a.nodes)} -> {', '.join(a.new_nodes)}")
        if self.nodes_before:
            after = self.nodes_after or self.nodes_before
            ops = sorted(set(self.nodes_before) | set(after))
            lines.append(format_table(["op", "before", "after"],
                                      [[o, str(self.nodes_before.get(o, 0)), str(after.get(o, 0))] for o in ops]))
        if not self.verify:
            lines.append("verification: off (--no-verify)")
        elif self.verifications:
            feeds = ", ".join(f"{k} {'x'.join(map(str, s)) or 'scalar'} {d}" for k, (s, d) in self.inputs.items())
            lines.append(f"verification: original run by {self.reference} on random inputs ({feeds or 'none'}); "
                         f"criterion max|actual - expected| <= atol + rtol max|expected| per output")
            rows = []
            for v in self.verifications:
                for o in v.outputs:
                    rows.append([v.label, v.path, o.name, f"{o.max_abs:.3g}", f"{o.max_expected:.3g}",
                                 f"{o.bound:.3g}", "PASS" if o.passed else f"FAIL{' (' + o.error + ')' if o.error else ''}"])
            lines.append(format_table(["step", "path", "output", "max abs err", "max |expected|", "bound", "result"], rows))
        elif self.verify and self.ok and not self.error:
            lines.append("verification: nothing was rewritten, nothing to verify")
        live = self._live_explanations()
        if live:
            lines.append("not rewritten (--explain):")
            lines.append(format_table(["rule", "node", "reason"], [[e.rule, e.node or e.op, e.reason] for e in live]))
        if self.failed_rule:
            lines.append(f"FAILED: rule {self.failed_rule} broke parity (it rewrote "
                         f"{', '.join(self.failed_nodes) or '?'}); nothing written")
        elif self.error:
            lines.append(f"FAILED: {self.error}; nothing written")
        elif self.dry_run:
            lines.append("dry run: nothing written")
        elif self.written:
            lines.append(f"wrote {self.dst}")
        return "\n".join(lines)

    __str__ = format

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "src": self.src, "dst": self.dst, "dry_run": self.dry_run, "written": self.written,
            "rules": list(self.rules), "counts": self.counts(),
            "applied": [{"rule": a.rule, "nodes": list(a.nodes), "new_nodes": list(a.new_nodes)} for a in self.applied],
            "explanations": [{"rule": e.rule, "node": e.node, "op": e.op, "reason": e.reason}
                             for e in self._live_explanations()],
            "verify": self.verify, "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.inputs.items()},
            "reference": self.reference, "verifications": [v.to_dict() for v in self.verifications],
            "failed_rule": self.failed_rule, "failed_nodes": list(self.failed_nodes), "error": self.error,
            "nodes_before": dict(self.nodes_before), "nodes_after": dict(self.nodes_after),
            "functions": list(self.functions),
        }


def resolve_rules(rules: Iterable[Rule | str] | str | None) -> list[Rule]:
    """Rule objects in ``RULES`` order for names (a list or ``"a,b"``), the rules themselves, or
    None (every rule)."""
    from . import RULES
    if rules is None:
        return list(RULES.values())
    if isinstance(rules, str):
        rules = [r.strip() for r in rules.split(",") if r.strip()]
    out: list[Rule] = []
    for r in rules:
        if isinstance(r, Rule):
            out.append(r)
        elif isinstance(r, str):
            if r not in RULES:
                raise PassError(f"unknown rule {r!r}; the rules are: {', '.join(RULES) or 'none'}")
            out.append(RULES[r])
        else:
            raise PassError(f"rules: expected rule names or Rule objects, got {type(r).__name__}")
    if not out:
        raise PassError("no rules selected")
    order = {name: i for i, name in enumerate(RULES)}
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise PassError(f"a rule is named twice in {names}")
    # registered rules run in table order; extra (unregistered) rules after them, as given
    return sorted(out, key=lambda r: order.get(r.name, len(order)))


def _check(model: onnx.ModelProto, what: str) -> bool:
    """onnx.checker on ``model``: full check if it passes, else the plain one; PassError if even
    that fails. Returns whether the full check passed."""
    if model.ByteSize() > _TWO_GB:
        raise PassError(f"{what} is over 2 GB in one protobuf; not supported")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise PassError(f"{what} fails onnx.checker: {str(e).strip()}") from None
    try:
        onnx.checker.check_model(model, full_check=True)
        return True
    except Exception:   # strict shape inference is stricter than the checker: the plain check rules
        return False


def rewrite(model: onnx.ModelProto, rules=None, *, explain: bool = False, verify: bool = True,
            input_shapes: Mapping[str, tuple] | None = None, feeds: Mapping[str, np.ndarray] | None = None,
            rtol: float | None = None, atol: float | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """Rewrite ``model`` with ``rules`` (names or Rule objects; None: every rule of ``RULES``).

    Returns ``(model, report)``: the rewritten model when ``report.ok``, else the original
    (untouched). ``verify``: run original and rewritten in ORT after each rule that changed
    something (random feeds from the graph's input shapes, symbolic batch = 2, other symbolic
    dims from ``input_shapes``; or ``feeds``) with the normwise tolerance of
    :mod:`normexport.passes.verify` (``rtol`` / ``atol`` override the per-dtype defaults).
    ``explain``: collect why each anchor of each rule did not match.
    Bad input (invalid model, unknown rule, inputs without shapes): :class:`PassError`."""
    from ..export import ExportError, attach_functions
    if not isinstance(model, onnx.ModelProto):
        raise PassError(f"rewrite: expected an onnx.ModelProto, got {type(model).__name__}")
    selected = resolve_rules(rules)
    full = _check(model, "the input model")
    report = PassReport(rules=[r.name for r in selected], verify=verify, nodes_before=_counts(model))
    expected = None
    if verify:
        if feeds is not None:
            feeds = {k: np.asarray(v) for k, v in feeds.items()}
            _verify.check_feeds(model, feeds)
        else:
            feeds = _verify.make_feeds(model, input_shapes)
        report.inputs = {k: (tuple(v.shape), str(v.dtype)) for k, v in feeds.items()}
        expected, report.reference = _verify.run_original(model, feeds)

    def fail(rule: str | None, error: str, nodes: list[str] | None = None):
        report.ok = False
        report.failed_rule = rule
        report.failed_nodes = nodes or []
        report.error = error
        report.nodes_after = dict(report.nodes_before)
        return model, report

    current = model
    for rule in selected:
        graph, ctx = import_graph(current)
        run = RuleRun()
        try:
            n = apply_rule(ctx, rule, run, explain=explain)
            if n:
                candidate = export_graph(ctx, current)
        except PassError:
            raise
        except Exception as e:   # a rule bug must not leave a half-written file
            report.applied += run.applied
            return fail(rule.name, f"rule {rule.name} raised {type(e).__name__}: {e}",
                        [x for a in run.applied for x in a.nodes])
        report.explanations += run.explanations
        if not n:
            continue
        report.applied += run.applied
        nodes = [x for a in run.applied for x in a.nodes]
        try:
            attach_functions(candidate)
        except ExportError as e:
            return fail(rule.name, f"after rule {rule.name}: {e}", nodes)
        if verify:
            checks = _verify.verify(candidate, expected, feeds, label=f"after {rule.name}",
                                    reference=report.reference, rtol=rtol, atol=atol)
            report.verifications += checks
            if not all(checks):
                failed = [f"{o.name} [{v.path}]: " + (o.error or f"max abs err {o.max_abs:.3g} > bound {o.bound:.3g}")
                          for v in checks for o in v.outputs if not o.passed]
                return fail(rule.name, f"rule {rule.name} broke parity: {'; '.join(failed)}", nodes)
        current = candidate
    if current is not model:
        try:
            onnx.checker.check_model(current, full_check=full)
        except Exception as e:
            return fail(None, f"the rewritten model fails onnx.checker: {str(e).strip()}")
        report.functions = sorted({f.name for f in current.functions})
    report.nodes_after = _counts(current)
    return current, report


# ---- files -----------------------------------------------------------------------------------

def load(src: str | os.PathLike) -> tuple[onnx.ModelProto, bool]:
    """The model at ``src`` (external data loaded from its folder) and whether it had external
    data; PassError with the reason for anything that is not a readable ONNX model."""
    p = Path(src)
    if not p.exists():
        raise PassError(f"input file {str(p)!r} does not exist")
    if not p.is_file():
        raise PassError(f"input {str(p)!r} is not a file")
    data = p.read_bytes()
    if not data:
        raise PassError(f"input file {str(p)!r} is empty")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError, TypeError) as e:
        raise PassError(f"input file {str(p)!r} is not an ONNX model, or is truncated (protobuf "
                        f"parse error: {e})") from None
    if not model.HasField("graph") or model.ir_version <= 0 or not model.opset_import:
        raise PassError(f"input file {str(p)!r} is not an ONNX model, or is truncated (it parses, but "
                        f"has no {'graph' if not model.HasField('graph') else 'ir_version' if model.ir_version <= 0 else 'opset_import'})")
    from onnx.external_data_helper import _get_all_tensors, uses_external_data
    external = any(uses_external_data(t) for t in _get_all_tensors(model))
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise PassError(f"input file {str(p)!r} keeps tensors in external data that cannot be read "
                            f"from {str(p.parent)!r}: {e}") from None
        left = [t for t in _get_all_tensors(model) if uses_external_data(t)]
        if left:
            where = {e.key: e.value for e in left[0].external_data}.get("location", "?")
            raise PassError(f"input file {str(p)!r} keeps tensors in external data that cannot be read: "
                            f"tensor '{left[0].name}' in {where!r} (not found in {str(p.parent)!r})")
    return model, external


def save(model: onnx.ModelProto, dst: str | os.PathLike, *, external: bool = False) -> list[Path]:
    """Write ``model`` atomically; with ``external``, its large tensors go to ``<dst name>.data``
    beside it (that file is replaced first, then the model)."""
    dst = Path(dst)
    if not external:
        if model.ByteSize() > _TWO_GB:
            raise PassError(f"the rewritten model is over 2 GB: it needs external data ({dst})")
        return [atomic_write_bytes(dst, model.SerializeToString())]
    dst.parent.mkdir(parents=True, exist_ok=True)
    location = f"{dst.name}.data"
    m = onnx.ModelProto()
    m.CopyFrom(model)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        onnx.save_model(m, os.path.join(tmp, dst.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=location, size_threshold=1024)
        written = []
        data = Path(tmp, location)
        if data.exists():
            os.replace(data, dst.parent / location)
            written.append(dst.parent / location)
        os.replace(os.path.join(tmp, dst.name), dst)
        written.append(dst)
    return written


def rewrite_file(src: str | os.PathLike, dst: str | os.PathLike | None, rules=None, *, dry_run: bool = False,
                 explain: bool = False, verify: bool = True, input_shapes: Mapping[str, tuple] | None = None,
                 feeds: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
                 rtol: float | None = None, atol: float | None = None) -> PassReport:
    """Rewrite the ONNX file ``src`` into ``dst`` (see :func:`rewrite`); ``dst`` is written
    (atomically) only when the report is ok and ``dry_run`` is False. ``feeds`` may be an
    ``.npz`` path. Bad input: :class:`PassError`, nothing written."""
    if dst is None and not dry_run:
        raise PassError("no output file given (or use dry_run)")
    model, external = load(src)
    if isinstance(feeds, (str, os.PathLike)):
        feeds = _verify.load_feeds(feeds, model)
    result, report = rewrite(model, rules, explain=explain, verify=verify, input_shapes=input_shapes,
                             feeds=feeds, rtol=rtol, atol=atol)
    report.src, report.dst, report.dry_run = str(src), (str(dst) if dst is not None else None), dry_run
    if report.ok and not dry_run:
        save(result, dst, external=external)
        report.written = True
    return report
