"""The model repository: find models on disk, validate their metadata, load them, track versions.

Layout (see docs/model-repository.md)::

    <root>/<name>/config.yaml            optional serving settings
    <root>/<name>/<version>/metadata.json the single source of truth for a version
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from attnserve_server.errors import (
    FailedPreconditionError,
    ModelLoadError,
    ModelNotFoundError,
    RepositoryError,
    UnavailableError,
)
from attnserve_server.runtime import RuntimeSession
from attnserve_server.text.generator import TextGenerator, TextModelSpec
from attnserve_server.text.params import GenerationDefaults
from attnserve_server.text.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
TEXT_GENERATION = "text-generation"


class _Strict(BaseModel):
    # Unknown keys are rejected so that a typo fails loudly at load time.
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputNames(_Strict):
    """ONNX input names of a text-generation model."""

    input_ids: str
    attention_mask: str
    position_ids: str


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
    defaults: DefaultsMetadata = DefaultsMetadata()


class ModelMetadata(_Strict):
    """``metadata.json``: written by attnserve-export, read here."""

    format_version: Literal[1]
    task: Literal["text-generation"]
    description: str = ""
    model_file: str
    text_generation: TextGenerationMetadata | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _task_section_present(self) -> ModelMetadata:
        if self.task == TEXT_GENERATION and self.text_generation is None:
            raise ValueError("task is text-generation but the text_generation section is missing")
        return self


class ModelConfig(_Strict):
    """``config.yaml``: serving settings that are not a property of the weights."""

    max_new_tokens_limit: PositiveInt | None = None


@dataclass
class ModelCounters:
    """Live counters since the server started, over all versions. Only touched from the event loop."""

    requests: int = 0
    tokens_generated: int = 0
    failures: int = 0


@dataclass
class ModelVersion:
    """One loaded version of a model."""

    version: str
    path: Path
    metadata: ModelMetadata
    generator: TextGenerator

    @property
    def text_generation(self) -> TextGenerationMetadata:
        """The text section (present, since text generation is the only task so far)."""
        assert self.metadata.text_generation is not None  # guaranteed by ModelMetadata's validator
        return self.metadata.text_generation


@dataclass
class Model:
    """A named model with its loaded versions (oldest first)."""

    name: str
    config: ModelConfig
    versions: dict[str, ModelVersion]
    default_version: str
    max_new_tokens_limit: int
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
        attention_mask_name=meta.inputs.attention_mask,
        position_ids_name=meta.inputs.position_ids,
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
    wanted_inputs = {spec.input_ids_name, spec.attention_mask_name, spec.position_ids_name}
    wanted_inputs.update(spec.past_key_names + spec.past_value_names)
    missing = sorted(wanted_inputs - set(session.input_names))
    if missing:
        raise ModelLoadError(name, f"model.onnx lacks inputs named in metadata.json: {', '.join(missing)}")
    missing = sorted(set(spec.output_names) - set(session.output_names))
    if missing:
        raise ModelLoadError(name, f"model.onnx lacks outputs named in metadata.json: {', '.join(missing)}")


def load_version(name: str, version_dir: Path, executor: Executor, *, intra_op_threads: int = 0) -> ModelVersion:
    """Load one version directory: metadata, tokenizer, ONNX session; check they agree."""
    metadata = read_metadata(name, version_dir)
    text = metadata.text_generation
    assert text is not None  # the only task so far, and the validator requires its section
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
    try:
        session = RuntimeSession(model_path, intra_op_threads=intra_op_threads)
    except RuntimeError as exc:
        raise ModelLoadError(name, str(exc)) from None
    _check_graph(name, spec, session)
    generator = TextGenerator(spec, session, tokenizer, executor)
    # A one-token forward pass catches shape mismatches now rather than on the first request.
    try:
        logits, present = generator.forward(
            np.zeros((1, 1), dtype=np.int64),
            np.ones((1, 1), dtype=np.int64),
            np.zeros((1, 1), dtype=np.int64),
            generator.empty_past(batch=1),
        )
    except Exception as exc:  # ORT's errors carry the useful detail in their message
        raise ModelLoadError(name, f"test run of model.onnx failed: {exc}") from None
    if logits.shape != (1, text.vocab_size):
        raise ModelLoadError(name, f"logits have shape {logits.shape[1:]}, metadata says vocab_size {text.vocab_size}")
    expected = (1, text.num_heads, 1, text.head_dim)
    if any(p.shape != expected for p in present):
        raise ModelLoadError(name, f"present tensors do not have the shape {expected} that metadata.json implies")
    return ModelVersion(version=version_dir.name, path=version_dir, metadata=metadata, generator=generator)


class ModelRepository:
    """The models being served, by name."""

    def __init__(self, root: Path, *, default_max_new_tokens_limit: int, intra_op_threads: int = 0) -> None:
        self.root = root
        self._default_limit = default_max_new_tokens_limit
        self._intra_op_threads = intra_op_threads
        self._models: dict[str, Model] = {}
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

    def load_model(self, model_dir: Path, executor: Executor) -> Model:
        """Load the latest version of one model (the highest positive integer directory)."""
        name = model_dir.name
        config = read_config(name, model_dir)
        versions = sorted(
            (int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
        )
        if not versions:
            raise ModelLoadError(name, f"no version directories (positive integers) in {model_dir}")
        latest = versions[-1][1]
        loaded = load_version(name, latest, executor, intra_op_threads=self._intra_op_threads)
        model = Model(
            name=name,
            config=config,
            versions={loaded.version: loaded},
            default_version=loaded.version,
            max_new_tokens_limit=config.max_new_tokens_limit or self._default_limit,
        )
        self._models[name] = model
        logger.info(
            "loaded model %s version %s (%s, context %d)",
            name,
            loaded.version,
            loaded.metadata.task,
            loaded.text_generation.context_length,
        )
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

    def models(self) -> list[Model]:
        """All loaded models, sorted by name."""
        return [self._models[n] for n in sorted(self._models)]
