"""Exported forms of the norms: torch custom ops, their ONNX translations (one
``normexport`` node each) and the ONNX function bodies attached as fallbacks."""

from ._onnx import DOMAIN, DOMAIN_VERSION, MIN_OPSET

__all__ = ["DOMAIN", "DOMAIN_VERSION", "MIN_OPSET"]
