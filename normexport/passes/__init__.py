"""ONNX graph passes for graphs normexport did not write (``normexport fold in.onnx out.onnx``).

Rules (pattern / check / rewrite, see ``base.py``) fold BatchNormalization into adjacent
Conv / ConvTranspose / Gemm / MatMul and fuse decomposed normalization patterns into
``normexport`` ops (with their ONNX function attached). ``RULES`` is the table, in the order
the rules run: fusions first (they consume InstanceNormalization / Reduce* chains), then folds.
"""

from __future__ import annotations

from .base import Applied, Context, Explanation, Match, NoMatch, PassError, Rule, RuleRun, run_rules

#: name -> rule, in application order. Adding a rule = one module + one line here.
RULES: dict[str, Rule] = {}


def _register(*rules: Rule) -> None:
    for r in rules:
        if r.name in RULES:
            raise ValueError(f"duplicate pass rule name {r.name!r}")
        RULES[r.name] = r


from . import fuse_adain, fuse_frn, fuse_groupnorm, fuse_spade  # noqa: E402
_register(*fuse_groupnorm.RULES, *fuse_frn.RULES, *fuse_adain.RULES, *fuse_spade.RULES)

# ---- fusions register above this line (they run first) -------------------------------------

# ---- folds: keep them last (a fusion consumes BN-free patterns; a fold then cleans up) -------
from .fold_bn import FOLD_RULES  # noqa: E402

_register(*FOLD_RULES)

from .driver import PassReport, load, resolve_rules, rewrite, rewrite_file, save  # noqa: E402

__all__ = ["RULES", "Applied", "Context", "Explanation", "Match", "NoMatch", "PassError", "PassReport",
           "Rule", "RuleRun", "load", "resolve_rules", "rewrite", "rewrite_file", "run_rules", "save"]
