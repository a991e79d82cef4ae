"""Evaluation: streaming metrics per split (torchmetrics), training plots and the model card."""
