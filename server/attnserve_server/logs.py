"""Logging: one line per record on stderr, as text or as JSON, tagged with the current request.

The RPC interceptors set :data:`request_id`, :data:`request_model` and :data:`request_key` for the
task that runs an RPC; every record logged from that task carries them (worker threads don't inherit them).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import Literal

LogFormat = Literal["text", "json"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnserve_request_id", default=None)
request_model: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnserve_request_model", default=None)
# The NAME of the API key that a call presented (set by the auth interceptor); never the key itself.
request_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnserve_request_key", default=None)

# Fields a record may carry through ``extra=`` (the interceptor's access log line) that JSON logs keep.
EXTRA_FIELDS = ("method", "code", "duration_ms")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class RequestContextFilter(logging.Filter):
    """Copies the current request id, model and API key name onto every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid, model, key = request_id.get(), request_model.get(), request_key.get()
        record.request_id = rid
        record.model = model
        record.key = key
        tags = [f"request_id={rid}"] if rid else []
        if model:
            tags.append(f"model={model}")
        if key:
            tags.append(f"key={key}")
        record.request_tag = f" [{' '.join(tags)}]" if tags else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and where known request_id,
    model, key (the API key's name), method, code, duration_ms and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("request_id", "model", "key", *EXTRA_FIELDS):
            value = getattr(record, field, None)
            if value is not None and value != "":
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send every logger's records to stderr at ``level``, formatted as ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
