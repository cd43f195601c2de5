"""``attnserve-server keys``: add, list and remove API keys in a key file.

``add`` prints the new key once, on stdout, as the last line of its output (what it did goes to
stderr), so ``KEY=$(attnserve-server keys add ...)`` captures exactly the key. Only the key's
SHA-256 is stored. A running server picks the change up on its next call.
Exit status: 0 on success, 1 when the file cannot be read or written or the name is taken or
unknown, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from attnserve_server.security.keys import (
    NAME_PATTERN,
    SCOPES,
    KeyEntry,
    KeyFile,
    KeyFileError,
    hash_key,
    new_key,
    read_key_file,
    write_key_file,
)

KEY_FILE_ENV = "ATTNSERVE_API_KEY_FILE"


def _scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if not scopes or unknown:
        raise argparse.ArgumentTypeError(f"scopes are a comma-separated list of {', '.join(SCOPES)}; got {text!r}")
    return scopes


def _name(text: str) -> str:
    if not re.match(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(
            "a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnserve-server keys", description="Manage the API keys of a key file (see docs/security.md)."
    )
    key_file = os.environ.get(KEY_FILE_ENV)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--key-file",
        type=Path,
        default=Path(key_file) if key_file else None,
        required=not key_file,
        help=f"the key file (YAML, or JSON if it ends in .json; default: ${KEY_FILE_ENV})",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    add = commands.add_parser("add", parents=[common], help="add a key and print it (once)")
    add.add_argument("name", type=_name, help="the key's name, shown in logs and metrics")
    scopes = ", ".join(SCOPES)
    add.add_argument("--scopes", type=_scopes, required=True, help=f"what the key may call, comma-separated: {scopes}")
    add.add_argument("--rate", type=_positive, help="rate limit: requests per second (default: none)")
    add.add_argument("--burst", type=int, help="requests at once within the rate limit (default: the rate, rounded up)")
    add.set_defaults(run=_add)
    listing = commands.add_parser("list", parents=[common], help="list the keys' names, scopes and limits")
    listing.set_defaults(run=_list)
    remove = commands.add_parser("remove", parents=[common], help="remove a key (calls with it are refused at once)")
    remove.add_argument("name", help="the key's name")
    remove.set_defaults(run=_remove)
    return parser


def _read(path: Path) -> KeyFile:
    return read_key_file(path) if path.exists() else KeyFile()


def _add(args: argparse.Namespace) -> int:
    keys = _read(args.key_file)
    if any(entry.name == args.name for entry in keys.keys):
        raise KeyFileError(f"{args.key_file} already holds a key named {args.name!r}; remove it first")
    if args.burst is not None and args.rate is None:
        raise KeyFileError("--burst needs --rate")
    key = new_key()
    entry = KeyEntry(name=args.name, sha256=hash_key(key), scopes=args.scopes, rate=args.rate, burst=args.burst)
    write_key_file(args.key_file, KeyFile(keys=(*keys.keys, entry)))
    limit = f", {args.rate:g} requests/s, burst {entry.bucket_size()}" if args.rate else ""
    sys.stderr.write(
        f"added key {args.name!r} (scopes: {', '.join(args.scopes)}{limit}) to {args.key_file}.\n"
        "It is shown once, below; only its hash is stored.\n"
    )
    sys.stderr.flush()
    sys.stdout.write(key + "\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    for entry in read_key_file(args.key_file).keys:
        limit = f"  {entry.rate:g}/s burst {entry.bucket_size()}" if entry.rate else ""
        sys.stdout.write(f"{entry.name}  {','.join(entry.scopes)}{limit}\n")
    return 0


def _remove(args: argparse.Namespace) -> int:
    keys = read_key_file(args.key_file)
    kept = tuple(entry for entry in keys.keys if entry.name != args.name)
    if len(kept) == len(keys.keys):
        raise KeyFileError(f"{args.key_file} holds no key named {args.name!r}")
    write_key_file(args.key_file, KeyFile(keys=kept))
    sys.stderr.write(f"removed key {args.name!r} from {args.key_file}\n")
    return 0


def main(argv: Sequence[str]) -> int:
    """Run ``attnserve-server keys <argv>``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except (KeyFileError, OSError, ValueError) as exc:
        sys.stderr.write(f"attnserve-server keys: {exc}\n")
        return 1
    return status
