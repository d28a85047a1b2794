"""The baseline service: the tutorial's Keras code behind FastAPI, as a user would first write it.

`capgen serve` is measured against this (benchmarks/serve_load.py drives
both with the same requests). It is what the FastAPI tutorial suggests for
blocking work: a plain `def` endpoint (FastAPI runs it on its thread pool)
that runs the tutorial's own functions from main.py on each request, one
Keras `predict` for the photo and one per word (`generate_desc`), no
batching. The models are loaded once at start-up, not per request.

Same shape as capgen's endpoint for what the load generator uses:
`POST /v1/captions` with one image as the raw body (`Content-Type: image/*`),
answered `{"results": [{"path": "body", "caption": ...}]}`; `GET /readyz`.
It prints `capgen-baseline: serving on http://HOST:PORT` once it listens
(`--port 0` picks a free port) and binds loopback only.

Run: python benchmarks/tutorial/server.py -m model.h5 -t tokenizer.p --weights W.h5 [--port 0]
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # main.py, the tutorial's functions

import main as tutorial
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

LOOPBACK = "127.0.0.1"


def caption_words(description: str) -> str:
    """The tutorial's `start w1 w2 … end` without its start and end words."""
    words = description.split()
    if words and words[0] == "start":
        words = words[1:]
    if words and words[-1] == "end":
        words = words[:-1]
    return " ".join(words)


def create_app(model_path: str, tokenizer_path: str, weights: str, colour: bool) -> FastAPI:
    model, tokenizer, xception_model = tutorial.load_everything(model_path, tokenizer_path, weights)
    max_length = tutorial.model_max_length(model)
    app = FastAPI(title="tutorial baseline")

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/captions")
    async def captions_raw(request: Request) -> dict[str, object]:
        if not request.headers.get("content-type", "").startswith("image/"):
            raise HTTPException(415, "send one image as the body (Content-Type: image/*)")
        body = await request.body()
        # The blocking part runs on FastAPI's thread pool, as a `def` endpoint's body would.
        description = await run_in_threadpool(describe, body)
        return {"results": [{"path": "body", "caption": caption_words(description)}]}

    def describe(body: bytes) -> str:
        photo = tutorial.extract_features(io.BytesIO(body), xception_model, colour=colour)
        return tutorial.generate_desc(model, tokenizer, photo, max_length)

    # Warm up once, as capgen serve does before /readyz (first predict builds TF functions).
    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (299, 299)).save(blank, format="PNG")
    describe(blank.getvalue())
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True, help="decoder: model.h5 or .keras")
    parser.add_argument("-t", "--tokenizer", required=True, help="tokenizer.p")
    parser.add_argument("--weights", required=True, help="Xception no-top ImageNet weights .h5")
    parser.add_argument("--colour", action="store_true", help="append capgen's colour features")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = create_app(args.model, args.tokenizer, args.weights, args.colour)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    print(f"capgen-baseline: serving on http://{LOOPBACK}:{port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
