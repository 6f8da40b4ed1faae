"""Exporting trained models to other formats.

- :func:`~dualnn.export.onnx.export_onnx`: an ONNX graph (inference, eval mode), for
  onnxruntime and every other ONNX consumer. Needs ``pip install "dualnn[onnx]"``.

The submodules import their third-party packages only when called.
"""

from .onnx import OnnxExportError, export_onnx

__all__ = ["OnnxExportError", "export_onnx"]
