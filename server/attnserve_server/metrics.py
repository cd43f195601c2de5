"""Prometheus metrics: one :class:`ServerMetrics` per server, in its own registry, served over HTTP.

Names follow Prometheus' and vLLM's/Triton's conventions: everything is ``attnserve_*``, counters
end in ``_total``, durations are histograms in seconds. The ``model`` label only ever holds the
name of a loaded model (or ``""``), so a client sending random model names cannot grow the
number of series without bound; the ``key`` label holds the NAME of the API key a call presented
(or ``""``), never the key, and names come only from the server's key file.

The per-request metrics share one label set, :data:`REQUEST_LABELS`, filled from one
:class:`RequestLabels` value: every transport (the gRPC interceptor today, an HTTP one later)
builds that value and nothing else, so their series line up.

Who records what:
- the RPC interceptor (``api/interceptor.py``): requests, their status codes and end-to-end
  latency, requests in flight;
- the handlers: queue and compute time (:meth:`ServerMetrics.admitted`), batch size, tokens,
  time to first token and inter-token latency (:meth:`ServerMetrics.generation`);
- the server: the models it has loaded (:meth:`ServerMetrics.model_loaded`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Wide enough for a 1 ms classification of a tiny model and a minutes-long generation.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# A decode step of a small model on CPU takes about a millisecond; vLLM's buckets start at 10 ms.
INTER_TOKEN_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

UNKNOWN_MODEL = ""
NO_KEY = ""

REQUEST_LABELS = ("model", "method", "key")
"""The labels of every per-request metric (``attnserve_requests_total`` adds ``code``)."""


class RequestLabels(NamedTuple):
    """The values of :data:`REQUEST_LABELS` for one request, in that order."""

    model: str
    """A loaded model's name (see :meth:`ServerMetrics.model_label`), or ``""``."""
    method: str
    """The RPC's name (``Generate``, ``ModelInfer``, ...)."""
    key: str = NO_KEY
    """The name of the API key the request presented, ``""`` without one (or with an unknown one)."""


class ServerMetrics:
    """Every metric of one server. Thread-safe (prometheus-client's metrics are)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._loaded: set[str] = set()
        r = self.registry
        self.requests = Counter(
            "attnserve_requests",  # exposed as attnserve_requests_total
            "RPCs finished, by model, method, API key name and gRPC status code.",
            [*REQUEST_LABELS, "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "attnserve_request_duration_seconds",
            "End-to-end RPC latency (queue and compute included), by model, method and API key name.",
            list(REQUEST_LABELS),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "attnserve_requests_in_flight",
            "RPCs being handled now (queued or running), by model, method and API key name.",
            list(REQUEST_LABELS),
            registry=r,
        )
        self.queue_time = Histogram(
            "attnserve_request_queue_time_seconds",
            "Time a request waited for a free execution slot.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "attnserve_request_compute_time_seconds",
            "Time a request held an execution slot (model calls, pre- and post-processing).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "attnserve_batch_size",
            "Inputs per model call (images per classification call today).",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "attnserve_prompt_tokens", "Prompt tokens prefilled.", ["model"], registry=r
        )  # exposed as attnserve_prompt_tokens_total
        self.generation_tokens = Counter(
            "attnserve_generation_tokens", "Tokens generated.", ["model"], registry=r
        )  # exposed as attnserve_generation_tokens_total
        self.time_to_first_token = Histogram(
            "attnserve_time_to_first_token_seconds",
            "From the request's arrival to its first generated token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "attnserve_inter_token_latency_seconds",
            "Between two successive generated tokens of one request.",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.model_loaded_gauge = Gauge(
            "attnserve_model_loaded",
            "1 for each model version that is loaded and served.",
            ["model", "version", "task"],
            registry=r,
        )

    # Models ----------------------------------------------------------------------------------

    def model_loaded(self, model: str, version: str, task: str) -> None:
        """Record a loaded model version; from now on requests name ``model`` in their labels."""
        self._loaded.add(model)
        self.model_loaded_gauge.labels(model, version, task).set(1)

    def models_changed(self, loaded: Iterable[tuple[str, str, str]]) -> None:
        """Make the loaded-model gauge list exactly ``loaded`` (model, version, task), after any load,
        reload or unload."""
        self.model_loaded_gauge.clear()
        self._loaded.clear()
        for model, version, task in loaded:
            self.model_loaded(model, version, task)

    def model_label(self, requested: str) -> str:
        """The ``model`` label for a request naming ``requested``: the name if it is loaded, else ``""``."""
        return requested if requested in self._loaded else UNKNOWN_MODEL

    # RPCs (the interceptor) ------------------------------------------------------------------

    def rpc_started(self, labels: RequestLabels) -> None:
        """An RPC arrived."""
        self.requests_in_flight.labels(*labels).inc()

    def rpc_finished(self, labels: RequestLabels, code: str, seconds: float) -> None:
        """An RPC ended with status ``code`` (``"OK"``, ``"INVALID_ARGUMENT"``, ...) after ``seconds``."""
        self.requests_in_flight.labels(*labels).dec()
        self.requests.labels(*labels, code).inc()
        self.request_duration.labels(*labels).observe(seconds)

    # Execution (the handlers) ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admitted(self, slot: AbstractAsyncContextManager[None], model: str) -> AsyncIterator[None]:
        """Enter ``slot`` (the scheduler's admission), timing the wait as queue time and the body as compute time."""
        queued = time.perf_counter()
        async with slot:
            started = time.perf_counter()
            self.queue_time.labels(model).observe(started - queued)
            try:
                yield
            finally:
                self.compute_time.labels(model).observe(time.perf_counter() - started)

    def observe_batch(self, model: str, size: int) -> None:
        """One model call ran ``size`` inputs together."""
        self.batch_size.labels(model).observe(size)

    def observe_image_batch(self, model: str, size: int, waits: Sequence[float], compute_s: float) -> None:
        """One dynamic-batcher call (a :data:`~attnserve_server.vision.batcher.BatchObserver`): its size,
        and for each request in it the time it queued and the call's time."""
        self.observe_batch(model, size)
        for wait in waits:
            self.queue_time.labels(model).observe(wait)
            self.compute_time.labels(model).observe(compute_s)

    def text_scheduler(self, model: str) -> TextSchedulerMetrics:
        """What one text model's continuous batcher reports (a SchedulerObserver)."""
        return TextSchedulerMetrics(self, model)

    def generation(self, model: str, prompt_tokens: int, arrived: float) -> GenerationTimer:
        """Token metrics of one generation that arrived at ``arrived`` (``time.perf_counter()``)."""
        return GenerationTimer(self, model, prompt_tokens, arrived)

    # Exposition ------------------------------------------------------------------------------

    def serve_http(self, host: str, port: int) -> MetricsEndpoint:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) from a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(server, thread)


class TextSchedulerMetrics:
    """A text model's continuous batcher, seen by the metrics: queue time, decode batch size,
    and compute time (admission to the last token)."""

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model

    def admitted(self, wait_s: float) -> None:
        self._metrics.queue_time.labels(self._model).observe(wait_s)

    def decoded(self, batch_size: int) -> None:
        self._metrics.observe_batch(self._model, batch_size)

    def finished(self, compute_s: float) -> None:
        self._metrics.compute_time.labels(self._model).observe(compute_s)


class GenerationTimer:
    """Counts one generation's tokens and times its first token and the gaps between tokens."""

    def __init__(self, metrics: ServerMetrics, model: str, prompt_tokens: int, arrived: float) -> None:
        self._metrics = metrics
        self._model = model
        self._prompt_tokens = prompt_tokens
        self._last = arrived
        self._first = True

    def tokens(self, count: int) -> None:
        """``count`` new tokens have just been generated (several when they came joined in one chunk).

        Every token but a generation's first counts one gap. Tokens that come together share the
        time since the previous chunk evenly, so the gaps still sum to the generation's time.
        """
        if count <= 0:
            return
        now = time.perf_counter()
        m, model = self._metrics, self._model
        gaps, gap = count, (now - self._last) / count
        if self._first:
            # The prompt counts once it has really been prefilled, not when the request was queued.
            m.prompt_tokens.labels(model).inc(self._prompt_tokens)
            m.time_to_first_token.labels(model).observe(now - self._last)
            self._first = False
            gaps, gap = count - 1, 0.0
        latency = m.inter_token_latency.labels(model)
        for _ in range(gaps):
            latency.observe(gap)
        m.generation_tokens.labels(model).inc(count)
        self._last = now


class MetricsEndpoint:
    """The running ``/metrics`` HTTP server."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
