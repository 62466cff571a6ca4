"""The record types of the norm registry (see registry.py for the table itself).

A :class:`NormSpec` ties together everything normexport needs to know about one method of
NORMS.md: the training layer classes, how to build a representative instance and inputs, the
float64 reference (train and eval mode, outputs and buffer updates), the export rule, and the
parity tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
from torch import nn

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Tolerance:
    """Pass when ``|actual - expected| <= atol + rtol * |expected|`` elementwise."""
    rtol: float
    atol: float


#: NORMS.md "What parity means": float32 1e-5 relative with a 1e-6 absolute floor; float16
#: 1e-2 relative (float32 accumulation) with a floor of one float16 ulp at 1.0.
DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "float32": Tolerance(rtol=1e-5, atol=1e-6),
    "float16": Tolerance(rtol=1e-2, atol=1e-3),
}


# ---- export rules (what the layer becomes in ONNX) ----------------------------------------

class Decompose(Exception):
    """Raised by a rule's ``call`` when this layer (or this call's input) cannot take the
    rule's form: export then traces the layer's own forward (torch decomposes it into standard
    ops) and puts the message in the export report's notes. Example: an even-size LRN."""


class ExportCall:
    """What the rules that swap a layer's forward during export have in common (read by
    ``export._rule_forwards``): ``call(layer, *inputs)`` replaces the layer's forward, on the
    instance and for the duration of the trace; it may call a torch custom op ``torch_op``,
    which the onnxscript ``translation`` turns into the ONNX node(s) (a ``normexport`` node
    for CustomOp, a standard node such as LRN for StandardOp), or plain torch ops whose own
    lowering is already the target (e.g. ``F.batch_norm`` -> BatchNormalization). A ``call``
    of None: no swap, the layer's forward is traced as it is."""

    call: Callable[..., object] | None
    torch_op: object
    translation: object

    def translations(self) -> dict:
        """torch op overload -> onnxscript function, for torch.onnx's custom_translation_table."""
        if self.torch_op is None or self.translation is None:
            return {}
        return {self.torch_op: self.translation}


@dataclass(frozen=True)
class CustomOp(ExportCall):
    """The layer becomes one ``normexport::<op_type>`` node plus a model-local ONNX function
    with the same name (the fallback a stock ONNX Runtime runs)."""
    op_type: str
    torch_op: object                                    # the torch OpOverload in traced graphs
    translation: object                                 # onnxscript function emitting the node
    call: Callable[..., torch.Tensor]                   # (layer, *inputs) -> torch_op call
    function: Callable[[int], onnx.FunctionProto]       # opset -> function body
    #: execution provider -> element types the native library registers a kernel for
    kernels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    kind: str = "custom op"


@dataclass(frozen=True)
class StandardOp(ExportCall):
    """The layer becomes standard ONNX op(s), e.g. LayerNormalization, InstanceNormalization.
    Without ``call`` torch's own lowering already emits them; with one, see ExportCall."""
    op_types: tuple[str, ...]
    call: Callable[..., torch.Tensor] | None = None
    torch_op: object = None
    translation: object = None
    kind: str = "standard op"


@dataclass(frozen=True)
class Fold:
    """The layer's inference form is folded into adjacent weights: ``target`` is "bn" (BN
    family: into the neighbouring conv/linear, else ONNX BatchNormalization) or "weight"
    (weight reparametrisations: WN, cosine norm: into a plain weight).

    ``bn_params`` (target "bn"): module -> its inference BN ``(mean, var, eps, gamma, beta)``
    (gamma / beta None without affine), or None when it has no inference BN form (e.g. no
    running statistics). None here: read ``running_mean``, ``running_var``, ``eps``,
    ``weight``, ``bias`` (BN's attributes; see normexport.fold.bn_inference_params)."""
    target: str
    kind: str = "fold"
    bn_params: Callable[[nn.Module], tuple | None] | None = None


@dataclass(frozen=True)
class Composite(ExportCall):
    """The layer becomes a folded part plus standard ops (e.g. conditional BN: BN scale/shift
    folded, per-sample affine as Gather/Mul/Add). ``description`` says how."""
    description: str
    call: Callable[..., torch.Tensor] | None = None       # see ExportCall
    torch_op: object = None
    translation: object = None
    kind: str = "composite"


ExportRule = CustomOp | StandardOp | Fold | Composite


# ---- the entry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """What the float64 reference says one forward call gives."""
    outputs: tuple[np.ndarray, ...]
    #: expected values of the layer's buffers after the call (running stats in train mode)
    buffers: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class NormSpec:
    name: str                                   # registry key
    title: str
    row: int                                    # row in NORMS.md
    layers: tuple[type[nn.Module], ...]         # training layers (matched with isinstance)
    #: a layer with non-trivial parameters and buffers: (channels, generator) -> layer
    example: Callable[[int, torch.Generator], nn.Module]
    #: float32 inputs for a layer: (layer, batch, generator) -> tuple of tensors
    inputs: Callable[[nn.Module, int, torch.Generator], tuple[torch.Tensor, ...]]
    #: float64 reference of one forward call: (layer, float64 numpy inputs, training)
    reference: Callable[[nn.Module, tuple[np.ndarray, ...], bool], Reference]
    #: how the layer is exported; None: no dedicated rule yet, the exporter traces the layer's
    #: torch ops into standard ONNX ops
    export: ExportRule | None
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: DEFAULT_TOLERANCES)
    #: smallest batch the layer accepts in train mode (2 for batch-statistics layers, which
    #: must raise a clear error on batch 1)
    min_train_batch: int = 1
    #: extra test a module of one of ``layers`` must pass to be this norm, for norms that are
    #: not a class of their own (torch's weight_norm parametrization of a plain Conv/Linear);
    #: None: the isinstance match alone decides
    matches: Callable[[nn.Module], bool] | None = None
    #: True for a layer (instance) that would normalise with *batch* statistics in eval mode
    #: (BN family with track_running_stats=False): export refuses it, since the graph's output
    #: for one sample would depend on the rest of the batch. None: never
    eval_batch_stats: Callable[[nn.Module], bool] | None = None


def np64(t: torch.Tensor | None) -> np.ndarray | None:
    """A tensor (parameter, buffer) as a float64 numpy array, for references."""
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()
