"""`capgen serve`: captioning over HTTP with dynamic micro-batching (issue 12).

Installed with the `serve` extra (`pip install 'capgen[serve]'`: FastAPI,
uvicorn, python-multipart, prometheus-client). Only `cli.py` and
`settings.py` import without that extra, so the runtime-only install keeps
working and `capgen serve` can say in one line what to install.

- `settings.py`: every limit of the service, checked once.
- `app.py`: `create_app(captioner_factory, settings)`, the endpoints.
- `batcher.py`: the queue that gathers requests into one Captioner batch.
- `requests.py`: reading images and options from a request, within the limits.
- `middleware.py`: request ids, one log line per request, the body limit, the API key, draining.
- `metrics.py`, `errors.py`, `page.py`, `server.py` (uvicorn with a drain on SIGTERM), `cli.py`.
"""
