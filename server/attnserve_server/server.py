"""Builds and runs the grpc.aio servers: services, health, reflection, TLS, API keys, limits and graceful shutdown.

The main server serves every service on ``--port`` (with TLS when a certificate is set); with
``--health-port`` a second, plaintext server serves only ``grpc.health.v1``, from the same health
servicer, for probes that cannot present a client certificate or an API key.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attnserve_client.pb import (
    embeddings_pb2,
    explain_pb2,
    image_classification_pb2,
    models_pb2,
    text_generation_pb2,
)
from attnserve_server.api.auth import AuthInterceptor
from attnserve_server.api.embeddings import EmbeddingServicer
from attnserve_server.api.explain import ExplainServicer
from attnserve_server.api.health import HealthServicer
from attnserve_server.api.image_classification import ImageClassificationServicer
from attnserve_server.api.interceptor import RequestInterceptor
from attnserve_server.api.models import ModelServicer
from attnserve_server.api.registration import add_servicer
from attnserve_server.api.text_generation import TextGenerationServicer
from attnserve_server.embeddings.handler import EmbeddingsHandler
from attnserve_server.errors import AttnserveError, ModelLoadError, RepositoryError
from attnserve_server.explain.handler import ExplainHandler
from attnserve_server.handlers import ModelHandler
from attnserve_server.kserve.dataplane import DataPlane
from attnserve_server.kserve.pb import grpc_service_pb2
from attnserve_server.kserve.reflection import reflection_pool
from attnserve_server.kserve.servicer import InferenceServicer
from attnserve_server.metrics import MetricsEndpoint, ServerMetrics
from attnserve_server.model_control import ModelControl
from attnserve_server.repository import ModelRepository
from attnserve_server.security.keys import KeyFileError, KeyStore
from attnserve_server.security.tls import CertificateFiles, TlsError
from attnserve_server.settings import ServerSettings
from attnserve_server.statistics import Statistics
from attnserve_server.task import HandlerContext
from attnserve_server.task_table import task_table
from attnserve_server.text.handler import TextGenerationHandler
from attnserve_server.text.metadata import TEXT_GENERATION
from attnserve_server.vision.handler import ImageClassificationHandler
from attnserve_server.vision.metadata import IMAGE_CLASSIFICATION

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""  # grpc.health.v1's name for the server as a whole

TEXT_GENERATION_SERVICE = text_generation_pb2.DESCRIPTOR.services_by_name["TextGenerationService"]
IMAGE_CLASSIFICATION_SERVICE = image_classification_pb2.DESCRIPTOR.services_by_name["ImageClassificationService"]
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
EMBEDDING_SERVICE = embeddings_pb2.DESCRIPTOR.services_by_name["EmbeddingService"]
EXPLAIN_SERVICE = explain_pb2.DESCRIPTOR.services_by_name["ExplainService"]
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAMES = (
    TEXT_GENERATION_SERVICE.full_name,
    IMAGE_CLASSIFICATION_SERVICE.full_name,
    MODEL_SERVICE.full_name,
    EMBEDDING_SERVICE.full_name,
    EXPLAIN_SERVICE.full_name,
    INFERENCE_SERVICE.full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class AsyncHealth(Protocol):
    """The parts of grpc_health's aio HealthServicer we use (grpc-stubs does not describe it)."""

    async def set(self, service: str, status: Any) -> None:
        """Set a service's status and notify watchers."""

    async def enter_graceful_shutdown(self) -> None:
        """Set every service NOT_SERVING and ignore later ``set`` calls."""


class StartupError(Exception):
    """The server could not start (a model failed to load, or the port is taken)."""


def build_server(
    settings: ServerSettings,
    repository: ModelRepository,
    control: ModelControl,
    metrics: ServerMetrics,
    keys: KeyStore | None = None,
) -> tuple[grpc.aio.Server, AsyncHealth]:
    """The grpc.aio server with every service registered; health starts NOT_SERVING.

    With ``keys``, the auth interceptor runs inside the request interceptor, so that a refused call
    still has a request id, an access log line and its metrics.
    """
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [RequestInterceptor(metrics)]
    if keys is not None:
        interceptors.append(AuthInterceptor(keys))
    server = grpc.aio.server(options=settings.grpc_options(), interceptors=interceptors)
    # One handler per task, shared by both APIs; they record one set of per-version inference
    # statistics (the v2 API's ModelStatistics reports it). Text requests are admitted by their
    # model's continuous batcher, image requests by their model's dynamic batcher.
    statistics = Statistics()
    context = HandlerContext(models=repository, settings=settings, statistics=statistics, metrics=metrics)
    handlers = {task.name: task.handler(context) for task in repository.tasks}
    text = handlers[TEXT_GENERATION]
    assert isinstance(text, TextGenerationHandler)  # the built-in row's handler
    add_servicer(server, TextGenerationServicer(text), TEXT_GENERATION_SERVICE)
    images = handlers[IMAGE_CLASSIFICATION]
    assert isinstance(images, ImageClassificationHandler)  # the built-in row's handler
    add_servicer(server, ImageClassificationServicer(images), IMAGE_CLASSIFICATION_SERVICE)
    add_servicer(server, ModelServicer(ModelHandler(repository)), MODEL_SERVICE)
    # Embeddings are every task's: the handler asks the version, not the task, for its graph.
    embeddings = EmbeddingsHandler(repository, statistics=statistics)
    add_servicer(server, EmbeddingServicer(embeddings), EMBEDDING_SERVICE)
    # So are attention maps.
    add_servicer(server, ExplainServicer(ExplainHandler(repository, statistics=statistics)), EXPLAIN_SERVICE)
    dataplane = DataPlane(repository, repository.tasks, handlers, statistics, embeddings)
    add_servicer(server, InferenceServicer(dataplane, control), INFERENCE_SERVICE)
    health_servicer: AsyncHealth = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection_enabled():
        # The inference.* descriptors live in their own pool (see attnserve_server.kserve.pb).
        reflection.enable_server_reflection(SERVICE_NAMES, server, pool=reflection_pool(SERVICE_NAMES))
    return server, health_servicer


def build_health_server(
    settings: ServerSettings, health_servicer: AsyncHealth, metrics: ServerMetrics
) -> grpc.aio.Server:
    """A plaintext server with only grpc.health.v1, answering from the main server's health servicer."""
    server = grpc.aio.server(options=settings.grpc_options(), interceptors=[RequestInterceptor(metrics)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server


def load_security(settings: ServerSettings) -> tuple[grpc.ServerCredentials | None, KeyStore | None]:
    """The gRPC port's TLS credentials and the API key store, as the settings ask; raises StartupError."""
    credentials = keys = None
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            files = CertificateFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            credentials = files.credentials()
        if settings.api_key_file is not None:
            keys = KeyStore(settings.api_key_file)
    except (TlsError, KeyFileError) as exc:
        raise StartupError(str(exc)) from None
    return credentials, keys


def bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``address`` (with TLS when ``credentials`` are given); returns the port."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise StartupError(f"cannot bind {address}: {exc}") from None


def start_metrics(settings: ServerSettings, metrics: ServerMetrics) -> MetricsEndpoint | None:
    """Serve ``/metrics`` on the gRPC host and ``settings.metrics_port``, unless metrics are off."""
    if not settings.metrics:
        return None
    try:
        endpoint = metrics.serve_http(settings.host, settings.metrics_port)
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc}") from None
    logger.info("metrics on http://%s:%d/metrics", settings.host, endpoint.port)
    return endpoint


async def serve(settings: ServerSettings) -> None:
    """Load the repository, serve until SIGTERM/SIGINT, then drain within the grace period."""
    metrics = ServerMetrics()
    endpoint = start_metrics(settings, metrics)
    try:
        await _serve(settings, metrics)
    finally:
        if endpoint is not None:
            endpoint.close()


async def _serve(settings: ServerSettings, metrics: ServerMetrics) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Loading and tokenizing run here; text models step in their batchers' own threads, and image models
    # decode in their own pools and run ORT in their batchers' threads.
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="load")
    try:
        tasks = task_table(settings.task_plugin)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    repository = ModelRepository(settings.model_repository, settings=settings, tasks=tasks, metrics=metrics)
    try:
        if settings.model_control_mode == "explicit":
            model_dirs = [repository.model_dir(name) for name in settings.load_model]
        else:
            model_dirs = repository.discover()
    except (RepositoryError, AttnserveError) as exc:
        raise StartupError(str(exc)) from None

    async def follow_health(name: str, serving: bool, ready: bool) -> None:
        if name:
            await health_servicer.set(name, SERVING if serving else NOT_SERVING)
        await health_servicer.set(OVERALL, SERVING if ready else NOT_SERVING)
        metrics.models_changed(
            (model.name, version, model.task) for model in repository.models() for version in model.versions
        )

    credentials, keys = load_security(settings)
    control = ModelControl(
        repository,
        executor,
        mode=settings.model_control_mode,
        strict_readiness=settings.strict_readiness,
        on_change=follow_health,
    )
    server, health_servicer = build_server(settings, repository, control, metrics, keys)
    # The aio servicer starts out SERVING; nothing is loaded yet.
    await health_servicer.set(OVERALL, NOT_SERVING)

    port = bind(server, f"{settings.host}:{settings.port}", credentials)
    servers = [server]
    if settings.health_port:
        health_server = build_health_server(settings, health_servicer, metrics)
        health_port = bind(health_server, f"{settings.host}:{settings.health_port}")
        servers.append(health_server)
    for each in servers:
        await each.start()
    security = "mTLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext"
    if keys is not None:
        security += f", {len(keys.names)} API key(s) from {settings.api_key_file}"
    logger.info(
        "listening on %s:%d (%s; loading models from %s)", settings.host, port, security, settings.model_repository
    )
    if settings.health_port:
        logger.info("health (grpc.health.v1 only, plaintext) on %s:%d", settings.host, health_port)

    startup = asyncio.create_task(control.start(model_dirs, exit_on_error=settings.exit_on_error))
    stopped = asyncio.create_task(stop.wait())
    # SIGTERM while loading: don't make the operator wait for the rest.
    await asyncio.wait((startup, stopped), return_when=asyncio.FIRST_COMPLETED)
    poller: asyncio.Task[None] | None = None
    if startup.done():
        try:
            failures = startup.result()
        except ModelLoadError as exc:
            await asyncio.gather(*(each.stop(None) for each in servers))
            executor.shutdown(wait=False, cancel_futures=True)
            raise StartupError(f"failed to load {exc}") from None
        if not repository.models() and not failures:
            logger.warning("model repository %s holds no models to load", settings.model_repository)
        names = ", ".join(m.name for m in repository.models())
        logger.info("serving %d model(s): %s", len(repository.models()), names)
        if failures:
            logger.error("%d model(s) failed to load: %s", len(failures), ", ".join(f.model for f in failures))
        if settings.model_control_mode == "poll":
            poller = asyncio.create_task(control.poll_forever(settings.repository_poll_interval_s))
    else:
        startup.cancel()

    await stopped
    if poller is not None:
        poller.cancel()
    logger.info("shutting down: draining in-flight requests for up to %.1f s", settings.grace_period_s)
    # Health first, so load balancers stop sending traffic while in-flight requests finish.
    await health_servicer.enter_graceful_shutdown()
    await asyncio.gather(*(each.stop(settings.grace_period_s) for each in servers))
    repository.close()
    executor.shutdown(wait=True, cancel_futures=True)
    logger.info("stopped")
