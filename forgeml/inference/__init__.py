"""Inference helpers shared by every task: batched eval-mode forwards, the ONNX backend."""
