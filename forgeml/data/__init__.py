"""Data: read sources into tables, fit preprocessing on the train split, produce tensors."""
