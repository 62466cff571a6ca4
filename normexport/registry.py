"""The norm registry: one entry per normalization method of NORMS.md.

Tests, export and the CLI iterate over :data:`REGISTRY`. Adding a norm means one layer file
(``nn/``), one reference (``reference/``), one spec module (``specs/``) and one line here (plus
one kernel folder and one line of ``custom_ops/src/register.cc`` when it has a kernel).
The record types live in ``spec.py``.
"""

from __future__ import annotations

from torch import nn

from .spec import (CPU, CUDA, DEFAULT_TOLERANCES, Composite, CustomOp, Decompose, ExportCall,
                   ExportRule, Fold, NormSpec, Reference, StandardOp, Tolerance)
from .specs import frn
# (imports of the batch-statistics family go here)
from .specs import batchnorm
from .specs import per_sample
# (imports of the conditional/style family go here)
from .specs import style

_ENTRIES: list[NormSpec] = [
    # -- batch-statistics family (rows 2-6)
    batchnorm.BATCHNORM, batchnorm.BATCH_RENORM, batchnorm.SYNCBATCHNORM,
    batchnorm.CROSS_ITERATION_BN, batchnorm.CMBN,
    # -- per-sample family (rows 1, 7-10, 13, 14)
    per_sample.LRN, per_sample.LAYERNORM, per_sample.INSTANCENORM, per_sample.GROUPNORM,
    per_sample.WEIGHTNORM, per_sample.COSINE_LINEAR, per_sample.COSINE_CONV2D, per_sample.PONO,
    frn.FRN,
    # -- conditional / style family (rows 11, 15-18)
    style.SWITCHABLE_NORM, style.CONDITIONAL_BN, style.CONDITIONAL_BN_EMBEDDING, style.CONDITIONAL_IN,
    style.ADAIN, style.SPADE,
]

REGISTRY: dict[str, NormSpec] = {s.name: s for s in _ENTRIES}
assert len(REGISTRY) == len(_ENTRIES), "duplicate registry names"


def spec_for(module: nn.Module) -> NormSpec | None:
    """The registry entry whose layer class ``module`` is an instance of (most derived match),
    among the entries whose ``matches`` predicate (if any) accepts ``module``."""
    best = None
    for spec in REGISTRY.values():
        if spec.matches is not None and not spec.matches(module):
            continue
        for cls in spec.layers:
            if isinstance(module, cls) and (best is None or issubclass(cls, best[1])):
                best = (spec, cls)
    return best[0] if best else None


def translations(custom_ops: bool = True) -> dict:
    """torch op overload -> onnxscript translation of every export rule with a torch op
    (StandardOp / Composite ones always; CustomOp ones when ``custom_ops``)."""
    table = {}
    for s in REGISTRY.values():
        if isinstance(s.export, ExportCall) and (custom_ops or not isinstance(s.export, CustomOp)):
            table.update(s.export.translations())
    return table


def custom_ops() -> dict[str, CustomOp]:
    """op_type -> CustomOp for every registry entry exported as a ``normexport`` node."""
    return {s.export.op_type: s.export for s in REGISTRY.values() if isinstance(s.export, CustomOp)}


__all__ = ["REGISTRY", "NormSpec", "Reference", "Tolerance", "DEFAULT_TOLERANCES", "CustomOp",
           "StandardOp", "Fold", "Composite", "ExportRule", "ExportCall", "Decompose", "CPU", "CUDA",
           "spec_for", "custom_ops", "translations"]
