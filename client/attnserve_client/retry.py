"""Deadlines and the retry policy for UNAVAILABLE (and, if asked, RESOURCE_EXHAUSTED).

UNAVAILABLE is retried: it means the request never reached a model (the server is
restarting, or not up yet), so sending it again is safe. RESOURCE_EXHAUSTED (the server's
queue is full) is safe to resend too, but retrying it by default would add load to a server
that is shedding it, so it is retried only when the caller opts in (``retry_overloaded``).
A stream is retried only until its first chunk arrives, because after that the caller has
already seen part of the output.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import grpc

from attnserve_client.errors import DeadlineExceededError, from_rpc_error

__all__ = ["Deadline", "RetryPolicy", "channel_options", "check_timeout", "log_retry", "retry_wait"]

logger = logging.getLogger("attnserve_client")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    Attributes:
        retries: how many times to send a request again after UNAVAILABLE (0: never).
        initial_backoff: the wait before the first retry, in seconds (before jitter).
        max_backoff: the longest wait between two attempts, in seconds.
        multiplier: how much the wait grows after each retry.
        retry_overloaded: also retry RESOURCE_EXHAUSTED (:class:`~attnserve_client.OverloadedError`).
    """

    retries: int = 2
    initial_backoff: float = 0.25
    max_backoff: float = 2.0
    multiplier: float = 2.0
    retry_overloaded: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("the backoffs must satisfy 0 < initial_backoff <= max_backoff")

    def delay(self, code: grpc.StatusCode, retry: int, remaining: float) -> float | None:
        """The wait before retry number ``retry`` (0-based) after ``code``, or None to give up.

        Gives up when ``code`` is not UNAVAILABLE (or RESOURCE_EXHAUSTED with ``retry_overloaded``),
        when the retries are spent, or when the wait would not leave time for another attempt
        before the deadline.
        """
        retryable = code == grpc.StatusCode.UNAVAILABLE or (
            self.retry_overloaded and code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        if not retryable or retry >= self.retries:
            return None
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        # "Equal jitter": half fixed, half random, so that clients that failed together
        # spread out, and yet every retry waits at least half the backoff.
        wait = backoff / 2 + random.uniform(0, backoff / 2)
        return wait if wait < remaining else None


class Deadline:
    """The point in time by which a call, all its retries included, must finish."""

    def __init__(self, timeout: float) -> None:
        self._end = time.monotonic() + timeout

    def left(self) -> float:
        """Seconds left, zero or less once the deadline has passed."""
        return self._end - time.monotonic()

    def remaining(self) -> float:
        """Seconds left, for the next attempt; raises DeadlineExceededError when none are."""
        left = self.left()
        if left <= 0:
            raise DeadlineExceededError("the deadline passed before the call could be sent")
        return left


def check_timeout(timeout: float) -> float:
    """Returns ``timeout`` if it is a positive finite number of seconds; raises ValueError otherwise."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def channel_options(policy: RetryPolicy) -> list[tuple[str, int]]:
    """Channel arguments that let a retry really reconnect.

    After a failed connection gRPC waits (1 s by default) before it tries again, and until
    then every call fails at once with UNAVAILABLE. Reconnecting sooner than the first retry
    fires makes each retry a real attempt.
    """
    first_wait_ms = int(policy.initial_backoff * 1000 / 2)
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, first_wait_ms // 2)),
        ("grpc.max_reconnect_backoff_ms", int(policy.max_backoff * 1000)),
    ]


def log_retry(method: str, error: grpc.RpcError, retry: int, policy: RetryPolicy, wait: float) -> None:
    logger.info(
        "%s failed with %s (%s); retry %d of %d in %.2f s",
        method,
        error.code().name,
        error.details(),
        retry + 1,
        policy.retries,
        wait,
    )


def retry_wait(policy: RetryPolicy, method: str, error: grpc.RpcError, retry: int, deadline: Deadline) -> float:
    """The wait before retry number ``retry`` (0-based) of ``method``, which failed with ``error``.

    Logs the retry. Raises ``error`` as its typed :class:`~attnserve_client.AttnserveError` when
    the policy gives up (see :meth:`RetryPolicy.delay`).
    """
    wait = policy.delay(error.code(), retry, deadline.left())
    if wait is None:
        raise from_rpc_error(error) from error
    log_retry(method, error, retry, policy, wait)
    return wait
