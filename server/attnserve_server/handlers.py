"""Task-independent handlers: model discovery, and the deadline that every request carries.

Each task's own handler lives in its package (``text/handler.py``, ``vision/handler.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from attnserve_server.loaded import READY, IndexEntry, Model, ModelState
from attnserve_server.repository import ModelRepository


@dataclass(frozen=True)
class ModelDescription:
    """A loaded model, its load state, and what its task tells a client about it (None if nothing)."""

    model: Model
    state: ModelState
    task_info: Any


class ModelHandler:
    """Model discovery."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def describe(self, model: Model) -> ModelDescription:
        task = self._repository.tasks[model.task]
        return ModelDescription(model, self._repository.state(model.name), task.describe(model))

    def list_models(self) -> list[ModelDescription]:
        """All loaded models."""
        return [self.describe(m) for m in self._repository.models()]

    def get_model(self, name: str) -> ModelDescription:
        """One model by name (NOT_FOUND if unknown)."""
        return self.describe(self._repository.get(name))

    def unavailable(self) -> list[IndexEntry]:
        """Models in the repository (or known to the server) that are not serving."""
        return [e for e in self._repository.index() if e.state != READY]


def deadline_from_timeout(time_remaining: float | None) -> float | None:
    """Turn gRPC's remaining time into a monotonic deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
