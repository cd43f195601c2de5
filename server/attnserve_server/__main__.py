"""``attnserve-server`` / ``python -m attnserve_server``."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from attnserve_server.logs import configure_logging
from attnserve_server.security import keys_cli
from attnserve_server.server import StartupError, serve
from attnserve_server.settings import SettingsError, load_settings

logger = logging.getLogger("attnserve_server")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, serve, and return the process exit status (or run ``attnserve-server keys ...``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Every setting is a --flag, so a first word that is no flag can only be a subcommand.
    if args[:1] == ["keys"]:
        return keys_cli.main(args[1:])
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        sys.stderr.write(f"attnserve-server: invalid settings:\n{exc}\n")
        return 2
    except SettingsError as exc:
        sys.stderr.write(f"attnserve-server: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        # The message names the model and the reason; a traceback would only bury it.
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
