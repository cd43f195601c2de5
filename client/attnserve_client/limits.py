"""The attnserve.v1 protocol's limits, the one definition that the client and the server both use.

The client checks them before sending, so that a bad request fails with a clear message and
no round trip. The server enforces them again on every request, whatever client sent it, and
imports the ones it checks itself from here (``attnserve_server.text.params``); the others the
protobuf field types enforce. Limits that depend on the model (its context window, its
``max_new_tokens`` cap, its number of classes) are the server's alone.
"""

from __future__ import annotations

__all__ = ["INT32_MAX", "MAX_SEED", "MAX_STOP_SEQUENCES"]

MAX_STOP_SEQUENCES = 4
"""The most stop strings one generation request may carry (``GenerationParameters.stop``)."""

INT32_MAX = 2**31 - 1
"""The largest value of an ``int32`` field (``max_new_tokens``, ``top_k``)."""

MAX_SEED = 2**64 - 1
"""The largest seed: ``seed`` is a ``uint64`` field."""
