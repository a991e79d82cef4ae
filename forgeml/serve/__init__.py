"""`forgeml serve`: an HTTP server for trained run directories (FastAPI on uvicorn).

    forgeml serve runs/digits-cnn runs/gpt-char --port 8000

Each run is served by the routes its task names (`task.served(run).protocol`): the KServe Open
Inference Protocol v2 (`/v2/...`) and a friendly `/v1/models/NAME:predict` for models that
predict rows, OpenAI-compatible `/v1/completions` and `/v1/chat/completions` for language models;
Prometheus `/metrics` and `/openapi.json` for all. See docs/deploying.md.

Modules, from the request inwards:

    app.py          the FastAPI app: one worker per model, lifespan (load + warm up), errors
    limits.py       ASGI middleware: API key, request body size
    errors.py       `RequestError` and the JSON error body every refusal gets
    metrics.py      Prometheus metrics and the middleware that counts requests
    settings.py     `ServeSettings`: the command's options, checked
    worker.py       `Worker`: one model's queue and thread (load, warm up, gather, close)
    kserve/         routes.py, protocol.py (bodies), codec.py and values.py (request values ->
                    records, predictions -> JSON), batcher.py (many requests, one forward)
    openai/         routes.py, schemas.py (bodies, OpenAI's errors), scheduler.py (generation
                    token by token for many requests), replies.py (JSON or server-sent events)

The command itself (argument parsing, uvicorn, exit codes) is forgeml/cli/serve.py; it imports
no web framework until it serves, so the core CLI works without the `serve` extra.
"""
