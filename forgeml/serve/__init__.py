"""`forgeml serve`: an HTTP server for trained run directories (FastAPI on uvicorn).

    forgeml serve runs/digits-cnn runs/churn-mlp --port 8000

Routes: the KServe Open Inference Protocol v2 (`/v2/...`), a friendly `/v1/models/NAME:predict`
taking raw records, Prometheus `/metrics` and `/openapi.json`. See docs/deploying.md.

Modules, from the request inwards:

    cli.py       argument parsing, the uvicorn server, exit codes (imports no web framework)
    app.py       the FastAPI app: routes, lifespan (load + warm up), error responses
    limits.py    ASGI middleware: API key, request body size; JSON error bodies
    metrics.py   Prometheus metrics and the middleware that counts requests
    codec.py     request JSON -> validated records per row; predictions -> response JSON
    values.py    one request value: checked and cleaned (numbers, images from base64, ...)
    protocol.py  pydantic shapes of the request/response bodies (validation and OpenAPI)
    batching.py  one worker thread per model; merges concurrent requests into one forward
    models.py    `ServedModel`: a `Predictor` plus the tensor-level work the batcher needs
    settings.py  `ServeSettings`: the command's options, checked

Only `cli.py` and `settings.py` are imported by the core CLI; everything else needs the `serve`
extra (fastapi, uvicorn, prometheus_client).
"""
