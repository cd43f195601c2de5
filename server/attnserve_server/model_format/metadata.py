"""``metadata.json``: the one source of truth of a model version, written by the exporter.

Layout::

    {"format_version": 1, "task": "text-generation", "description": "...", "model_file": "model.onnx",
     "text_generation": {...the task's section...}, "provenance": {...}}

The section's key is the task's name with ``-`` replaced by ``_``. Which sections exist is the
task table's business (``attnserve_server.task_table``), so this module takes them as an argument.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION: Literal[1] = 1
METADATA_FILE = "metadata.json"


class MetadataError(ValueError):
    """A metadata or config file is missing, unreadable or invalid; the message says what to fix."""


class Strict(BaseModel):
    """Base of every schema: unknown keys are rejected, so that a typo fails loudly at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSection(Strict):
    """Base of a task's metadata section; ``TASK`` names the task it belongs to."""

    TASK: ClassVar[str] = ""

    @classmethod
    def key(cls) -> str:
        """The section's key in ``metadata.json``."""
        return section_key(cls.TASK)


def section_key(task: str) -> str:
    return task.replace("-", "_")


class ModelMetadata(Strict):
    """A parsed ``metadata.json``: the envelope and the task's typed section."""

    format_version: Literal[1] = FORMAT_VERSION
    task: str
    description: str = ""
    model_file: str
    section: TaskSection
    provenance: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls, section: TaskSection, *, model_file: str, description: str = "", provenance: dict[str, Any] | None = None
    ) -> ModelMetadata:
        """Metadata around ``section`` (the task follows from the section's class)."""
        return cls(
            task=type(section).TASK,
            section=section,
            model_file=model_file,
            description=description,
            provenance=provenance or {},
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object, with the section under its task's key."""
        return {
            "format_version": self.format_version,
            "task": self.task,
            "description": self.description,
            "model_file": self.model_file,
            section_key(self.task): self.section.model_dump(mode="json", exclude_none=True),
            "provenance": self.provenance,
        }

    def replace(self, **changes: Any) -> ModelMetadata:
        """A copy with some envelope fields changed (the section stays as it is)."""
        return self.model_copy(update=changes)


class _Envelope(Strict):
    format_version: Literal[1]
    task: str
    description: str = ""
    model_file: str
    provenance: dict[str, Any] = Field(default_factory=dict)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """``where: what`` for each problem, ``;``-separated, with locations under ``prefix``."""
    parts = []
    for err in exc.errors():
        where = ".".join([prefix, *(str(p) for p in err["loc"])] if prefix else [str(p) for p in err["loc"]])
        parts.append(f"{where or '(top level)'}: {err['msg']}")
    return "; ".join(parts)


def parse_metadata(raw: object, sections: Mapping[str, type[TaskSection]]) -> ModelMetadata:
    """Validate a decoded ``metadata.json`` against the envelope and the section of its task."""
    if not isinstance(raw, dict):
        raise MetadataError("must hold a JSON object")
    task = raw.get("task")
    section_type = sections.get(task) if isinstance(task, str) else None
    if section_type is None:
        known = ", ".join(sorted(sections))
        raise MetadataError(f"task: unknown task {task!r} (this server serves: {known})")
    key = section_key(task)  # type: ignore[arg-type]  # a str: checked above
    for other in sections:
        if other != task and section_key(other) in raw:
            raise MetadataError(f"task is {task} but metadata has a {section_key(other)} section")
    if key not in raw:
        raise MetadataError(f"task is {task} but the {key} section is missing")
    envelope_fields = {k: v for k, v in raw.items() if k != key}
    try:
        envelope = _Envelope.model_validate(envelope_fields)
    except ValidationError as exc:
        raise MetadataError(format_validation_error(exc)) from None
    try:
        section = section_type.model_validate(raw[key])
    except ValidationError as exc:
        raise MetadataError(format_validation_error(exc, key)) from None
    return ModelMetadata(section=section, **envelope.model_dump())


def check_inside(path: Path, root: Path | None, what: str) -> None:
    """Refuse ``path`` if it resolves outside ``root`` (links inside the root are fine: Kubernetes
    ConfigMap mounts are made of them)."""
    if root is not None and not path.resolve().is_relative_to(root.resolve()):
        raise MetadataError(f"{what} is a link that points outside the model repository")


def read_text(path: Path) -> str:
    """A UTF-8 file's text; MetadataError names the file and why (never its server path)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MetadataError(f"cannot read {path.name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MetadataError(f"cannot read {path.name}: not UTF-8") from None


def read_metadata(
    version_dir: Path, sections: Mapping[str, type[TaskSection]], *, root: Path | None = None
) -> ModelMetadata:
    """Read and validate ``version_dir/metadata.json``; MetadataError says what is wrong (without the path).

    With ``root``, a file that resolves outside it is never read.
    """
    path = version_dir / METADATA_FILE
    check_inside(path, root, METADATA_FILE)
    if not path.exists():
        raise MetadataError(f"{METADATA_FILE} is missing")
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise MetadataError(f"cannot read {METADATA_FILE}: {exc}") from None
    try:
        return parse_metadata(raw, sections)
    except MetadataError as exc:
        raise MetadataError(f"invalid {METADATA_FILE}: {exc}") from None


def write_metadata(version_dir: Path, metadata: ModelMetadata) -> Path:
    """Write ``version_dir/metadata.json`` (the exporter's only way to write one)."""
    path = version_dir / METADATA_FILE
    path.write_text(json.dumps(metadata.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    return path
