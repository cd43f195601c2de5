"""Builds and runs the grpc.aio server: services, health, reflection, limits and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2
from attnserve_server.api.image_classification import ImageClassificationServicer
from attnserve_server.api.models import ModelServicer
from attnserve_server.api.registration import add_servicer
from attnserve_server.api.text_generation import TextGenerationServicer
from attnserve_server.errors import ModelLoadError, RepositoryError
from attnserve_server.handlers import ImageClassificationHandler, ModelHandler, TextGenerationHandler
from attnserve_server.repository import ModelRepository
from attnserve_server.settings import ServerSettings
from attnserve_server.text.scheduler import ConcurrencyLimiter

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""  # grpc.health.v1's name for the server as a whole

TEXT_GENERATION_SERVICE = text_generation_pb2.DESCRIPTOR.services_by_name["TextGenerationService"]
IMAGE_CLASSIFICATION_SERVICE = image_classification_pb2.DESCRIPTOR.services_by_name["ImageClassificationService"]
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
SERVICE_NAMES = (
    TEXT_GENERATION_SERVICE.full_name,
    IMAGE_CLASSIFICATION_SERVICE.full_name,
    MODEL_SERVICE.full_name,
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
    settings: ServerSettings, repository: ModelRepository, limiter: ConcurrencyLimiter
) -> tuple[grpc.aio.Server, AsyncHealth]:
    """The grpc.aio server with every service registered; health starts NOT_SERVING."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # two servers on one port would split traffic silently
    ]
    server = grpc.aio.server(options=options)
    add_servicer(server, TextGenerationServicer(TextGenerationHandler(repository)), TEXT_GENERATION_SERVICE)
    classify = ImageClassificationHandler(repository, limiter, max_image_pixels=settings.max_image_pixels)
    add_servicer(server, ImageClassificationServicer(classify), IMAGE_CLASSIFICATION_SERVICE)
    add_servicer(server, ModelServicer(ModelHandler(repository)), MODEL_SERVICE)
    health_servicer: AsyncHealth = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    return server, health_servicer


async def serve(settings: ServerSettings) -> None:
    """Load the repository, serve until SIGTERM/SIGINT, then drain within the grace period."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    limiter = ConcurrencyLimiter(settings.max_concurrent_requests, settings.max_queued_requests)
    repository = ModelRepository(
        settings.model_repository,
        default_max_new_tokens_limit=settings.max_new_tokens_limit,
        intra_op_threads=settings.intra_op_threads,
        max_images_per_request=settings.max_images_per_request,
        batching=settings.batching_limits(),
    )
    try:
        model_dirs = repository.discover()
    except RepositoryError as exc:
        raise StartupError(str(exc)) from None
    # One worker thread per concurrent classification (the limiter caps them), one per model for its
    # continuous-batching steps (a text model runs one step at a time), plus one for loading and
    # tokenizing so those never wait behind model calls.
    executor = ThreadPoolExecutor(
        max_workers=settings.max_concurrent_requests + len(model_dirs) + 1, thread_name_prefix="ort"
    )
    server, health_servicer = build_server(settings, repository, limiter)
    # The aio servicer starts out SERVING; nothing is loaded yet.
    await health_servicer.set(OVERALL, NOT_SERVING)

    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot bind {address}: {exc}") from None
    await server.start()
    logger.info("listening on %s:%d (loading models from %s)", settings.host, port, settings.model_repository)

    try:
        for model_dir in model_dirs:
            if stop.is_set():  # SIGTERM while loading: don't make the operator wait for the rest
                break
            await health_servicer.set(model_dir.name, NOT_SERVING)
            await loop.run_in_executor(executor, repository.load_model, model_dir, executor)
            await health_servicer.set(model_dir.name, SERVING)
    except ModelLoadError as exc:
        await server.stop(None)
        executor.shutdown(wait=False, cancel_futures=True)
        raise StartupError(f"failed to load {exc}") from None
    if not stop.is_set():
        repository.ready = True
        if not repository.models():
            logger.warning("model repository %s holds no models", settings.model_repository)
        await health_servicer.set(OVERALL, SERVING)
        names = ", ".join(m.name for m in repository.models())
        logger.info("serving %d model(s): %s", len(repository.models()), names)

    await stop.wait()
    logger.info("shutting down: draining in-flight requests for up to %.1f s", settings.grace_period_s)
    # Health first, so load balancers stop sending traffic while in-flight requests finish.
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.grace_period_s)
    executor.shutdown(wait=True, cancel_futures=True)
    logger.info("stopped")
