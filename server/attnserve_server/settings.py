"""Server settings, from (lowest to highest precedence) defaults, a YAML config file, ``ATTNSERVE_*``
environment variables and command-line flags.

The config file is named by ``--config`` or ``ATTNSERVE_CONFIG``; its keys are the field names
below (``model_repository: /models``). Unknown keys, in the file or as flags, are errors.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from attnserve_server.flags import add_field_flags
from attnserve_server.logs import LogFormat
from attnserve_server.runtime import Backend, GraphOptimization, Precision, RuntimeOptions
from attnserve_server.text.continuous import BatchingLimits

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
ControlMode = Literal["none", "explicit", "poll"]
ENV_PREFIX = "ATTNSERVE_"


class SettingsError(ValueError):
    """The config file cannot be read, is not YAML, or is not a mapping of setting names to values."""


class ServerSettings(BaseSettings):
    """Everything the server can be configured with. Each field is also a CLI flag."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    config: Path | None = Field(
        default=None,
        description="YAML file of settings (keys are the setting names, e.g. model_repository). "
        "Flags and ATTNSERVE_* variables override it.",
    )
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
    handshake_timeout_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="A connection that has not finished its HTTP/2 handshake by then is closed "
        "(gRPC's own default is 120 s, which lets silent sockets pile up).",
    )
    max_connection_idle_s: float = Field(
        default=600.0,
        ge=0,
        allow_inf_nan=False,
        description="A connection with no RPC for this long is closed with a GOAWAY (0: never); clients "
        "reconnect on their next call.",
    )
    max_connection_age_s: float = Field(
        default=1800.0,
        ge=0,
        allow_inf_nan=False,
        description="A connection older than this is asked to go away (0: never), so that clients spread "
        "over new replicas; running RPCs get max_connection_age_grace_s to finish.",
    )
    max_connection_age_grace_s: float = Field(
        default=60.0,
        ge=0,
        allow_inf_nan=False,
        description="After max_connection_age_s, how long running RPCs may go on before the connection closes.",
    )
    keepalive_time_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="The server pings an idle connection this often, to find peers that are gone.",
    )
    keepalive_timeout_s: float = Field(
        default=20.0,
        gt=0,
        allow_inf_nan=False,
        description="A ping not answered within this time closes the connection.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime threads per operator; 0 derives it from the cgroup CPU quota and core count.",
    )
    graph_optimization: GraphOptimization = Field(
        default="all",
        description="ONNX Runtime graph optimisation level for every model: disable, basic, extended or all.",
    )
    allow_spinning: bool = Field(
        default=False,
        description="Let ONNX Runtime's worker threads spin between calls: a little less latency per call for "
        "whole cores burnt while idle (and, in a container, CPU quota spent on nothing).",
    )
    max_new_tokens_limit: int = Field(
        default=1024,
        ge=1,
        description="Cap on a request's max_new_tokens for models whose config.yaml sets none.",
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
    image_max_batch_size: int = Field(
        default=8,
        ge=1,
        description="Image models: most images merged into one ONNX Runtime call (dynamic batching), for "
        "models whose config.yaml sets no dynamic_batching.max_batch_size.",
    )
    image_max_queue_delay_ms: float = Field(
        default=2.0,
        ge=0,
        allow_inf_nan=False,
        description="Image models: longest the oldest queued image waits for its batch to fill, in ms "
        "(default for dynamic_batching.max_queue_delay_ms).",
    )
    image_adaptive_delay: bool = Field(
        default=True,
        description="Image models: wait max_queue_delay_ms only while other requests are in flight (or the "
        "last call merged several), so a lone client pays no batching delay; false always waits "
        "(default for dynamic_batching.adaptive_delay).",
    )
    image_max_queue_size: int = Field(
        default=256,
        ge=1,
        description="Image models: most images admitted and not yet running, per model; past it, Classify "
        "fails at once with RESOURCE_EXHAUSTED (default for dynamic_batching.max_queue_size).",
    )
    image_batch_calibration: bool = Field(
        default=True,
        description="Image models whose config.yaml sets no dynamic_batching.max_batch_size: at load, time "
        "batches of 1, 2, 4, ... up to image_max_batch_size and cap batches at the smallest size within 5% "
        "of the best time per image (on some CPUs and engines a batch costs more per image than a single "
        "call); false: always merge up to image_max_batch_size.",
    )
    image_backend: Backend = Field(
        default="onnxruntime",
        description="Image models: the engine that runs them, onnxruntime or openvino (needs "
        "attnserve-server[openvino]), for models whose config.yaml sets no backend. Text models always run "
        "on onnxruntime.",
    )
    image_precision: Precision = Field(
        default="bf16",
        description="Image models on openvino: bf16 (fast on CPUs with AVX-512 BF16 or AMX) or f32, for models "
        "whose config.yaml sets no precision. onnxruntime always computes in f32.",
    )
    model_control_mode: ControlMode = Field(
        default="none",
        description="none: load every model at start; explicit: load only --load-model models, and the "
        "repository load/unload RPCs work; poll: load every model and follow the repository's changes.",
    )
    load_model: tuple[str, ...] = Field(
        default=(),
        description="With --model-control-mode explicit, a model to load at start (repeat the flag for more).",
    )
    exit_on_error: bool = Field(
        default=True,
        description="Whether a model that fails to load at start stops the server (true) or is only reported "
        "while the other models serve (false).",
    )
    strict_readiness: bool = Field(
        default=True,
        description="Whether the server is ready only while every model it should serve is loaded (true), or "
        "as soon as startup is over (false).",
    )
    task_plugin: tuple[str, ...] = Field(
        default=(),
        description="A task of your own to serve beside the built-in ones, as module:attribute naming an "
        "attnserve_server.task.Task (repeat the flag for more); see docs/adding-a-task.md.",
    )
    repository_poll_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="With --model-control-mode poll, seconds between two scans of the model repository.",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain of the gRPC port; with --tls-key the port speaks TLS only. Re-read "
        "when the file changes, for new connections (no restart). See docs/security.md.",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key (unencrypted) of --tls-cert.")
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA certificate(s): clients must then present a certificate that one of them signed "
        "(mTLS). Needs --tls-cert; re-read with it.",
    )
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="A second port, plaintext, that serves only grpc.health.v1 (for probes that cannot present "
        "a client certificate or an API key), bound on --host; 0: none.",
    )
    api_key_file: Path | None = Field(
        default=None,
        description="YAML or JSON file of hashed API keys with their scopes and rate limits (`attnserve-server "
        "keys add` writes it). Every call but health then needs 'authorization: Bearer <key>'. Re-read when "
        "it changes.",
    )
    reflection: bool | None = Field(
        default=None,
        description="Serve gRPC server reflection. Default (none): on without --api-key-file, off with it.",
    )
    log_level: LogLevel = Field(
        default="INFO", description="Logging level. Prompts and request contents are logged only at DEBUG."
    )
    log_format: LogFormat = Field(default="text", description="Log line format: text, or json (one object per line).")
    metrics: bool = Field(default=True, description="Serve Prometheus metrics over HTTP at /metrics.")
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint, bound on --host (0 picks a free one).",
    )

    def batching_limits(self) -> BatchingLimits:
        """The continuous batching defaults for every text model."""
        return BatchingLimits(
            max_active_sequences=self.max_active_sequences,
            max_kv_cache_tokens=self.max_kv_cache_tokens,
            max_waiting_sequences=self.max_waiting_sequences,
            max_prefill_tokens_per_step=self.max_prefill_tokens_per_step,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC channel arguments of the server: message limits, and when connections close."""

        def ms(seconds: float) -> int:
            return int(seconds * 1000) if seconds > 0 else 2**31 - 1  # gRPC's "never"

        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),  # two servers on one port would split traffic silently
            ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout_s)),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_s)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            # Clients may ping as often as every 10 s (grpc's clients default to never) without a GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]

    def runtime_options(self) -> RuntimeOptions:
        """How every ONNX Runtime session is configured."""
        return RuntimeOptions(
            intra_op_threads=self.intra_op_threads,
            graph_optimization=self.graph_optimization,
            allow_spinning=self.allow_spinning,
        )

    def reflection_enabled(self) -> bool:
        """Whether to serve reflection: as set, else only while no API keys guard the port."""
        return self.reflection if self.reflection is not None else self.api_key_file is None

    @model_validator(mode="after")
    def _consistent_security(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        if self.health_port and self.health_port == self.port:
            raise ValueError(f"health_port must differ from port ({self.port})")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        # "debug" in a config file or ATTNSERVE_LOG_LEVEL means DEBUG, as it does for the flag.
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (passed as init kwargs) > environment > config file > defaults."""
        config = _config_path(init_settings, env_settings)
        if config is None:
            return init_settings, env_settings
        return init_settings, env_settings, _config_file_source(settings_cls, config)


def _config_path(init_settings: PydanticBaseSettingsSource, env_settings: PydanticBaseSettingsSource) -> Path | None:
    """The config file named by the ``config`` flag, else by ``ATTNSERVE_CONFIG``."""
    flags = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
    value = flags.get("config") or env_settings().get("config")
    return Path(value) if value else None


def _config_file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of setting names to values")
    if data and "config" in data:
        raise SettingsError(f"config file {path} cannot name another config file (remove its 'config' key)")
    return YamlConfigSettingsSource(settings_cls, yaml_file=path)


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field; unset flags leave the file/env/default value."""
    parser = argparse.ArgumentParser(
        prog="attnserve-server",
        description="Serve a model repository of ONNX models over gRPC. Every setting is a flag, an "
        "ATTNSERVE_<NAME> environment variable and a key of the --config YAML file; "
        "flags win over the environment, which wins over the config file, which wins over the defaults.",
        epilog="API keys: `attnserve-server keys add NAME --scopes infer --key-file PATH` (see `attnserve-server "
        "keys --help`).",
    )
    choices = {"log_level": (list(typing.get_args(LogLevel)), str.upper)}
    add_field_flags(parser, ServerSettings.model_fields, env_prefix=ENV_PREFIX, choices=choices)
    return parser


def load_settings(argv: Sequence[str] | None = None) -> ServerSettings:
    """Settings from the config file and the environment, with any flags in ``argv`` taking precedence.

    Raises pydantic's ValidationError for a bad value and SettingsError for a bad config file.
    """
    overrides = vars(build_parser().parse_args(argv))
    # Passing flags as init kwargs gives them priority over the other sources.
    return ServerSettings(**overrides)
