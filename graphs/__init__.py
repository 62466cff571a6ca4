"""Reference networks that use each norm, for end-to-end tests, benchmarks and examples.

Installed as ``normexport.graphs``. ``GRAPHS`` maps a name to a factory returning
``(model, example_inputs)``: the model in eval mode, with non-trivial norm parameters and
running statistics calibrated on random batches, and ``example_inputs`` a tuple of tensors,
one per positional argument of ``model.forward`` (seeded; integer tensors for labels), ready
for ``normexport.export(model, example_inputs, path)``. Factories are deterministic and leave
the global RNG alone. Each model is small enough to export and run on a CPU in seconds.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import adain_style, cbn_generator, pono_autoencoder, spade_block, transformer_ln
from ._common import calibrate, random_like, randomize_norms, seeded
from .resnet import NORM_FAMILIES, resnet18

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]


def _resnet(norm: str, width: int = 8, num_classes: int = 10, size: int = 32, plain: bool = False) -> Factory:
    @seeded(len(norm))
    def build():
        gen = torch.Generator().manual_seed(1)
        model = resnet18(norm=norm, width=width, num_classes=num_classes)
        if not plain:
            randomize_norms(model)
            calibrate(model, lambda: (torch.randn(8, 3, size, size, generator=gen),))
        return model.eval(), (torch.randn(2, 3, size, size, generator=gen),)
    return build


GRAPHS: dict[str, Factory] = {
    # plain FRN init (gamma 1, beta 0, tau 0): `normexport demo` trains it
    "resnet18_frn": _resnet("frn", width=16, plain=True),
    "resnet18_bn": _resnet("bn"),
    "resnet18_brn": _resnet("brn"),
    "resnet18_gn": _resnet("gn"),
    "resnet18_sn": _resnet("sn"),
    "adain_style": adain_style.build,
    "spade_block": spade_block.build,
    "pono_autoencoder": pono_autoencoder.build,
    "cbn_generator": cbn_generator.build,
    "transformer_ln": transformer_ln.build,
}

__all__ = ["GRAPHS", "NORM_FAMILIES", "resnet18", "calibrate", "random_like", "randomize_norms", "seeded"]
