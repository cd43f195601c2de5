"""``config.yaml``: the serving settings of a model, which are not a property of its weights.

Every key is optional; unset ones take the server-wide settings. Keys that only one task uses
(``dynamic_batching`` for image models, the continuous batching limits for text models) are
checked by that task's loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from attnserve_server.model_format.metadata import (
    MetadataError,
    Strict,
    check_inside,
    format_validation_error,
    read_text,
)

CONFIG_FILE = "config.yaml"


class LatestVersions(Strict):
    """Serve the ``num_versions`` highest versions."""

    num_versions: PositiveInt = 1


class AllVersions(Strict):
    """Serve every version in the model's directory."""


class SpecificVersions(Strict):
    """Serve exactly these versions."""

    versions: tuple[PositiveInt, ...] = Field(min_length=1)


class VersionPolicy(Strict):
    """Which versions are served: one of ``latest`` (the default, one version), ``all`` or ``specific``."""

    latest: LatestVersions | None = None
    all: AllVersions | None = None
    specific: SpecificVersions | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        if sum(choice is not None for choice in (self.latest, self.all, self.specific)) > 1:
            raise ValueError("give one of latest, all or specific")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of those on disk (ascending)."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific.versions]
        keep = self.latest.num_versions if self.latest is not None else 1
        return ordered[-keep:]


class DynamicBatchingConfig(Strict):
    """``dynamic_batching`` (image models): unset keys take the server's defaults."""

    max_batch_size: PositiveInt | None = None
    max_queue_delay_ms: NonNegativeFloat | None = Field(default=None, allow_inf_nan=False)
    max_queue_size: PositiveInt | None = None
    adaptive_delay: bool | None = None


class EmbeddingsLimits(Strict):
    """``embeddings``: caps of the Embed RPC for this model; unset keys take the defaults."""

    # Texts or images per Embed request (default 32).
    max_inputs: PositiveInt | None = None
    # Tokens per text (text models; default and ceiling: the model's context length).
    max_tokens_per_text: PositiveInt | None = None


class ExplainLimits(Strict):
    """``explain``: caps of the Explain RPC for this model; unset keys take the defaults."""

    # Tokens of the text (text models; default and ceiling: the model's context length, at most 256).
    max_tokens: PositiveInt | None = None
    # Maps per response: chosen layers x heads (default: all of them, at most 64).
    max_maps: PositiveInt | None = None
    # Encoder-decoder: tokens generated for the cross-attention maps (default 32, at most the target context).
    max_new_tokens: PositiveInt | None = None


class ModelConfig(Strict):
    """``config.yaml``."""

    max_new_tokens_limit: PositiveInt | None = None
    version_policy: VersionPolicy = VersionPolicy()
    dynamic_batching: DynamicBatchingConfig | None = None
    # Continuous batching limits (text models); unset ones take the server-wide settings.
    max_active_sequences: PositiveInt | None = None
    max_kv_cache_tokens: PositiveInt | None = None
    max_waiting_sequences: NonNegativeInt | None = None
    max_prefill_tokens_per_step: PositiveInt | None = None
    # Caps of the Embed RPC (any task with an embeddings graph).
    embeddings: EmbeddingsLimits | None = None
    # Caps of the Explain RPC (any task with an explain graph).
    explain: ExplainLimits | None = None
    # The engine (image models): unset ones take the server-wide image_backend / image_precision.
    backend: Literal["onnxruntime", "openvino"] | None = None
    precision: Literal["bf16", "f32"] | None = None
    # The load-time parity check against ONNX Runtime (models on another backend): the largest
    # max |Δlogit| / max(1, max |logit|) allowed; unset: the precision's default.
    parity_tolerance: PositiveFloat | None = Field(default=None, allow_inf_nan=False)


def read_config(model_dir: Path, *, root: Path | None = None) -> ModelConfig:
    """Read and validate the optional ``model_dir/config.yaml``; MetadataError says what is wrong.

    With ``root``, a file that resolves outside it is never read. The message never quotes the
    file: YAML's own errors show the offending line, which must not reach a remote client.
    """
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    check_inside(path, root, CONFIG_FILE)
    try:
        raw = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise MetadataError(f"cannot read {CONFIG_FILE}: {_yaml_problem(exc)}") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise MetadataError(f"invalid {CONFIG_FILE}: {format_validation_error(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What YAML found wrong and where, without the snippet of the file that its message quotes."""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
