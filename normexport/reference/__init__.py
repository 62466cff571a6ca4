"""Float64 reference implementations, one module per norm family.

Each is written from NORMS.md / the paper with numpy in float64 and shares no code with the
layers (normexport.nn), the ONNX functions (normexport.ops) or the kernels (custom_ops/).
"""

from . import frn

__all__ = ["frn"]
