"""The model repository: find models on disk, validate their metadata, load them, track versions.

Layout (see docs/model-repository.md)::

    <root>/<name>/config.yaml            optional serving settings
    <root>/<name>/<version>/metadata.json the single source of truth for a version
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from attnserve_server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    RepositoryError,
    UnavailableError,
)
from attnserve_server.onnx_files import check_external_data
from attnserve_server.runtime import DEFAULT_RUNTIME, RuntimeOptions, RuntimeSession, Shape
from attnserve_server.text.continuous import BatchingLimits, ContinuousBatcher, SchedulerObserver
from attnserve_server.text.generator import KVCacheLayout, TextGenerator, TextModelSpec
from attnserve_server.text.params import GenerationDefaults
from attnserve_server.text.tokenizer import TextTokenizer
from attnserve_server.vision.batcher import BatchingConfig, BatchObserver, BatchStats
from attnserve_server.vision.classifier import ImageClassifier, ImageModelSpec
from attnserve_server.vision.preprocess import InputSpec, ResampleName, ResizePolicy

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TEXT_GENERATION = "text-generation"
IMAGE_CLASSIFICATION = "image-classification"


class _Strict(BaseModel):
    # Unknown keys are rejected so that a typo fails loudly at load time.
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputNames(_Strict):
    """ONNX input names of a text-generation model (which ones depend on ``kv_cache_layout``)."""

    input_ids: str
    position_ids: str
    attention_mask: str | None = None  # kv_cache_layout "concat"
    seqlens_k: str | None = None  # kv_cache_layout "shared_buffer"
    total_sequence_length: str | None = None  # kv_cache_layout "shared_buffer"


class OutputNames(_Strict):
    """ONNX output names of a text-generation model."""

    logits: str


class DefaultsMetadata(_Strict):
    """Defaults that unset request fields take."""

    max_new_tokens: PositiveInt = 64
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_k: NonNegativeInt = 0
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class TextGenerationMetadata(_Strict):
    """The ``text_generation`` section of ``metadata.json``."""

    tokenizer_file: str
    context_length: PositiveInt
    vocab_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    head_dim: PositiveInt
    inputs: InputNames
    outputs: OutputNames
    past_key_template: str = Field(pattern=r"\{layer\}")
    past_value_template: str = Field(pattern=r"\{layer\}")
    present_key_template: str = Field(pattern=r"\{layer\}")
    present_value_template: str = Field(pattern=r"\{layer\}")
    eos_token: str | None = None
    eos_token_id: NonNegativeInt | None = None
    pad_token_id: NonNegativeInt
    kv_cache_layout: KVCacheLayout = "concat"
    defaults: DefaultsMetadata = DefaultsMetadata()

    @model_validator(mode="after")
    def _inputs_of_layout(self) -> TextGenerationMetadata:
        needed = ("attention_mask",) if self.kv_cache_layout == "concat" else ("seqlens_k", "total_sequence_length")
        missing = [name for name in needed if getattr(self.inputs, name) is None]
        if missing:
            raise ValueError(f"kv_cache_layout {self.kv_cache_layout} needs inputs.{', inputs.'.join(missing)}")
        return self


class ImageClassificationMetadata(_Strict):
    """The ``image_classification`` section of ``metadata.json``."""

    labels_file: str
    num_classes: PositiveInt
    input_name: str
    output_name: str
    channels: Literal[1, 3]
    height: PositiveInt
    width: PositiveInt
    resample: ResampleName
    resize_policy: ResizePolicy
    crop_ratio: PositiveFloat | None = Field(default=None, le=1)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _consistent(self) -> ImageClassificationMetadata:
        if self.resize_policy == "resize_center_crop" and self.crop_ratio is None:
            raise ValueError("resize_policy resize_center_crop needs crop_ratio")
        if self.resize_policy == "resize" and self.crop_ratio is not None:
            raise ValueError("crop_ratio is only meaningful with resize_policy resize_center_crop")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} needs one value per channel ({self.channels})")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self

    def input_spec(self) -> InputSpec:
        return InputSpec(
            channels=self.channels,
            height=self.height,
            width=self.width,
            resample=self.resample,
            resize_policy=self.resize_policy,
            crop_ratio=self.crop_ratio,
            mean=self.mean,
            std=self.std,
        )


class ModelMetadata(_Strict):
    """``metadata.json``: written by attnserve-export, read here."""

    format_version: Literal[1]
    task: Literal["text-generation", "image-classification"]
    description: str = ""
    model_file: str
    text_generation: TextGenerationMetadata | None = None
    image_classification: ImageClassificationMetadata | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _task_section_present(self) -> ModelMetadata:
        # Exactly the section of the task: the other one would be silently ignored.
        sections = {TEXT_GENERATION: self.text_generation, IMAGE_CLASSIFICATION: self.image_classification}
        for task, section in sections.items():
            key = task.replace("-", "_")
            if task == self.task and section is None:
                raise ValueError(f"task is {task} but the {key} section is missing")
            if task != self.task and section is not None:
                raise ValueError(f"task is {self.task} but metadata has a {key} section")
        return self


class LatestVersions(_Strict):
    """Serve the ``num_versions`` highest versions."""

    num_versions: PositiveInt = 1


class AllVersions(_Strict):
    """Serve every version in the model's directory."""


class SpecificVersions(_Strict):
    """Serve exactly these versions."""

    versions: tuple[PositiveInt, ...] = Field(min_length=1)


class VersionPolicy(_Strict):
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


class DynamicBatchingConfig(_Strict):
    """``dynamic_batching`` in ``config.yaml`` (image models): unset keys take the server's defaults."""

    max_batch_size: PositiveInt | None = None
    max_queue_delay_ms: NonNegativeFloat | None = Field(default=None, allow_inf_nan=False)
    max_queue_size: PositiveInt | None = None
    adaptive_delay: bool | None = None

    def resolve(self, defaults: BatchingConfig) -> BatchingConfig:
        """These settings over the server-wide ``defaults``."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size or defaults.max_batch_size,
            max_queue_delay_s=defaults.max_queue_delay_s
            if self.max_queue_delay_ms is None
            else self.max_queue_delay_ms / 1000,
            max_queue_size=self.max_queue_size or defaults.max_queue_size,
            adaptive_delay=defaults.adaptive_delay if self.adaptive_delay is None else self.adaptive_delay,
        )


class ModelConfig(_Strict):
    """``config.yaml``: serving settings that are not a property of the weights."""

    max_new_tokens_limit: PositiveInt | None = None
    version_policy: VersionPolicy = VersionPolicy()
    dynamic_batching: DynamicBatchingConfig | None = None
    # Continuous batching limits (text models); unset ones take the server-wide settings.
    max_active_sequences: PositiveInt | None = None
    max_kv_cache_tokens: PositiveInt | None = None
    max_waiting_sequences: NonNegativeInt | None = None
    max_prefill_tokens_per_step: PositiveInt | None = None

    def batching_limits(self, defaults: BatchingLimits) -> BatchingLimits:
        """The server-wide limits with this model's overrides."""
        names = ("max_active_sequences", "max_kv_cache_tokens", "max_waiting_sequences", "max_prefill_tokens_per_step")
        overrides = {name: value for name in names if (value := getattr(self, name)) is not None}
        return replace(defaults, **overrides)


@dataclass
class ModelCounters:
    """Live counters since the server started, over all versions. Only touched from the event loop."""

    requests: int = 0
    tokens_generated: int = 0
    failures: int = 0
    # Images classified (not reported over gRPC: ModelCounters has no field for it).
    images: int = 0


@dataclass
class ModelVersion:
    """One loaded version of a model: a text generator or an image classifier, by its task."""

    version: str
    path: Path
    metadata: ModelMetadata
    generator: TextGenerator | None = None
    classifier: ImageClassifier | None = None
    batcher: ContinuousBatcher | None = None

    @property
    def text_generation(self) -> TextGenerationMetadata:
        """The text section; only call it on a text-generation version."""
        if self.metadata.text_generation is None:
            raise TypeError(f"version {self.version} is a {self.metadata.task} model")
        return self.metadata.text_generation

    @property
    def image_classification(self) -> ImageClassificationMetadata:
        """The image section; only call it on an image-classification version."""
        if self.metadata.image_classification is None:
            raise TypeError(f"version {self.version} is a {self.metadata.task} model")
        return self.metadata.image_classification

    @property
    def text_generator(self) -> TextGenerator:
        if self.generator is None:
            raise TypeError(f"version {self.version} is a {self.metadata.task} model")
        return self.generator

    @property
    def text_batcher(self) -> ContinuousBatcher:
        if self.batcher is None:
            raise TypeError(f"version {self.version} is a {self.metadata.task} model")
        return self.batcher

    @property
    def image_classifier(self) -> ImageClassifier:
        if self.classifier is None:
            raise TypeError(f"version {self.version} is a {self.metadata.task} model")
        return self.classifier


@dataclass
class Model:
    """A named model with its loaded versions (oldest first).

    Never changed once installed in the repository: a reload installs a new ``Model`` in its
    place, so a request that already holds a version finishes on it.
    """

    name: str
    config: ModelConfig
    versions: dict[str, ModelVersion]
    default_version: str
    max_new_tokens_limit: int
    max_images_per_request: int = 64
    counters: ModelCounters = field(default_factory=ModelCounters)

    @property
    def task(self) -> str:
        """The task of the default version."""
        return self.versions[self.default_version].metadata.task

    def version(self, version: str = "") -> ModelVersion:
        """The named version, or the default one for ``""``."""
        found = self.versions.get(version or self.default_version)
        if found is None:
            loaded = ", ".join(self.versions)
            raise ModelNotFoundError(f"model {self.name!r} has no loaded version {version!r} (loaded: {loaded})")
        return found

    def batch_stats(self) -> BatchStats:
        """What the batchers of all loaded versions have merged (zeros for text models)."""
        total = BatchStats()
        for version in self.versions.values():
            if version.classifier is not None:
                stats = version.classifier.batcher.stats
                total.batches += stats.batches
                total.items += stats.items
                total.dropped += stats.dropped
        return total

    def defaults(self) -> GenerationDefaults:
        """Request defaults of the default version, with max_new_tokens capped by the limit."""
        d = self.versions[self.default_version].text_generation.defaults
        return GenerationDefaults(
            max_new_tokens=min(d.max_new_tokens, self.max_new_tokens_limit),
            temperature=d.temperature,
            top_k=d.top_k,
            top_p=d.top_p,
            repetition_penalty=d.repetition_penalty,
        )


READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class ModelState:
    """A model's load state (``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE``) and why."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _inside(version_dir: Path, relative: str, what: str, name: str) -> Path:
    path = (version_dir / relative).resolve()
    if not path.is_relative_to(version_dir.resolve()):
        raise ModelLoadError(name, f"{what} {relative!r} points outside the version directory")
    if not path.is_file():
        raise ModelLoadError(name, f"{what} {relative!r} not found in {version_dir}")
    return path


def read_metadata(name: str, version_dir: Path) -> ModelMetadata:
    """Parse and validate ``metadata.json``; raise ModelLoadError naming the model and the problem."""
    path = version_dir / "metadata.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(name, f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(name, f"cannot read {path}: {exc}") from None
    try:
        return ModelMetadata.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(name, f"invalid {path}: {_format_validation_error(exc)}") from None


def read_config(name: str, model_dir: Path) -> ModelConfig:
    """Parse and validate the optional ``config.yaml``."""
    path = model_dir / "config.yaml"
    if not path.exists():
        return ModelConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(name, f"cannot read {path}: {exc}") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(name, f"invalid {path}: {_format_validation_error(exc)}") from None


def _spec(name: str, meta: TextGenerationMetadata, tokenizer: TextTokenizer) -> TextModelSpec:
    eos_id = meta.eos_token_id
    if eos_id is None and meta.eos_token is not None:
        eos_id = tokenizer.token_to_id(meta.eos_token)
        if eos_id is None:
            raise ModelLoadError(name, f"eos_token {meta.eos_token!r} is not in the tokenizer's vocabulary")
    for what, token_id in (("eos_token_id", eos_id), ("pad_token_id", meta.pad_token_id)):
        if token_id is not None and token_id >= meta.vocab_size:
            raise ModelLoadError(name, f"{what} {token_id} is outside the vocabulary (vocab_size {meta.vocab_size})")
    layers = range(meta.num_layers)
    return TextModelSpec(
        context_length=meta.context_length,
        vocab_size=meta.vocab_size,
        num_layers=meta.num_layers,
        num_heads=meta.num_heads,
        head_dim=meta.head_dim,
        input_ids_name=meta.inputs.input_ids,
        attention_mask_name=meta.inputs.attention_mask or "",
        position_ids_name=meta.inputs.position_ids,
        kv_cache_layout=meta.kv_cache_layout,
        seqlens_k_name=meta.inputs.seqlens_k or "",
        total_sequence_length_name=meta.inputs.total_sequence_length or "",
        logits_name=meta.outputs.logits,
        past_key_names=tuple(meta.past_key_template.format(layer=i) for i in layers),
        past_value_names=tuple(meta.past_value_template.format(layer=i) for i in layers),
        present_key_names=tuple(meta.present_key_template.format(layer=i) for i in layers),
        present_value_names=tuple(meta.present_value_template.format(layer=i) for i in layers),
        eos_token_id=eos_id,
        pad_token_id=meta.pad_token_id,
    )


def _check_graph(name: str, spec: TextModelSpec, session: RuntimeSession) -> None:
    """The ONNX graph must have the tensors the metadata promises, and logits of the stated width."""
    wanted_inputs = {spec.input_ids_name, spec.position_ids_name}
    if spec.kv_cache_layout == "concat":
        wanted_inputs.add(spec.attention_mask_name)
    else:
        wanted_inputs.update((spec.seqlens_k_name, spec.total_sequence_length_name))
    wanted_inputs.update(spec.past_key_names + spec.past_value_names)
    missing = sorted(wanted_inputs - set(session.input_names))
    if missing:
        raise ModelLoadError(name, f"model.onnx lacks inputs named in metadata.json: {', '.join(missing)}")
    missing = sorted(set(spec.output_names) - set(session.output_names))
    if missing:
        raise ModelLoadError(name, f"model.onnx lacks outputs named in metadata.json: {', '.join(missing)}")


def _session(name: str, model_path: Path, runtime: RuntimeOptions) -> RuntimeSession:
    try:
        check_external_data(model_path)
    except ValueError as exc:
        raise ModelLoadError(name, str(exc)) from None
    try:
        return RuntimeSession(model_path, runtime)
    except RuntimeError as exc:
        raise ModelLoadError(name, str(exc)) from None


def read_labels(name: str, path: Path) -> tuple[str, ...]:
    """``labels.json``: a JSON list of class names, by output index."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(name, f"cannot read {path}: {exc}") from None
    if not isinstance(raw, list) or not all(isinstance(label, str) for label in raw):
        raise ModelLoadError(name, f"{path} must hold a JSON list of strings (class names by output index)")
    return tuple(raw)


def _fixed(dim: int | str | None) -> int | None:
    return dim if isinstance(dim, int) else None


def _check_image_graph(name: str, meta: ImageClassificationMetadata, session: RuntimeSession) -> None:
    """The graph must take float32 (batch, C, H, W) and give float32 (batch, num_classes) as metadata says."""
    if meta.input_name not in session.input_names:
        raise ModelLoadError(
            name, f"model.onnx has no input {meta.input_name!r} (it has {', '.join(session.input_names)})"
        )
    if meta.output_name not in session.output_names:
        raise ModelLoadError(
            name, f"model.onnx has no output {meta.output_name!r} (it has {', '.join(session.output_names)})"
        )
    extra = sorted(set(session.input_names) - {meta.input_name})
    if extra:
        raise ModelLoadError(name, f"model.onnx has inputs metadata.json does not describe: {', '.join(extra)}")
    for kind, tensor, dtype, shape, expected in (
        (
            "input",
            meta.input_name,
            session.input_types[meta.input_name],
            session.input_shapes[meta.input_name],
            (None, meta.channels, meta.height, meta.width),
        ),
        (
            "output",
            meta.output_name,
            session.output_types[meta.output_name],
            session.output_shapes[meta.output_name],
            (None, meta.num_classes),
        ),
    ):
        if dtype != "tensor(float)":
            raise ModelLoadError(name, f"{kind} {tensor!r} is {dtype}, expected tensor(float) (float32)")
        mismatch = len(shape) != len(expected) or any(
            want is not None and _fixed(got) is not None and got != want
            for got, want in zip(shape, expected, strict=True)
        )
        if mismatch:
            raise ModelLoadError(
                name, f"{kind} {tensor!r} has shape {_show(shape)}, metadata.json implies {_show(expected)}"
            )
    if _fixed(session.input_shapes[meta.input_name][0]) is not None:
        raise ModelLoadError(name, f"input {meta.input_name!r} has a fixed batch size; export it with a dynamic batch")


def _show(shape: Shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


def _load_image_version(
    name: str,
    version_dir: Path,
    metadata: ModelMetadata,
    *,
    runtime: RuntimeOptions,
    batching: BatchingConfig,
    observer: BatchObserver | None,
) -> ModelVersion:
    meta = metadata.image_classification
    assert meta is not None  # guaranteed by ModelMetadata's validator
    model_path = _inside(version_dir, metadata.model_file, "model_file", name)
    labels = read_labels(name, _inside(version_dir, meta.labels_file, "labels_file", name))
    if len(labels) != meta.num_classes:
        raise ModelLoadError(name, f"{meta.labels_file} has {len(labels)} labels but num_classes is {meta.num_classes}")
    session = _session(name, model_path, runtime)
    _check_image_graph(name, meta, session)
    spec = ImageModelSpec(
        input_name=meta.input_name, output_name=meta.output_name, labels=labels, input=meta.input_spec()
    )
    classifier = ImageClassifier(spec, session, name=name, batching=batching, observer=observer)
    # A batch of two catches a fixed batch size or a shape mismatch now rather than on the first request.
    try:
        logits = classifier.forward(np.zeros((2, meta.channels, meta.height, meta.width), dtype=np.float32))
    except Exception as exc:  # ORT's errors carry the useful detail in their message
        raise ModelLoadError(name, f"test run of model.onnx failed: {exc}") from None
    if logits.shape != (2, meta.num_classes):
        raise ModelLoadError(
            name, f"logits of a batch of 2 have shape {logits.shape}, metadata implies (2, {meta.num_classes})"
        )
    return ModelVersion(version=version_dir.name, path=version_dir, metadata=metadata, classifier=classifier)


def _test_run(name: str, generator: TextGenerator) -> None:
    """A one-token forward pass catches shape mismatches now rather than on the first request."""
    spec = generator.spec
    try:
        if spec.kv_cache_layout == "shared_buffer":
            logits = generator.new_kv_cache(slots=1).prefill(0, [0])[None, :]
            present: list[np.ndarray] = []  # written in place, nothing comes back
        else:
            logits, present = generator.forward(
                np.zeros((1, 1), dtype=np.int64),
                np.ones((1, 1), dtype=np.int64),
                np.zeros((1, 1), dtype=np.int64),
                generator.empty_past(batch=1),
            )
    except Exception as exc:  # ORT's errors carry the useful detail in their message
        raise ModelLoadError(name, f"test run of model.onnx failed: {exc}") from None
    if logits.shape != (1, spec.vocab_size):
        raise ModelLoadError(name, f"logits have shape {logits.shape[1:]}, metadata says vocab_size {spec.vocab_size}")
    expected = (1, spec.num_heads, 1, spec.head_dim)
    if any(p.shape != expected for p in present):
        raise ModelLoadError(name, f"present tensors do not have the shape {expected} that metadata.json implies")


def load_version(
    name: str,
    version_dir: Path,
    executor: Executor,
    *,
    runtime: RuntimeOptions = DEFAULT_RUNTIME,
    batching: BatchingConfig | None = None,
    observer: BatchObserver | None = None,
    text_batching: BatchingLimits | None = None,
    text_observer: Callable[[str], SchedulerObserver] | None = None,
) -> ModelVersion:
    """Load one version directory: metadata, tokenizer or labels, ONNX session; check they agree.

    ``batching`` configures an image model's dynamic batcher (default: :class:`BatchingConfig`), and
    ``observer`` hears of each of its calls; ``text_batching`` limits a text model's continuous batcher.
    """
    metadata = read_metadata(name, version_dir)
    if metadata.task == IMAGE_CLASSIFICATION:
        return _load_image_version(
            name, version_dir, metadata, runtime=runtime, batching=batching or BatchingConfig(), observer=observer
        )
    text = metadata.text_generation
    assert text is not None  # guaranteed by ModelMetadata's validator
    model_path = _inside(version_dir, metadata.model_file, "model_file", name)
    tokenizer_path = _inside(version_dir, text.tokenizer_file, "tokenizer_file", name)
    try:
        tokenizer = TextTokenizer.from_file(tokenizer_path)
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ModelLoadError(name, f"cannot load tokenizer {tokenizer_path.name}: {exc}") from None
    if tokenizer.vocab_size > text.vocab_size:
        raise ModelLoadError(
            name, f"tokenizer has {tokenizer.vocab_size} tokens but metadata vocab_size is {text.vocab_size}"
        )
    spec = _spec(name, text, tokenizer)
    session = _session(name, model_path, runtime)
    _check_graph(name, spec, session)
    generator = TextGenerator(spec, session, tokenizer, executor)
    _test_run(name, generator)
    batcher = ContinuousBatcher(
        generator,
        text_batching or BatchingLimits(),
        observer=text_observer(name) if text_observer is not None else None,
    )
    return ModelVersion(
        version=version_dir.name, path=version_dir, metadata=metadata, generator=generator, batcher=batcher
    )


class ModelRepository:
    """The models being served, by name."""

    def __init__(
        self,
        root: Path,
        *,
        default_max_new_tokens_limit: int,
        runtime: RuntimeOptions = DEFAULT_RUNTIME,
        max_images_per_request: int = 64,
        batching: BatchingConfig | None = None,
        batch_observer: BatchObserver | None = None,
        text_batching: BatchingLimits | None = None,
        text_observer: Callable[[str], SchedulerObserver] | None = None,
    ) -> None:
        self.root = root
        self._text_observer = text_observer
        self._batching = batching or BatchingConfig()
        self._batch_observer = batch_observer
        self._text_batching = text_batching or BatchingLimits()
        self._default_limit = default_max_new_tokens_limit
        self._max_images = max_images_per_request
        self._runtime = runtime
        self._models: dict[str, Model] = {}
        self._states: dict[str, ModelState] = {}
        # Counters outlive reloads and unloads: a reloaded model keeps counting where it was.
        self._counters: dict[str, ModelCounters] = {}
        # False while models are loading: an unknown name then means "not yet", not "no such model".
        self.ready = False

    def discover(self) -> list[Path]:
        """Model directories under the root, sorted by name."""
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a directory")
        found = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue
            if not MODEL_NAME.match(path.name):
                raise RepositoryError(
                    f"{path}: model names may only use letters, digits, '_', '.' and '-' (rename the directory)"
                )
            found.append(path)
        return found

    def model_dir(self, name: str) -> Path:
        """The directory of a model named by a client: never outside the repository, never through a link."""
        if not MODEL_NAME.match(name) or name in (".", ".."):
            raise InvalidArgumentError(
                f"invalid model name {name!r}: use letters, digits, '_', '.' and '-' (no path separators, "
                "no leading '.')"
            )
        path = self.root / name
        if path.is_symlink():
            raise InvalidArgumentError(f"model {name!r} is a link; links are not loaded on request")
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidArgumentError(f"model {name!r} is outside the model repository")
        if not path.is_dir():
            raise ModelNotFoundError(f"no model directory {name!r} in the model repository")
        return path

    def build_model(self, model_dir: Path, executor: Executor) -> Model:
        """Load the versions that the model's version policy selects (blocking); install nothing."""
        name = model_dir.name
        config = read_config(name, model_dir)
        on_disk = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
        if not on_disk:
            raise ModelLoadError(name, f"no version directories (positive integers) in {model_dir}")
        selected = config.version_policy.select(on_disk)
        if not selected:
            found = ", ".join(map(str, sorted(on_disk)))
            raise ModelLoadError(name, f"the version policy selects none of the versions on disk ({found})")
        batching = self._batching
        if config.dynamic_batching is not None:
            batching = config.dynamic_batching.resolve(batching)
        versions = {}
        for number in selected:
            version_dir = model_dir / str(number)
            if not version_dir.resolve().is_relative_to(model_dir.resolve()):
                raise ModelLoadError(name, f"version {number} is a link that points outside the model directory")
            loaded = load_version(
                name,
                version_dir,
                executor,
                runtime=self._runtime,
                batching=batching,
                observer=self._batch_observer,
                text_batching=config.batching_limits(self._text_batching),
                text_observer=self._text_observer,
            )
            versions[loaded.version] = loaded
            if loaded.metadata.image_classification is not None:
                ic = loaded.metadata.image_classification
                shape = f"input {ic.channels}x{ic.height}x{ic.width}, {ic.num_classes} classes"
            else:
                shape = f"context {loaded.text_generation.context_length}"
            logger.info("loaded model %s version %s (%s, %s)", name, loaded.version, loaded.metadata.task, shape)
        tasks = {v.metadata.task for v in versions.values()}
        if len(tasks) > 1:
            raise ModelLoadError(name, f"its versions mix tasks ({', '.join(sorted(tasks))}); one model, one task")
        if config.dynamic_batching is not None and tasks != {IMAGE_CLASSIFICATION}:
            raise ModelLoadError(
                name, "config.yaml sets dynamic_batching, which only applies to image-classification models"
            )
        return Model(
            name=name,
            config=config,
            versions=versions,
            default_version=str(selected[-1]),
            max_new_tokens_limit=config.max_new_tokens_limit or self._default_limit,
            max_images_per_request=self._max_images,
            counters=self._counters.setdefault(name, ModelCounters()),
        )

    def install(self, model: Model) -> None:
        """Serve ``model`` from now on, replacing any loaded model of that name (requests on it finish)."""
        self._models[model.name] = model
        self._states[model.name] = ModelState(READY)

    def remove(self, name: str, reason: str = "unloaded") -> None:
        """Stop serving a model; requests already running on it finish."""
        self._models.pop(name, None)
        self._states[name] = ModelState(UNAVAILABLE, reason)

    def set_state(self, name: str, state: str, reason: str = "") -> None:
        self._states[name] = ModelState(state, reason)

    def state(self, name: str) -> ModelState:
        """The load state of a model (UNAVAILABLE with an empty reason if never loaded)."""
        return self._states.get(name, ModelState(UNAVAILABLE))

    def index(self) -> list[IndexEntry]:
        """Every model on disk or known to the server: one entry per loaded version, else one with its state."""
        names = set(self._states) | set(self._models)
        with contextlib.suppress(RepositoryError):
            names |= {p.name for p in self.discover()}
        entries = []
        for name in sorted(names):
            model = self._models.get(name)
            state = self.state(name)
            if model is not None:
                entries += [IndexEntry(name, v, state.state, state.reason) for v in model.versions]
            else:
                entries.append(IndexEntry(name, "", state.state if name in self._states else "", state.reason))
        return entries

    def load_model(self, model_dir: Path, executor: Executor) -> Model:
        """Load the versions of one model that its version policy selects (by default the highest) and serve it."""
        model = self.build_model(model_dir, executor)
        self.install(model)
        return model

    def get(self, name: str) -> Model:
        """A loaded model by name; NOT_FOUND otherwise."""
        model = self._models.get(name)
        if model is None and not self.ready:
            raise UnavailableError("the server is still loading its models; retry shortly")
        if model is None:
            known = ", ".join(self._models) or "none"
            raise ModelNotFoundError(f"no model named {name!r} (loaded models: {known})")
        return model

    def get_text_model(self, name: str) -> Model:
        """A loaded text-generation model by name."""
        model = self.get(name)
        if model.task != TEXT_GENERATION:
            raise FailedPreconditionError(f"model {name!r} is a {model.task} model, not text-generation")
        return model

    def get_image_model(self, name: str) -> Model:
        """A loaded image-classification model by name."""
        model = self.get(name)
        if model.task != IMAGE_CLASSIFICATION:
            raise FailedPreconditionError(f"model {name!r} is a {model.task} model, not image-classification")
        return model

    def models(self) -> list[Model]:
        """All loaded models, sorted by name."""
        return [self._models[n] for n in sorted(self._models)]

    def close(self) -> None:
        """Stop the models' batchers and decode pools (after the server has drained)."""
        for model in self._models.values():
            for version in model.versions.values():
                if version.classifier is not None:
                    version.classifier.close()
                if version.batcher is not None:
                    version.batcher.close()
