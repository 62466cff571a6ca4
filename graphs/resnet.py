"""ResNet-18 layout (He et al. 2016, BasicBlock, stages [2, 2, 2, 2]) with a pluggable norm.

A norm family gives three factories of channels: ``norm_act`` (norm followed by the
activation), ``norm`` (norm without activation, before the residual add) and ``act`` (the
activation after the add). With FRN the paper replaces every BN+ReLU by FRN+TLU, so the
activation is a TLU and the pre-add norm is FRN without TLU. The other families (BN, Batch
Renorm, GN, Switchable Norm) are norm + ReLU, norm, ReLU as in the original ResNet.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import nn

from normexport.nn import TLU, BatchRenorm2d, FilterResponseNorm2d, SwitchableNorm2d


class NormFamily(NamedTuple):
    norm_act: Callable[[int], nn.Module]
    norm: Callable[[int], nn.Module]
    act: Callable[[int], nn.Module]


def _relu(c: int) -> nn.Module:
    return nn.ReLU()


def _with_relu(norm: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    return lambda c: nn.Sequential(norm(c), nn.ReLU())


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, max(1, c // 4)), c)   # Wu & He: 32 groups; here >= 4 channels each


NORM_FAMILIES: dict[str, NormFamily] = {
    "frn": NormFamily(lambda c: FilterResponseNorm2d(c), lambda c: FilterResponseNorm2d(c, tlu=False),
                      lambda c: TLU(c)),
    "bn": NormFamily(_with_relu(nn.BatchNorm2d), nn.BatchNorm2d, _relu),
    "brn": NormFamily(_with_relu(BatchRenorm2d), BatchRenorm2d, _relu),
    "gn": NormFamily(_with_relu(_gn), _gn, _relu),
    "sn": NormFamily(_with_relu(SwitchableNorm2d), SwitchableNorm2d, _relu),
}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, fam: NormFamily):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = fam.norm_act(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = fam.norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), fam.norm(cout))
        self.act = fam.act(cout)

    def forward(self, x):
        return self.act(self.norm2(self.conv2(self.norm1(self.conv1(x)))) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, fam: NormFamily, width: int = 64, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), fam.norm_act(width))
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride, fam), BasicBlock(cout, cout, 1, fam)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def resnet18(norm: str = "frn", width: int = 64, num_classes: int = 1000, in_chans: int = 3) -> ResNet:
    if norm not in NORM_FAMILIES:
        raise ValueError(f"resnet18: unknown norm {norm!r}; known: {sorted(NORM_FAMILIES)}")
    return ResNet(NORM_FAMILIES[norm], width, num_classes, in_chans)
