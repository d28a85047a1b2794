"""The service's settings, checked once so every endpoint can rely on them (standard library only)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from capgen.runtime.errors import InputError
from capgen.runtime.limits import MAX_BEAM_SIZE
from capgen.serve.sizing import WorkerPlan, usable_cores

API_KEY_ENV = "CAPGEN_API_KEY"
MAX_BATCH_LIMIT = 64  # = the Captioner's MAX_BATCH_SIZE; kept here so this module stays light
MAX_QUEUE_LIMIT = 100_000
MAX_BODY_MB_LIMIT = 1024
MAX_WAIT_MS_LIMIT = 60_000
MAX_UPLOADS_LIMIT = 1024
MAX_RESTART_DELAY_S = 8.0  # the back-off's cap (workers.py): a first delay no longer than it
HEAD_TIMEOUT_S = 10.0  # --head-timeout-s's default: to send each request head (protocol.py)
RESTART_DELAY_S = 0.5  # --restart-delay-s's default: a worker's first restart (workers.py)
# scheme://host[:port], no path: what a browser sends as Origin ("*" is not accepted).
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def _check_int(name: str, value: object, low: int, high: int, auto: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        why = f" or auto (the cores here: {cores()})" if auto else ""
        raise InputError(f"{name} must be an integer from {low} to {high}{why}, got {value!r}")


def _check_number(name: str, value: object, low: float, high: float, open_low: bool) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if open_low else value >= low)
        and value <= high
    )
    if not ok:
        bound = f"more than {low:g}" if open_low else f"from {low:g}"
        raise InputError(f"{name} must be a number {bound} to {high:g}, got {value!r}")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything, so it counts as public
        return False


def cores() -> int:
    """Cores this process may use: the affinity mask, or a smaller cgroup quota (sizing.py)."""
    return usable_cores()[0]


def parse_count(name: str, text: str) -> int | None:
    """`--workers`/`--threads` as typed: "auto" is None, else a whole number (range: ServeSettings)."""
    value = text.strip()
    if value.lower() == "auto":
        return None
    if value.isascii() and value.isdigit():
        return int(value)
    raise InputError(f"{name} must be auto or a whole number, got {text!r}")


@dataclass(frozen=True)
class ServeSettings:
    """What `capgen serve`'s options say; the defaults are the CLI's."""

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | None = None  # None: auto (sizing.py), the CLI's default
    threads: int | None = None  # None: auto
    int8: bool = False
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_mb: float = 20.0
    timeout_s: float = 30.0
    head_timeout_s: float = HEAD_TIMEOUT_S  # to send each request head (slowloris)
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are given
    max_beam: int = 10  # the largest beam_size a request may ask for
    max_uploads: int = 16  # request bodies read at once; more: 503 busy
    restart_delay_s: float = RESTART_DELAY_S  # a worker's first restart after an exit before ready
    insecure_public: bool = False  # a non-loopback --host without --api-key, on purpose
    plan: WorkerPlan | None = None  # what serve() resolved auto to: shown in /v1/model

    def __post_init__(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise InputError(f"--host must be a host name or address, got {self.host!r}")
        _check_int("--port", self.port, 0, 65535)
        usable = cores()
        if self.workers is not None:  # one worker per core at most
            _check_int("--workers", self.workers, 1, usable, auto=True)
        if self.threads is not None:  # workers x threads <= cores
            most = usable if self.workers is None else max(1, usable // self.workers)
            _check_int("--threads", self.threads, 1, most, auto=True)
        _check_int("--max-batch", self.max_batch, 1, MAX_BATCH_LIMIT)
        _check_number("--max-wait-ms", self.max_wait_ms, 0, MAX_WAIT_MS_LIMIT, open_low=False)
        _check_int("--max-queue", self.max_queue, 1, MAX_QUEUE_LIMIT)
        _check_number("--max-body-mb", self.max_body_mb, 0, MAX_BODY_MB_LIMIT, open_low=True)
        _check_number("--timeout-s", self.timeout_s, 0, 86_400, open_low=True)
        _check_number("--head-timeout-s", self.head_timeout_s, 0, 3_600, open_low=True)
        _check_int("--max-beam", self.max_beam, 1, MAX_BEAM_SIZE)
        _check_int("--max-uploads", self.max_uploads, 1, MAX_UPLOADS_LIMIT)
        _check_number(
            "--restart-delay-s", self.restart_delay_s, 0, MAX_RESTART_DELAY_S, open_low=True
        )
        if self.api_key is not None and (
            not self.api_key
            or not self.api_key.isascii()
            or not self.api_key.isprintable()
            or " " in self.api_key
        ):
            raise InputError(
                "--api-key must be printable ASCII without spaces (it is sent as a Bearer token)"
            )

        # A service reachable from other machines with no key is an open captioning (and
        # /metrics, /v1/model) endpoint for anyone: only when asked for in so many words.
        if not is_loopback(self.host) and self.api_key is None and not self.insecure_public:
            raise InputError(
                f"--host {self.host} is reachable from other machines: set --api-key (or "
                f"{API_KEY_ENV}), or pass --insecure-public to serve it without a key"
            )
        for origin in self.cors_origins:
            if not _ORIGIN.fullmatch(origin):
                raise InputError(
                    f"--cors-origin must be an origin such as https://example.org:8443, got {origin!r}"
                )

    def to_json(self) -> str:
        """For worker processes (workers.py): every field, as the CLI gave it."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["model"] = None if self.model is None else str(self.model)
        fields["plan"] = None if self.plan is None else dataclasses.asdict(self.plan)
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        fields = json.loads(text)
        model = fields.pop("model")
        origins = tuple(fields.pop("cors_origins"))
        plan = fields.pop("plan")
        return cls(
            model=None if model is None else Path(model),
            cors_origins=origins,
            plan=None if plan is None else WorkerPlan(**plan),
            **fields,
        )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def threads_per_worker(self) -> int:
        """Encoder threads of each worker's Captioner: the plan's, once serve() has made it."""
        if self.plan is not None:
            return self.plan.threads
        return self.threads if self.threads is not None else max(1, cores() // (self.workers or 1))
