"""Registry entry: Filter Response Norm + TLU (NORMS.md row 12)."""

import torch

from .. import reference
from ..nn import frn
from ..ops import frn as ops
from ..spec import CPU, CUDA, CustomOp, NormSpec, Reference, np64


def _reference(m: frn._FilterResponseNormNd, inputs, training: bool) -> Reference:
    eps = m.eps + (abs(float(m.eps_learned.detach().double())) if m.eps_learned is not None else 0.0)
    (x,) = inputs
    return Reference((reference.frn.filter_response_norm(x, np64(m.weight), np64(m.bias), np64(m.tau), eps),))


def _example(channels: int, gen: torch.Generator) -> frn.FilterResponseNorm2d:
    m = frn.FilterResponseNorm2d(channels)
    with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        m.bias.copy_(torch.randn(channels, generator=gen) * 0.3)
        m.tau.copy_(torch.randn(channels, generator=gen) * 0.3)
    return m


def _inputs(m, batch: int, gen: torch.Generator):
    return (torch.randn(batch, m.num_features, 9, 11, generator=gen) * 2 + 0.5,)


FRN = NormSpec(
    name="frn", title="Filter Response Norm + TLU", row=12,
    layers=(frn._FilterResponseNormNd,), example=_example, inputs=_inputs, reference=_reference,
    export=CustomOp(op_type=ops.OP_TYPE, torch_op=ops.FRN_OVERLOAD, translation=ops.frn_translation,
                    call=ops.frn_call, function=ops.frn_function,
                    kernels={CPU: ("float32", "float16", "float64"), CUDA: ("float32", "float16")}),
)
