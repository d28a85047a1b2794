"""`create_app(captioner_factory, settings)`: the captioning service as a FastAPI app.

The factory is called once, on the model thread, after the server starts:
`/healthz` answers at once, `/readyz` only once the model is loaded and
warmed (and not while draining). Every error answer is
`{"code": ..., "message": ...}` (errors.py); captions are the records of
`capgen caption --json` (runtime/results.py), one per image, in order.

Work is bounded before it is accepted: options by the model and
`--max-beam`, bodies read at once by `--max-uploads`, queued work by its
cost, and a request the measured queue wait says cannot finish within its
deadline is refused at once (503 with that wait as Retry-After) instead of
being captioned and thrown away after its 504.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from capgen import __version__
from capgen.runtime import results
from capgen.runtime.captioner import Captioner
from capgen.runtime.decoding import DecodingOptions, DecodingResult, stop_when
from capgen.runtime.errors import CapgenError, ImageError
from capgen.serve.batcher import DeadlinePassed, MicroBatcher, Outcome
from capgen.serve.errors import ApiError, from_capgen_error, one_line, service_unavailable
from capgen.serve.intake import bound_options, client_left, parse_options, read_images
from capgen.serve.memory import Trimmer
from capgen.serve.metrics import Metrics
from capgen.serve.middleware import ServiceMiddleware, ServiceState, access_log, authorized
from capgen.serve.page import CONTENT_SECURITY_POLICY, PAGE
from capgen.serve.schema import CAPTIONS_OPENAPI, ERROR_RESPONSES, CaptionsAnswer, ErrorAnswer
from capgen.serve.settings import ServeSettings

CaptionerFactory = Callable[[], Captioner]
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
DEFAULT_BEAM = DecodingOptions().beam_size  # a queue cost of 1 = one image at the defaults


def warm_up(captioner: Captioner) -> None:
    """One blank image through every graph: the first real request pays no start-up cost."""
    spec = captioner.manifest.encoder
    captioner.caption_batch([np.zeros((spec.height, spec.width, 3), dtype=np.uint8)])


class Service:
    """The model, its batcher and the readiness of one app."""

    def __init__(
        self, factory: CaptionerFactory, settings: ServeSettings, state: ServiceState
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.state = state
        self.metrics = state.metrics
        self.captioner: Captioner | None = None
        self.ready = False
        self.load_error: str | None = None
        self.uploading = 0  # request bodies being read now, at most settings.max_uploads
        self.batcher = MicroBatcher(
            self.run_batch,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            metrics=self.metrics,
        )

    async def load(self) -> None:
        """Build the Captioner and run one warm-up batch, both on the model thread."""
        try:
            captioner = await self.batcher.on_model_thread(self.factory)
            await self.batcher.on_model_thread(lambda: warm_up(captioner))
        except Exception as error:  # reported by /readyz and the log; the process stays up
            self.load_error = one_line(f"{type(error).__name__}: {error}")
            access_log.error(json.dumps({"event": "model_failed", "message": self.load_error}))
            return
        self.captioner = captioner
        self.ready = True

    def begin_drain(self) -> None:
        """SIGTERM: /readyz false, new caption requests 503, queued work runs without waiting."""
        self.state.draining = True
        self.batcher.flush()

    def run_batch(
        self, images: list[Any], options: DecodingOptions, should_stop: Callable[[], bool]
    ) -> list[Outcome]:
        """ONE Captioner batch (model thread); per-stage times go to /metrics.

        Decoding stops between two steps (DecodingStopped) once `should_stop()`
        is true: every request of the batch has left, so its work is wasted.
        """
        assert self.captioner is not None
        captioner = self.captioner
        with stop_when(should_stop):
            outcomes = [
                outcome
                for _, outcome in captioner.iter_captions(
                    images, options=options, batch_size=len(images)
                )
            ]
        good = [o for o in outcomes if isinstance(o, DecodingResult)]
        stages = self.metrics.stage_seconds
        for result in good:
            stages.labels(stage="preprocess").observe(result.timings["preprocess"])
        if good:  # encode and decode ran once for the batch; results hold the per-image share
            stages.labels(stage="encode").observe(good[0].timings["encode"] * len(good))
            stages.labels(stage="decode").observe(good[0].timings["decode"] * len(good))
        return outcomes

    def cost_each(self, options: DecodingOptions) -> float:
        """One image's share of the queue: beam x length, relative to the default beam and length."""
        assert self.captioner is not None
        model_length = self.captioner.manifest.max_length
        length = options.max_length or model_length
        return (options.beam_size * length) / (DEFAULT_BEAM * model_length)

    def admit(self, images: int, options: DecodingOptions, deadline: float) -> float:
        """The cost of each image, if the request may be queued; else its refusal."""
        cost = self.cost_each(options)
        total = cost * images
        if total > self.settings.max_queue + 1e-9:
            raise ApiError(
                422,
                "bad_option",
                f"{images} image(s) at beam_size {options.beam_size} and max_length "
                f"{options.max_length or 'the model default'} are {total:.3g} image-equivalents of "
                f"work, more than this server queues (--max-queue {self.settings.max_queue}); "
                "send fewer images or ask for a smaller beam_size or max_length",
            )
        wait = self.batcher.expected_wait_s(total)
        if wait is not None and time.perf_counter() + wait > deadline:
            raise service_unavailable(
                "queue_full",
                f"the queued work takes about {wait:.3g} s, more than this request's "
                f"--timeout-s {self.settings.timeout_s:g} s allows; retry later",
                self.batcher.retry_after_s(),
            )
        return cost

    def require_ready(self) -> None:
        if self.load_error is not None:
            raise service_unavailable(
                "model_failed", f"the model failed to load: {self.load_error}"
            )
        if not self.ready:
            raise service_unavailable("not_ready", "the model is still loading; retry shortly")

    def model_summary(self) -> dict[str, Any]:
        self.require_ready()
        assert self.captioner is not None
        manifest = self.captioner.manifest
        import onnxruntime

        return {
            "name": manifest.name,
            "description": manifest.description,
            "default_model": self.captioner.is_default_model,
            "demonstration": self.captioner.is_demonstration,
            "vocabulary_size": manifest.vocabulary.size,
            "max_length": manifest.max_length,
            "encoder": {
                "kind": manifest.encoder.kind,
                "height": manifest.encoder.height,
                "width": manifest.encoder.width,
                "feature_size": manifest.encoder.feature_size,
            },
            "int8_available": manifest.encoder.int8_file is not None,
            "int8_in_use": self.settings.int8,
            # What runs the encoder (capgen.runtime.precision): mode, engine, its version, graph.
            "precision": self.captioner.encoder_plan.summary(),
            "versions": {
                "capgen": __version__,
                "onnxruntime": onnxruntime.__version__,
                "model_format": manifest.format_version,
                "converted_with": dict(manifest.converted_with),
            },
            "batching": {
                "max_batch": self.settings.max_batch,
                "max_wait_ms": self.settings.max_wait_ms,
                "max_queue": self.settings.max_queue,
                "max_beam": self.settings.max_beam,
            },
            # Workers x threads and why (sizing.py): what `--workers auto` chose here.
            "workers": self._workers_summary(),
        }

    def _workers_summary(self) -> dict[str, object]:
        plan = self.settings.plan
        if plan is not None:
            return plan.summary()
        return {  # an app made without `capgen serve` (in-process tests, embedding)
            "workers": self.settings.workers or 1,
            "threads_per_worker": self.settings.threads_per_worker,
            "workers_auto": self.settings.workers is None,
            "threads_auto": self.settings.threads is None,
            "reason": "not started by capgen serve",
        }


async def _client_left(request: Request) -> None:
    """Returns when the client disconnects (the body is already read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a gathered future's exception as seen: a cancelled gather must not log
    "exception was never retrieved" once its request has already been answered."""
    if not future.cancelled():
        future.exception()


async def _outcomes(
    request: Request, futures: list[asyncio.Future[Outcome]], remaining: float, timeout_s: float
) -> list[Outcome]:
    """Wait for every image of the request; cancel them all if the client leaves or time runs out.

    Cancelling the futures takes queued images out of the queue, and stops a
    batch already running once all of its images are cancelled (batcher.py).
    """
    gathered = asyncio.gather(*futures)
    gathered.add_done_callback(_retrieve)
    watcher = asyncio.ensure_future(_client_left(request))
    both: list[asyncio.Future[Any]] = [gathered, watcher]
    try:
        done, _ = await asyncio.wait(
            both, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    timeout = ApiError(
        504, "timeout", f"the request was not done within --timeout-s {timeout_s:g} s"
    )
    if gathered in done:
        try:
            return list(gathered.result())
        except DeadlinePassed:
            raise timeout from None
        except Exception as error:
            raise ApiError(500, "internal_error", f"captioning failed: {error}") from error
    for future in futures:  # cancels the images still queued: they leave the queue unrun
        future.cancel()
    gathered.cancel()
    if watcher in done:
        raise client_left()
    raise timeout


def _record(name: str, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, CapgenError):
        return results.error_record(name, str(outcome))
    return results.success_record(name, outcome)


def create_app(
    captioner_factory: CaptionerFactory, settings: ServeSettings, load_first: bool = False
) -> FastAPI:
    """The service; `captioner_factory` builds the one Captioner this app (process) uses.

    With `load_first` the app's startup waits for the model, so the server
    listens only once it is ready (a worker of several, workers.py); without,
    `/healthz` answers while it loads.
    """
    metrics = Metrics()
    # The memory of a burst goes back to the system once its last request is answered.
    trimmer = Trimmer()
    state = ServiceState(
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        on_idle=trimmer.request,
    )
    service = Service(captioner_factory, settings, state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        loader = asyncio.create_task(service.load())
        if load_first:
            await loader
        yield
        loader.cancel()
        await service.batcher.close()

    # FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN, which an offline
    # server cannot reach: fastapi-offline serves the same pages with the assets it ships
    # (under /static-offline-docs). validatorUrl None: Swagger UI would otherwise fetch a
    # badge from the public validator.
    app = FastAPIOffline(
        title="capgen",
        version=__version__,
        description="Caption images with a converted Keras CNN+LSTM model (dynamic micro-batching).",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = service
    app.add_middleware(ServiceMiddleware, state=state)
    if settings.cors_origins:  # outermost, so a preflight needs no API key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        metrics.errors.labels(status=error.status, code=error.code).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return await api_error(
            request,
            ApiError(
                error.status_code,
                HTTP_CODES.get(error.status_code, f"http_{error.status_code}"),
                str(error.detail),
                dict(error.headers or {}),  # 405's Allow, for one
            ),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return await api_error(request, ApiError(422, "bad_option", str(error.errors()[:1])))

    @app.post(
        "/v1/captions",
        summary="Caption one or several images",
        response_model=None,
        openapi_extra=CAPTIONS_OPENAPI,
        responses={200: {"model": CaptionsAnswer}, **ERROR_RESPONSES},
    )
    async def captions(request: Request) -> JSONResponse:
        """Multipart files (several) or one image as the body (Content-Type image/*).

        Answer: `{"results": [...]}`, one `capgen caption --json` record per
        image, in order. With several images a bad one fails alone (its
        record is `{"path", "error"}`); one image alone that fails is a 422.
        """
        service.require_ready()
        assert service.captioner is not None
        model_length = service.captioner.manifest.max_length
        deadline = request.state.started + settings.timeout_s
        query = list(request.query_params.multi_items())
        # a bad query fails before the body is read
        bound_options(parse_options(query), model_length, settings.max_beam)
        if service.uploading >= settings.max_uploads:  # each body read holds its bytes in memory
            raise service_unavailable(
                "busy",
                f"{settings.max_uploads} requests are already uploading (--max-uploads); retry shortly",
            )
        service.uploading += 1
        metrics.uploading.inc()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                images, fields = await read_images(request, settings.max_queue)
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"the body did not arrive within --timeout-s {settings.timeout_s:g} s",
            ) from None
        finally:
            service.uploading -= 1
            metrics.uploading.dec()
        options = bound_options(parse_options(query + fields), model_length, settings.max_beam)
        request.state.images = len(images)
        cost_each = service.admit(len(images), options, deadline)
        futures = service.batcher.submit(
            [data for _, data in images], options, cost_each=cost_each, deadline=deadline
        )
        outcomes = await _outcomes(
            request, futures, deadline - time.perf_counter(), settings.timeout_s
        )
        if len(outcomes) == 1 and isinstance(outcomes[0], CapgenError):
            error = outcomes[0]
            raise from_capgen_error(
                error if isinstance(error, ImageError) else ImageError(str(error))
            )
        return JSONResponse(
            {"results": [_record(n, o) for (n, _), o in zip(images, outcomes, strict=True)]}
        )

    @app.get(
        "/v1/model", summary="The model's manifest summary", responses={503: {"model": ErrorAnswer}}
    )
    async def model() -> dict[str, Any]:
        return service.model_summary()

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The model is loaded and warmed, and the server is not draining",
        responses={503: {"model": ErrorAnswer}},
    )
    async def readyz(request: Request) -> dict[str, bool]:
        if state.draining:
            raise service_unavailable("draining", "the server is shutting down")
        key = settings.api_key
        if (
            service.load_error is not None
            and key is not None
            and not authorized(request.scope, key)
        ):
            # /readyz is open to probes; the load error names server paths, for key holders only
            raise service_unavailable(
                "model_failed", "the model failed to load (the reason is in the server's log)"
            )
        service.require_ready()
        return {"ready": True}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", summary="A page to caption an image", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    return app
