"""Stop strings: cut the output before the first one, and never leak (a prefix of) one.

Text whose tail could be the start of a stop string is held back until the next token shows
whether it really is one.
"""

from __future__ import annotations

from collections.abc import Sequence


def _held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class StopMatcher:
    """Filters a stream of text deltas against up to a few stop strings."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""
        self.stopped = False

    def push(self, delta: str) -> str:
        """Add text; return what is safe to emit. After a stop string, :attr:`stopped` is set."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        text = self._pending + delta
        # Any stop string must start inside the pending text, because every earlier tail that
        # could have begun one was held back. Take the one that starts first.
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return text[: min(hits)]
        keep = _held_back_length(text, self._stops)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, once generation ended for another reason (it was not a stop string)."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text
