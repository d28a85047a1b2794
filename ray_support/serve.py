"""Ray Serve deployment: `capgen serve`'s POST /v1/captions, micro-batched with `@serve.batch`.

Requests and answers are `capgen serve`'s: images as multipart files or one
raw `image/*` body, `beam_size`/`max_length`/`n_best` from the query or form
(serve/intake.py reads them, with its limits and messages), the answer
`{"results": [...]}` of `capgen caption --json` records, a refusal
`{"code", "message"}` (serve/errors.py). Every image of every request is one
call of the batched method, so images that arrive together, from one
request or many, run as one `Captioner` batch per option set; the batch
runs on the replica's model thread, never on its event loop.

    serve run ray_support/serve_config.yaml          # or, from Python:
    serve.run(CaptionDeployment.bind(ship_model("mymodel/"), int8=True))
"""

# No `from __future__ import annotations`: Ray Serve's ingress rebuilds the endpoints and
# FastAPI must see `request: Request` as the class, not a string.
import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from capgen.ray.model_store import ShippedModel, model_folder
from capgen.runtime import results
from capgen.runtime.decoding import DecodingOptions, DecodingResult
from capgen.runtime.errors import CapgenError, ImageError
from capgen.serve.errors import ApiError, from_capgen_error
from capgen.serve.intake import parse_options, read_images

MAX_IMAGES = 64  # per request, as `capgen serve`'s default --max-queue
Outcome = DecodingResult | CapgenError
api = FastAPI(title="capgen on Ray Serve", docs_url=None, redoc_url=None)


def _record(name: str, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, CapgenError):
        return results.error_record(name, str(outcome))
    return results.success_record(name, outcome)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(api)
class CaptionDeployment:
    """One replica: one Captioner, one model thread, one `@serve.batch` queue."""

    def __init__(
        self,
        model: str | Path | ShippedModel | None = None,
        int8: bool = False,
        fast_decoder: bool = False,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.005,
    ) -> None:
        import ray

        from capgen.runtime.captioner import Captioner

        if isinstance(model, ShippedModel):
            model.check_settings(int8=int8, fast_decoder=fast_decoder)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.captioner = Captioner(
            model_folder(model), threads=max(1, math.ceil(cpus)), int8=int8,
            fast_decoder=fast_decoder,
        )  # fmt: skip
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capgen-model")
        self._batch_sizes: list[int] = []
        # @serve.batch adds these at run time; its annotation keeps the plain function's type.
        self.caption_one.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.caption_one.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    def _run(self, items: list[tuple[bytes, DecodingOptions]]) -> list[Outcome]:
        """One Captioner batch per option set; outcomes in the order of `items`."""
        outcomes: list[Outcome | None] = [None] * len(items)
        groups: dict[DecodingOptions, list[int]] = {}
        for index, (_, options) in enumerate(items):
            groups.setdefault(options, []).append(index)
        for options, indexes in groups.items():
            produced = self.captioner.iter_captions(
                [items[i][0] for i in indexes], options=options, batch_size=len(indexes)
            )
            for index, (_, outcome) in zip(indexes, produced, strict=True):
                outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def caption_one(self, items: list[tuple[bytes, DecodingOptions]]) -> list[Outcome]:
        self._batch_sizes.append(len(items))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, self._run, items)

    def batch_sizes(self) -> list[int]:
        """The size of every batch this replica ran (for tests and capacity planning)."""
        return list(self._batch_sizes)

    @api.post("/v1/captions")
    async def captions(self, request: Request) -> JSONResponse:
        """`capgen serve`'s POST /v1/captions: same request, same answer, same refusals."""
        try:
            query = list(request.query_params.multi_items())
            parse_options(query)  # a bad query fails before the body is read
            images, fields = await read_images(request, MAX_IMAGES)
            options = parse_options(query + fields)
            outcomes = await asyncio.gather(
                *(self.caption_one((data, options)) for _, data in images)
            )
            if len(outcomes) == 1 and isinstance(outcomes[0], CapgenError):
                error = outcomes[0]
                raise from_capgen_error(
                    error if isinstance(error, ImageError) else ImageError(str(error))
                )
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
        return JSONResponse(
            {"results": [_record(n, o) for (n, _), o in zip(images, outcomes, strict=True)]}
        )

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}


def build(args: dict[str, Any]) -> Any:
    """The application for `serve run` (import_path capgen.ray.serve:build); `args` go to the deployment."""
    return CaptionDeployment.bind(**args)  # type: ignore[attr-defined]  # @serve.deployment's
