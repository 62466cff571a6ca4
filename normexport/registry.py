"""The norm registry: one entry per normalization method of NORMS.md.

An entry ties together everything the rest of normexport needs to know about a norm:
the training layer(s), the float64 reference, the export rule, the custom op and its
kernels (for custom-op norms), and the parity tolerances. Tests, export and the CLI
iterate over :data:`REGISTRY`; adding a norm means one layer file plus one entry here
(plus one kernel folder and one line of ``custom_ops/src/register.cc`` when it has a kernel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from . import reference
from .nn import frn as _frn
from .ops import frn as _frn_ops

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


@dataclass(frozen=True)
class CustomOp:
    """Export rule: the layer becomes one ``normexport::<op_type>`` node plus a model-local
    ONNX function with the same name (the fallback a stock ONNX Runtime runs)."""
    op_type: str
    torch_op: object                                    # torch OpOverloadPacket / custom op
    translation: object                                 # onnxscript function emitting the node
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # layer -> torch_op call
    function: Callable[[int], onnx.FunctionProto]       # opset -> function body
    #: execution provider -> element types the native library registers a kernel for
    kernels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "custom op"


@dataclass(frozen=True)
class NormSpec:
    name: str                                   # registry key
    title: str
    row: int                                    # row in NORMS.md
    layers: tuple[type[nn.Module], ...]         # training layers (matched with isinstance)
    #: eval-mode output of a layer on a float64 numpy input, computed by the float64 reference
    reference: Callable[[nn.Module, np.ndarray], np.ndarray]
    #: a layer with non-trivial parameters for tests and the demo: (channels, generator)
    example: Callable[[int, torch.Generator], nn.Module]
    spatial_dims: int                           # of the example layer's input
    export: CustomOp
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: DEFAULT_TOLERANCES)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


def _frn_reference(m: _frn._FilterResponseNormNd, x: np.ndarray) -> np.ndarray:
    eps = m.eps + (abs(float(m.eps_learned.detach().double())) if m.eps_learned is not None else 0.0)
    return reference.frn.filter_response_norm(x, _np(m.weight), _np(m.bias), _np(m.tau), eps)


def _frn_example(channels: int, gen: torch.Generator) -> nn.Module:
    m = _frn.FilterResponseNorm2d(channels)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        m.bias.copy_(torch.randn(channels, generator=gen) * 0.3)
        m.tau.copy_(torch.randn(channels, generator=gen) * 0.3)
    return m


REGISTRY: dict[str, NormSpec] = {
    "frn": NormSpec(
        name="frn", title="Filter Response Norm + TLU", row=12,
        layers=(_frn._FilterResponseNormNd,),
        reference=_frn_reference, example=_frn_example, spatial_dims=2,
        export=CustomOp(
            op_type=_frn_ops.OP_TYPE, torch_op=_frn_ops.FRN_OVERLOAD,
            translation=_frn_ops.frn_translation, call=_frn_ops.frn_call,
            function=_frn_ops.frn_function,
            kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
    ),
}


def spec_for(module: nn.Module) -> NormSpec | None:
    """The registry entry whose layer class ``module`` is an instance of, if any."""
    for spec in REGISTRY.values():
        if isinstance(module, spec.layers):
            return spec
    return None


def custom_ops() -> dict[str, CustomOp]:
    """op_type -> CustomOp for every registry entry exported as a ``normexport`` node."""
    return {s.export.op_type: s.export for s in REGISTRY.values() if isinstance(s.export, CustomOp)}
