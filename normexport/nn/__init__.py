"""Training-time normalization layers (one file per norm family, channels first)."""

from .frn import (TLU, FilterResponseNorm1d, FilterResponseNorm2d, FilterResponseNorm3d,
                  filter_response_norm)

__all__ = ["TLU", "FilterResponseNorm1d", "FilterResponseNorm2d", "FilterResponseNorm3d",
           "filter_response_norm"]
