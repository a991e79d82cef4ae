"""The table task: classification, regression and multi-label over table, text, image and
sequence columns."""
