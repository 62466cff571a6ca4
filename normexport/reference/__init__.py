"""Float64 reference implementations, one module per norm family.

Each is written from NORMS.md / the paper with numpy in float64 and shares no code with the
layers (normexport.nn), the ONNX functions (normexport.ops) or the kernels (custom_ops/).
"""

from . import frn
from . import cosine, pono, standard  # per-sample family (rows 1, 7-10, 13, 14)

__all__ = ["frn"]
__all__ += ["cosine", "pono", "standard"]
from . import style  # conditional / style family (rows 11, 15-18)
from . import batchnorm  # batch-statistics family (rows 2-6)

__all__ += ["batchnorm"]

__all__ += ["style"]
