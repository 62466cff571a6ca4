"""Reference networks that use each norm, for end-to-end tests, benchmarks and examples.

Installed as ``normexport.graphs``. ``GRAPHS`` maps a name to a factory returning
``(model, example_input_shape)``; each model is small enough to export and run on a CPU in
seconds.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .resnet import NORM_FAMILIES, resnet18

GRAPHS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "resnet18_frn": lambda: (resnet18(norm="frn", width=16, num_classes=10), (2, 3, 32, 32)),
}

__all__ = ["GRAPHS", "NORM_FAMILIES", "resnet18"]
