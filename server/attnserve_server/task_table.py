"""The task table: one row per task that this server can serve.

The built-in rows are text generation, text2text generation (encoder–decoder) and image
classification. A deployment can add rows of its own with ``--task-plugin module:attribute``
(``ATTNSERVE_TASK_PLUGINS``), each naming a :class:`~attnserve_server.task.Task` in an importable
module: nothing else in the server changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Sequence

from attnserve_server.model_format.metadata import TaskSection
from attnserve_server.task import Task
from attnserve_server.text.task import TEXT_GENERATION_TASK
from attnserve_server.text2text.task import TEXT2TEXT_GENERATION_TASK
from attnserve_server.vision.task import IMAGE_CLASSIFICATION_TASK

BUILTIN_TASKS: tuple[Task[object], ...] = (TEXT_GENERATION_TASK, TEXT2TEXT_GENERATION_TASK, IMAGE_CLASSIFICATION_TASK)  # type: ignore[assignment]


class TaskTable:
    """The rows by task name."""

    def __init__(self, tasks: Iterable[Task[object]] = BUILTIN_TASKS) -> None:
        self._rows: dict[str, Task[object]] = {}
        for task in tasks:
            if task.name in self._rows:
                raise ValueError(f"two task rows are named {task.name!r}")
            self._rows[task.name] = task

    def __iter__(self) -> Iterator[Task[object]]:
        return iter(self._rows.values())

    def __getitem__(self, name: str) -> Task[object]:
        return self._rows[name]

    def sections(self) -> dict[str, type[TaskSection]]:
        """Each task's ``metadata.json`` section, by task name."""
        return {name: task.section for name, task in self._rows.items()}


def import_task(path: str) -> Task[object]:
    """The :class:`Task` that ``module:attribute`` names."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"task plugin {path!r} must be written module:attribute")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import task plugin {path!r}: {exc}") from None
    if not isinstance(found, Task):
        raise ValueError(f"task plugin {path!r} is a {type(found).__name__}, not an attnserve_server.task.Task")
    return found


def task_table(plugins: Sequence[str] = ()) -> TaskTable:
    """The built-in rows and one row per plugin."""
    return TaskTable([*BUILTIN_TASKS, *(import_task(p) for p in plugins)])
