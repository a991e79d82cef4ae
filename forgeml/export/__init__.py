"""Export a finished run to ONNX or TorchScript, checked against the eager model before it is kept.

from forgeml.export import export_run
export_run("runs/digits-cnn", format="onnx")     # -> runs/digits-cnn/export/onnx/
"""

from forgeml.export.harness import FORMATS, TOLERANCE, ExportResult, export_run

__all__ = ["FORMATS", "TOLERANCE", "ExportResult", "export_run"]
