"""KServe Open Inference Protocol v2 and `:predict`: the routes of models that predict rows."""
