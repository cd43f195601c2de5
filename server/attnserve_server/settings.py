"""Server settings: environment variables (``ATTNSERVE_*``) overridden by command-line flags."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from attnserve_server.text.continuous import BatchingLimits

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ServerSettings(BaseSettings):
    """Everything the server can be configured with. Each field is also a CLI flag."""

    model_config = SettingsConfigDict(env_prefix="ATTNSERVE_", extra="forbid", frozen=True)

    model_repository: Path = Field(
        default=Path("models"),
        description="Directory holding the model repository (models/<name>/<version>/).",
    )
    host: str = Field(default="127.0.0.1", description="Address to bind the gRPC server to (0.0.0.0 for all).")
    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    max_message_bytes: int = Field(
        # 64 images (max_images_per_request) of up to 2 MiB each (a high-quality JPEG of ~8 MP, or a
        # 1-MP PNG) plus framing: a full request of typical images must fit.
        default=130 * 1024 * 1024,
        ge=1024,
        description="Largest gRPC message accepted or sent, in bytes (default 130 MiB: 64 images of 2 MiB). "
        "Bigger requests are refused by gRPC with RESOURCE_EXHAUSTED.",
    )
    max_image_pixels: int = Field(
        # 40 MP covers the photos phones and cameras commonly write (12-24 MP, up to ~40 MP) and is
        # well below Pillow's own 89 MP bomb warning; one decoded RGBA image is then at most 160 MB.
        default=40_000_000,
        ge=1,
        # Pillow refuses anything above twice its MAX_IMAGE_PIXELS (2 x 89,478,485) on its own.
        le=178_956_970,
        description="Largest image (width x height, read from the header before decoding) that Classify "
        "accepts; larger ones get INVALID_ARGUMENT. At most 178956970, Pillow's own hard limit.",
    )
    max_images_per_request: int = Field(
        default=64,
        ge=1,
        description="Most images one Classify request may carry; more get INVALID_ARGUMENT.",
    )
    grace_period_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long in-flight requests may run before they are cancelled.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime threads per operator; 0 derives it from the cgroup CPU quota and core count.",
    )
    max_new_tokens_limit: int = Field(
        default=1024,
        ge=1,
        description="Cap on a request's max_new_tokens for models whose config.yaml sets none.",
    )
    max_concurrent_requests: int = Field(
        default=4,
        ge=1,
        description="Classifications that run at the same time; further requests wait in a queue. (Text "
        "generation is batched per model instead: see max_active_sequences.)",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=0,
        description="Classifications that may wait for a free slot; beyond that requests fail with RESOURCE_EXHAUSTED.",
    )
    max_active_sequences: int = Field(
        default=16,
        ge=1,
        description="Continuous batching: generations of one text model decoded together in each step "
        "(a model's config.yaml may override it).",
    )
    max_kv_cache_tokens: int = Field(
        default=16384,
        ge=1,
        description="Continuous batching: KV cache positions (prompt + max_new_tokens of every running "
        "generation) one text model may hold; further requests wait.",
    )
    max_waiting_sequences: int = Field(
        default=64,
        ge=0,
        description="Continuous batching: generations that may wait to join a text model's batch; beyond "
        "that requests fail at once with RESOURCE_EXHAUSTED.",
    )
    max_prefill_tokens_per_step: int = Field(
        default=128,
        ge=1,
        description="Continuous batching: prompt tokens prefilled per step, so that long prompts are "
        "processed in chunks and running streams keep getting tokens.",
    )
    log_level: LogLevel = Field(default="INFO", description="Logging level.")

    def batching_limits(self) -> BatchingLimits:
        """The continuous batching defaults for every text model."""
        return BatchingLimits(
            max_active_sequences=self.max_active_sequences,
            max_kv_cache_tokens=self.max_kv_cache_tokens,
            max_waiting_sequences=self.max_waiting_sequences,
            max_prefill_tokens_per_step=self.max_prefill_tokens_per_step,
        )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field; unset flags leave the env/default value."""
    parser = argparse.ArgumentParser(
        prog="attnserve-server",
        description="Serve a model repository of ONNX models over gRPC. "
        "Every flag can also be set with an ATTNSERVE_<NAME> environment variable; flags win.",
    )
    for name, field in ServerSettings.model_fields.items():
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": field.description, "dest": name}
        if name == "log_level":
            kwargs["choices"] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
            kwargs["type"] = str.upper
        elif field.annotation in (int, float, Path):
            kwargs["type"] = field.annotation
        parser.add_argument(_flag(name), **kwargs)
    return parser


def load_settings(argv: Sequence[str] | None = None) -> ServerSettings:
    """Settings from the environment, with any flags in ``argv`` taking precedence."""
    overrides = vars(build_parser().parse_args(argv))
    # Passing flags as init kwargs gives them priority over ATTNSERVE_* variables.
    return ServerSettings(**overrides)


def configure_logging(level: str) -> None:
    """Plain single-line logs on stderr."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
