"""A deliberately leaking attnserve server: the negative control of ``benchmarks/soak.py --leak``.

It imports ``attnserve_server``, wraps the text and image handlers' entry points
(``TextGenerationHandler.start``, ``ImageClassificationHandler.classify`` and ``.logits``) so that
each keeps a reference to its request and a 64 KiB buffer in the module-level list ``LEAKED``,
then runs the server's own ``main()`` with this script's arguments:

    python benchmarks/leaky_server.py --model-repository models --port 50051

Every text or image request thus grows the server's resident memory by a little over 64 KiB
(``ATTNSERVE_LEAK_BYTES`` changes the buffer's size), which a soak must flag. At the soak's usual
~250 requests/s that is close to 1 GB a minute: run it for minutes, not for half an hour.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from attnserve_server.__main__ import main
from attnserve_server.text.handler import TextGenerationHandler
from attnserve_server.vision.handler import ImageClassificationHandler

BUFFER_BYTES = int(os.environ.get("ATTNSERVE_LEAK_BYTES", str(64 * 1024)))
LEAKED: list[tuple[Any, bytes]] = []


def leaking(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (an ``async def (self, request, ...)``), keeping its request and a buffer forever."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        # A filled buffer: zeroed memory from calloc may not be resident until written.
        LEAKED.append((request, b"\xa5" * BUFFER_BYTES))
        return await method(self, request, *args, **kwargs)

    return wrapper


TextGenerationHandler.start = leaking(TextGenerationHandler.start)  # type: ignore[method-assign]
ImageClassificationHandler.classify = leaking(ImageClassificationHandler.classify)  # type: ignore[method-assign]
ImageClassificationHandler.logits = leaking(ImageClassificationHandler.logits)  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
