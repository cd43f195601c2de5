"""The model registry: finds models on disk, loads them through their task's row, tracks versions and states.

Layout (see docs/model-repository.md)::

    <root>/<name>/config.yaml            optional serving settings
    <root>/<name>/<version>/metadata.json the single source of truth for a version

The registry does not know any task: it reads ``metadata.json`` against the sections of the
task table, and the row of the version's task loads its engine.
"""

from __future__ import annotations

import contextlib
import logging
import re
from concurrent.futures import Executor
from pathlib import Path

from attnserve_server.errors import (
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    RepositoryError,
    UnavailableError,
    shown,
)
from attnserve_server.loaded import (
    READY,
    UNAVAILABLE,
    IndexEntry,
    Model,
    ModelCounters,
    ModelState,
    ModelVersion,
)
from attnserve_server.metrics import ServerMetrics
from attnserve_server.model_format.config import ModelConfig, read_config
from attnserve_server.model_format.metadata import MetadataError, read_metadata
from attnserve_server.settings import ServerSettings
from attnserve_server.task import LoadContext
from attnserve_server.task_table import TaskTable

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A directory name's limit on Linux (NAME_MAX): the names MODEL_NAME allows are ASCII, one byte each.
MAX_MODEL_NAME_CHARS = 255


class ModelRepository:
    """The models being served, by name."""

    def __init__(
        self,
        root: Path,
        *,
        settings: ServerSettings | None = None,
        tasks: TaskTable | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.root = root
        self.settings = settings if settings is not None else ServerSettings(model_repository=root)
        self.tasks = tasks if tasks is not None else TaskTable()
        self._metrics = metrics
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
                f"invalid model name {shown(name)}: use letters, digits, '_', '.' and '-' (no path separators, "
                "no leading '.')"
            )
        if len(name) > MAX_MODEL_NAME_CHARS:  # no directory can be named that: the OS refuses to look
            raise InvalidArgumentError(
                f"invalid model name {shown(name)}: at most {MAX_MODEL_NAME_CHARS} characters, got {len(name)}"
            )
        path = self.root / name
        if path.is_symlink():
            raise InvalidArgumentError(f"model {shown(name)} is a link; links are not loaded on request")
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidArgumentError(f"model {shown(name)} is outside the model repository")
        if not path.is_dir():
            raise ModelNotFoundError(f"no model directory {shown(name)} in the model repository")
        return path

    def load_version(self, name: str, version_dir: Path, config: ModelConfig, executor: Executor) -> ModelVersion:
        """Load one version directory through its task's row (blocking)."""
        try:
            metadata = read_metadata(version_dir, self.tasks.sections(), root=self.root)
        except MetadataError as exc:
            raise ModelLoadError(name, f"version {version_dir.name}: {exc}") from None
        ctx = LoadContext(
            model=name,
            version_dir=version_dir,
            metadata=metadata,
            config=config,
            settings=self.settings,
            executor=executor,
            metrics=self._metrics,
        )
        task = self.tasks[metadata.task]
        engine = task.load(ctx)
        try:
            embeddings = task.embeddings(ctx, engine)
            explain = task.explain(ctx, engine)
        except BaseException:
            engine.close()
            raise
        return ModelVersion(
            version=version_dir.name,
            path=version_dir,
            metadata=metadata,
            engine=engine,
            embeddings=embeddings,
            explain=explain,
        )

    def build_model(self, model_dir: Path, executor: Executor) -> Model:
        """Load the versions that the model's version policy selects (blocking); install nothing.

        A failure's reason never holds the repository's absolute path: it reaches remote clients.
        """
        try:
            return self._build_model(model_dir, executor)
        except ModelLoadError as exc:
            raise ModelLoadError(exc.model, self._redact(exc.reason)) from None

    def _redact(self, reason: str) -> str:
        for root in {str(self.root.resolve()), str(self.root.absolute()), str(self.root)}:
            if root not in (".", ""):
                reason = reason.replace(root, "<model repository>")
        return reason

    def _build_model(self, model_dir: Path, executor: Executor) -> Model:
        name = model_dir.name
        if not model_dir.resolve().is_relative_to(self.root.resolve()):
            raise ModelLoadError(name, "the model's directory is a link that points outside the model repository")
        try:
            config = read_config(model_dir, root=self.root)
        except MetadataError as exc:
            raise ModelLoadError(name, str(exc)) from None
        on_disk = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
        if not on_disk:
            raise ModelLoadError(name, "no version directories (positive integers) in the model's directory")
        selected = config.version_policy.select(on_disk)
        if not selected:
            found = ", ".join(map(str, sorted(on_disk)))
            raise ModelLoadError(name, f"the version policy selects none of the versions on disk ({found})")
        versions: dict[str, ModelVersion] = {}
        try:
            for number in selected:
                version_dir = model_dir / str(number)
                if not version_dir.resolve().is_relative_to(model_dir.resolve()):
                    raise ModelLoadError(name, f"version {number} is a link that points outside the model directory")
                loaded = self.load_version(name, version_dir, config, executor)
                versions[loaded.version] = loaded
                logger.info(
                    "loaded model %s version %s (%s, %s)", name, loaded.version, loaded.task, loaded.engine.describe()
                )
            tasks = {v.task for v in versions.values()}
            if len(tasks) > 1:
                raise ModelLoadError(name, f"its versions mix tasks ({', '.join(sorted(tasks))}); one model, one task")
        except BaseException:
            for version in versions.values():  # a half-loaded model must not keep threads and sessions
                version.close()
            raise
        return Model(
            name=name,
            task=next(iter(versions.values())).task,
            config=config,
            versions=versions,
            default_version=str(selected[-1]),
            max_new_tokens_limit=config.max_new_tokens_limit or self.settings.max_new_tokens_limit,
            max_images_per_request=self.settings.max_images_per_request,
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
            raise ModelNotFoundError(f"no model named {shown(name)} (loaded models: {known})")
        return model

    def models(self) -> list[Model]:
        """All loaded models, sorted by name."""
        return [self._models[n] for n in sorted(self._models)]

    def close(self) -> None:
        """Stop the models' engines (after the server has drained)."""
        for model in self._models.values():
            for version in model.versions.values():
                version.close()
