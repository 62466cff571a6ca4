"""Training-time normalization layers (one file per norm family, channels first)."""

from .frn import (TLU, FilterResponseNorm1d, FilterResponseNorm2d, FilterResponseNorm3d,
                  filter_response_norm)
from .cosine import CosineConv2d, CosineLinear, cosine_conv2d, cosine_linear
from .pono import MomentShortcut, PositionalNorm, moment_shortcut, positional_norm

__all__ = ["TLU", "FilterResponseNorm1d", "FilterResponseNorm2d", "FilterResponseNorm3d",
           "filter_response_norm"]
from .batch_renorm import (BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, LinearRamp,
                           batch_renorm_warmup)
from .cmbn import CmBN, CmBN1d, CmBN2d, CmBN3d
from .cross_iteration_bn import CrossIterationBatchNorm2d

__all__ += ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "LinearRamp",
            "batch_renorm_warmup", "CmBN", "CmBN1d", "CmBN2d", "CmBN3d",
            "CrossIterationBatchNorm2d"]
__all__ += ["CosineConv2d", "CosineLinear", "cosine_conv2d", "cosine_linear",
            "MomentShortcut", "PositionalNorm", "moment_shortcut", "positional_norm"]
from .switchable import SwitchableNorm1d, SwitchableNorm2d
from .conditional import (CategoricalConditionalBatchNorm2d, ConditionalBatchNorm2d,
                          ConditionalInstanceNorm2d)
from .adain import AdaIN, adaptive_instance_norm
from .spade import SPADE

__all__ += ["SwitchableNorm1d", "SwitchableNorm2d", "ConditionalBatchNorm2d",
            "CategoricalConditionalBatchNorm2d", "ConditionalInstanceNorm2d", "AdaIN",
            "adaptive_instance_norm", "SPADE"]
