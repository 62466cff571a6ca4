"""normexport: train with any normalization layer, deploy with none of the pain.

Data flow: normexport.nn (training layers) -> normexport.registry (one entry per norm) ->
normexport.export (custom ``normexport`` nodes + ONNX function fallbacks) -> the native op
library (custom_ops/, loaded by normexport.session) -> normexport.parity.
"""

from . import nn, registry
from .export import ExportError, ExportReport, export
# the functions shadow the subpackage's name on purpose: normexport.fold(model, x); reach the
# subpackage's modules with ``from normexport.fold import formulas``
from .fold import FoldReport, fold, fold_with_report
from .parity import Comparison, compare
# normexport.check(model, args, path) is the function too; its module: from normexport.check import ...
from .check import CheckError, CheckReport, check
from .runtime import library_path, native_info, served_by, session

__version__ = "0.1.0"

__all__ = ["nn", "registry", "export", "ExportError", "ExportReport", "fold", "fold_with_report",
           "FoldReport", "compare", "Comparison", "check", "CheckReport", "CheckError",
           "library_path", "native_info", "session", "served_by", "__version__"]
