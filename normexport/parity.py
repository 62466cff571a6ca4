"""Numeric comparison in the style of Polygraphy's comparator: per-output tolerances, error
statistics, and a result that is truthy when every output passes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .spec import DEFAULT_TOLERANCES, Tolerance


@dataclass
class OutputComparison:
    name: str
    shape: tuple
    tolerance: Tolerance
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0          # over elements with |expected| > atol
    n_bad: int = 0                # elements outside tolerance
    worst_index: tuple | None = None
    error: str | None = None      # shape mismatch, NaN pattern mismatch, ...
    #: |actual - expected| quantiles over the finite elements: {"p50": .., "p90": .., "p99": ..}
    quantiles: dict = field(default_factory=dict)
    #: normwise error ||actual - expected||_2 / ||expected||_2 (scale-aware: does not grow with
    #: the tensor's magnitude or size); 0 when both are zero, inf when only expected is
    rel_l2: float = 0.0
    n_elements: int = 0

    def __bool__(self) -> bool:
        return self.error is None and self.n_bad == 0

    @property
    def passed(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "passed": self.passed,
                "rtol": self.tolerance.rtol, "atol": self.tolerance.atol,
                "max_abs": self.max_abs, "mean_abs": self.mean_abs, "max_rel": self.max_rel,
                "rel_l2": _finite_or_none(self.rel_l2), "quantiles": dict(self.quantiles),
                "n_bad": self.n_bad, "n_elements": self.n_elements,
                "worst_index": list(self.worst_index) if self.worst_index is not None else None,
                "error": self.error}


@dataclass
class Comparison:
    label: str
    outputs: list[OutputComparison]

    def __bool__(self) -> bool:
        return all(self.outputs)

    @property
    def passed(self) -> bool:
        return bool(self)

    def rows(self) -> list[list[str]]:
        return [[self.label, o.name, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.mean_abs:.3g}",
                 f"rtol={o.tolerance.rtol:g} atol={o.tolerance.atol:g}",
                 "PASS" if o else f"FAIL ({o.error or f'{o.n_bad} elements, worst at {o.worst_index}'})"]
                for o in self.outputs]

    def __str__(self) -> str:
        return format_table(["path", "output", "max abs", "max rel", "mean abs", "tolerance", "result"],
                            self.rows())

    def to_dict(self) -> dict:
        return {"label": self.label, "passed": self.passed, "outputs": [o.to_dict() for o in self.outputs]}


#: the |error| quantiles OutputComparison.quantiles reports
QUANTILES = (50, 90, 99)


def _finite_or_none(v: float):
    return float(v) if np.isfinite(v) else None


def compare_arrays(actual, expected, tol: Tolerance, name: str = "output") -> OutputComparison:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    res = OutputComparison(name=name, shape=tuple(e.shape), tolerance=tol, n_elements=int(e.size))
    if a.shape != e.shape:
        res.error = f"shape {a.shape} != expected {e.shape}"
        return res
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        res.error = f"NaN at {int((nan_a != nan_e).sum())} positions where the other has none"
        return res
    ok_vals = ~nan_e
    if a.size == 0:
        return res
    inf_mismatch = (np.isinf(a) | np.isinf(e)) & (a != e) & ok_vals
    if inf_mismatch.any():
        res.error = f"Inf mismatch at {int(inf_mismatch.sum())} positions"
        return res
    finite = ok_vals & np.isfinite(e)
    diff = np.zeros(e.shape)
    diff[finite] = np.abs(a[finite] - e[finite])
    res.max_abs = float(diff.max())
    res.mean_abs = float(diff[finite].mean()) if finite.any() else 0.0
    big = finite & (np.abs(e) > tol.atol)
    res.max_rel = float((diff[big] / np.abs(e[big])).max()) if big.any() else 0.0
    if finite.any():
        res.quantiles = {f"p{q}": float(v) for q, v in zip(QUANTILES, np.percentile(diff[finite], QUANTILES))}
        res.rel_l2 = rel_l2(a[finite], e[finite])
    bad = diff > tol.atol + tol.rtol * np.abs(e)
    res.n_bad = int(bad.sum())
    if res.n_bad:
        excess = np.where(bad, diff - tol.rtol * np.abs(e), -np.inf)
        res.worst_index = tuple(int(i) for i in np.unravel_index(np.argmax(excess), e.shape))
    return res


def rel_l2(actual, expected) -> float:
    """Normwise relative error ||actual - expected||_2 / ||expected||_2 (float64; NaN-free
    inputs): 0 when both are zero, inf when only ``expected`` is."""
    a = np.asarray(actual, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    num, den = float(np.linalg.norm(a - e)), float(np.linalg.norm(e))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def compare(actual: Sequence | Mapping, expected: Sequence | Mapping, *, label: str = "",
            tolerance: Tolerance | Mapping[str, Tolerance] | None = None,
            dtype: str = "float32", names: Sequence[str] | None = None) -> Comparison:
    """Compare output lists (or name -> array mappings). ``tolerance`` may be one Tolerance or
    a per-output-name mapping; the default is NORMS.md's bound for ``dtype``."""
    if isinstance(expected, Mapping):
        names = list(expected)
        expected = [expected[n] for n in names]
        actual = [actual[n] for n in names] if isinstance(actual, Mapping) else list(actual)
    names = list(names) if names else [f"output{i}" for i in range(len(expected))]
    if len(actual) != len(expected):
        raise ValueError(f"compare: {len(actual)} actual outputs vs {len(expected)} expected")
    out = []
    for n, a, e in zip(names, actual, expected):
        if tolerance is None:
            tol = DEFAULT_TOLERANCES[dtype]
        elif isinstance(tolerance, Tolerance):
            tol = tolerance
        else:
            tol = tolerance.get(n, DEFAULT_TOLERANCES[dtype])
        out.append(compare_arrays(a, e, tol, n))
    return Comparison(label, out)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cols = [header] + [list(map(str, r)) for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
    return "\n".join([line(header), line(["-" * x for x in w])] + [line(r) for r in cols[1:]])
