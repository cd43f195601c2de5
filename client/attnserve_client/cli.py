"""The ``attnserve`` command: generate text, classify images, embed texts or images, explain (attention maps),
list models, probe health.

Exit status: 0 on success, 1 when a call fails (or ``health`` finds the server not
serving), 2 for bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from attnserve_client import cli_explain
from attnserve_client.client import DEFAULT_HEALTH_TIMEOUT, DEFAULT_RETRIES, DEFAULT_TARGET, DEFAULT_TIMEOUT, Client
from attnserve_client.embeddings import POOLINGS
from attnserve_client.errors import AttnserveError, ServerError
from attnserve_client.limits import MAX_STOP_SEQUENCES
from attnserve_client.request import generate_arguments
from attnserve_client.types import FinishReason, GenerationChunk, ModelInfo, Prediction, Usage

__all__ = ["CONNECTION_OPTIONS", "HEALTH_TIMEOUT", "build_parser", "main"]

TARGET_ENV = "ATTNSERVE_TARGET"
# The client's own names: ATTNSERVE_TLS_CERT and ATTNSERVE_TLS_KEY are the server's certificate and key
# (its settings), and both sets meet in the server's container, where the HEALTHCHECK runs this command.
TLS_ENV = "ATTNSERVE_TLS"
CA_ENV = "ATTNSERVE_TLS_CA"
CERT_ENV = "ATTNSERVE_TLS_CLIENT_CERT"
KEY_ENV = "ATTNSERVE_TLS_CLIENT_KEY"
API_KEY_ENV = "ATTNSERVE_API_KEY"
# Every command takes these (the destinations of their options): where the server is and how to reach it.
CONNECTION_OPTIONS = ("target", "timeout", "tls", "ca", "cert", "key", "api_key")
# `attnserve health` runs as a container HEALTHCHECK: it must answer quickly, and it does
# not retry (the orchestrator retries on its own schedule).
HEALTH_TIMEOUT = DEFAULT_HEALTH_TIMEOUT


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``) and returns the exit status."""
    args = build_parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Model output can hold any character; never fail on a terminal that cannot show one.
        sys.stdout.reconfigure(errors="replace")
    try:
        status: int = args.run(args)
    except AttnserveError as error:
        # The request id finds the call in the server's log.
        rid = f" [request id {error.request_id}]" if error.request_id else ""
        _fail(f"{error.details} ({error.code.name}){rid}")
        return 1
    except ValueError as error:  # a bad --timeout or the like, from the client's constructor
        _fail(str(error))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`attnserve generate ... | head`); the stream is already cancelled.
        # Point stdout at devnull so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attnserve`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        help=f"server address host:port (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help=f"deadline in seconds (default: {DEFAULT_TIMEOUT:g}; {HEALTH_TIMEOUT:g} for health)",
    )
    _add_security_options(common)

    parser = argparse.ArgumentParser(prog="attnserve", description="Client of the attnserve model server.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", parents=[common], help="generate text from a prompt", description="Generate text from a prompt."
    )
    generate.add_argument("prompt", help="the text to continue")
    generate.add_argument("--model", help="model name (default: the only text-generation model served)")
    generate.add_argument("--model-version", help="model version (default: the model's default version)")
    generate.add_argument("--max-new-tokens", type=int, help="number of tokens to generate, >= 1")
    generate.add_argument("--temperature", type=float, help="softmax temperature, >= 0 (0: greedy)")
    generate.add_argument("--top-k", type=int, help="keep the k most likely tokens (0: off)")
    generate.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1] (1: off)")
    generate.add_argument("--repetition-penalty", type=float, help="penalty on repeated tokens, > 0 (1: off)")
    generate.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help=f"stop before this text (repeatable, up to {MAX_STOP_SEQUENCES} times)",
    )
    generate.add_argument("--seed", type=int, help="random seed, for reproducible output")
    generate.add_argument(
        "--no-stream", dest="stream", action="store_false", help="print the text at the end instead of streaming it"
    )
    generate.set_defaults(run=_generate)

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="classify image files",
        description="Classify image files (PNG, JPEG, WebP or BMP) in one request and print the top predictions.",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="image file to classify")
    classify.add_argument("--model", help="model name (default: the only image-classification model served)")
    classify.add_argument("--model-version", help="model version (default: the model's default version)")
    classify.add_argument("--top-k", type=int, help="predictions per image (default: 5, or fewer if fewer classes)")
    classify.set_defaults(run=_classify)

    embed = commands.add_parser(
        "embed",
        parents=[common],
        help="embed texts or image files",
        description="Embed texts (or, with --images, image files) in one request and print one vector per input "
        "(with --pooling none, also one per token), or write the vectors to a .npy file.",
    )
    embed.add_argument("inputs", nargs="+", metavar="INPUT", help="a text, or an image file with --images")
    embed.add_argument("--images", action="store_true", help="the inputs are image files")
    embed.add_argument("--model", help="model name (default: the only model of the inputs' kind)")
    embed.add_argument("--model-version", help="model version (default: the model's default version)")
    embed.add_argument("--pooling", choices=POOLINGS, help="default: the model's (GPT last, ViT cls, Swin mean)")
    embed.add_argument("--layer", type=int, help="hidden state: 0 (input embedding) .. last; negative from the end")
    embed.add_argument("--normalize", action="store_true", help="scale every vector to unit length")
    embed.add_argument("--out", metavar="FILE.npy", help="write the (inputs, dim) vectors here (needs numpy)")
    embed.set_defaults(run=_embed)

    explain = commands.add_parser(
        "explain",
        parents=[common],
        help="attention maps of a text or an image",
        description="Attention maps of one text (text models) or image file (image models): with --out a picture "
        "(a ViT's rollout over the image, a Swin's query-patch maps, a heatmap per head of a text model), "
        "with --json the maps, else a short summary.",
    )
    cli_explain.add_arguments(explain)
    explain.set_defaults(run=_explain)

    models = commands.add_parser(
        "models", parents=[common], help="list the served models", description="List the served models."
    )
    models.set_defaults(run=_models)

    health = commands.add_parser(
        "health",
        parents=[common],
        help="exit 0 if the server is serving, else 1",
        description="Exit 0 if the server (or the model) is SERVING, 1 otherwise.",
    )
    health.add_argument("--model", default="", help="ask about this model instead of the whole server")
    health.set_defaults(run=_health)
    return parser


def _generate(args: argparse.Namespace) -> int:
    # The options are named after generate's arguments: the client validates and builds the request.
    arguments = generate_arguments(vars(args))
    with _client(args) as client:
        if args.stream:
            stream = client.generate_stream(**arguments)
            try:
                last, seed = _write_stream(stream, sys.stdout)
            finally:
                stream.close()  # cancels the call if we stopped early (Ctrl-C)
            finish_reason, usage, model, version = last.finish_reason, last.usage, last.model, last.model_version
        else:
            generation = client.generate(**arguments)
            _write(sys.stdout, generation.text)
            finish_reason, usage, seed = generation.finish_reason, generation.usage, generation.seed
            model, version = generation.model, generation.model_version
    if sys.stdout.isatty():
        _write(sys.stdout, "\n")  # end the line for the shell prompt; piped output stays exact
    _summary(finish_reason, usage, seed, model, version)
    return 0


def _write_stream(stream: Iterator[GenerationChunk], out: TextIO) -> tuple[GenerationChunk, int | None]:
    """Writes each chunk's text as it arrives; returns the last chunk and the seed used."""
    last: GenerationChunk | None = None
    seed = None
    for chunk in stream:
        if chunk.seed is not None:
            seed = chunk.seed
        _write(out, chunk.text)
        last = chunk
    if last is None:
        raise ServerError("the server ended the stream without sending anything")
    return last, seed


def _summary(
    finish_reason: FinishReason | None, usage: Usage | None, seed: int | None, model: str, version: str
) -> None:
    parts = [f"finish_reason={finish_reason or 'none'}"]
    if usage is not None:
        parts += [f"prompt_tokens={usage.prompt_tokens}", f"completion_tokens={usage.completion_tokens}"]
    if seed is not None:
        parts.append(f"seed={seed}")
    parts += [f"model={model}", f"version={version}"]
    sys.stderr.write(" ".join(parts) + "\n")


def _classify(args: argparse.Namespace) -> int:
    with _client(args) as client:
        results = client.classify_batch(
            args.images, model=args.model, model_version=args.model_version, top_k=args.top_k
        )
    _write(sys.stdout, _predictions_table(args.images, results))
    return 0


def _embed(args: argparse.Namespace) -> int:
    inputs: list[object] = [Path(p) for p in args.inputs] if args.images else list(args.inputs)
    with _client(args) as client:
        result = client.embed(
            inputs,
            model=args.model,
            model_version=args.model_version,
            pooling=args.pooling,
            layer=args.layer,
            normalize=args.normalize,
        )
    if args.out:
        try:
            import numpy as np  # noqa: PLC0415 (only --out needs it)
        except ImportError:
            _fail("--out needs numpy: pip install 'attnserve-client[images]'")
            return 2
        np.save(args.out, np.asarray(result.vectors, dtype=np.float32))
        _write(sys.stdout, f"wrote {len(args.inputs)} x {result.dim} vectors to {args.out}\n")
        return 0
    lines = []
    for index, name in enumerate(args.inputs):
        lines.append(f"{name}\t{_floats(result.vectors[index])}")
        for position, vector in enumerate(result.tokens[index] if result.tokens is not None else ()):
            text = result.token_texts[index][position] if result.token_texts is not None else f"#{position}"
            lines.append(f"  {text!r}\t{_floats(vector)}")
    _write(sys.stdout, "\n".join(lines) + "\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        printed = cli_explain.run(args, client)
    _write(sys.stdout, printed)
    return 0


def _floats(vector: Sequence[float]) -> str:
    return " ".join(f"{float(value):.6g}" for value in vector)


def _predictions_table(images: Sequence[str], results: list[list[Prediction]]) -> str:
    rows = [("IMAGE", "RANK", "LABEL", "INDEX", "SCORE")]
    for image, predictions in zip(images, results, strict=True):
        for rank, p in enumerate(predictions, start=1):
            rows.append((image, str(rank), p.label, str(p.index), f"{p.score:.4f}"))
    return _columns(rows, right=(1, 3, 4))


def _columns(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.models()
    _write(sys.stdout, _table(models))
    return 0


def _table(models: list[ModelInfo]) -> str:
    header = ("NAME", "TASK", "VERSIONS", "DEFAULT", "INPUT", "REQUESTS", "FAILURES", "DESCRIPTION")
    rows = [header]
    for model in sorted(models, key=lambda m: m.name):
        rows.append(
            (
                model.name,
                model.task,
                ",".join(model.versions),
                model.default_version,
                _input(model),
                str(model.counters.requests),
                str(model.counters.failures),
                model.description.splitlines()[0] if model.description else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not models:
        lines.append("(no models)")
    return "\n".join(lines) + "\n"


def _input(model: ModelInfo) -> str:
    """What the model takes: its context length, or its image size and number of classes."""
    if model.text_generation is not None:
        return f"{model.text_generation.context_length} tokens"
    if model.image_classification is not None:
        ic = model.image_classification
        return f"{ic.input.channels}x{ic.input.height}x{ic.input.width}, {len(ic.labels)} classes"
    return "-"


def _health(args: argparse.Namespace) -> int:
    with _client(args, retries=0) as client:
        serving = client.health(args.model, timeout=args.timeout or HEALTH_TIMEOUT)
    _write(sys.stdout, "SERVING\n" if serving else "NOT_SERVING\n")
    return 0 if serving else 1


def _client(args: argparse.Namespace, retries: int = DEFAULT_RETRIES) -> Client:
    return Client(
        args.target,
        timeout=args.timeout or DEFAULT_TIMEOUT,
        retries=retries,
        tls=args.tls,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        api_key=args.api_key,
    )


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    """--tls, --ca, --cert, --key and --api-key, each defaulting to its environment variable."""
    env = os.environ.get
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=env(TLS_ENV, "").strip().lower() in ("1", "true", "yes", "on"),
        help=f"connect with TLS (implied by --ca, --cert, --key; default: ${TLS_ENV})",
    )
    options = (
        ("--ca", CA_ENV, "PEM", "CA certificate(s) of the server"),
        ("--cert", CERT_ENV, "PEM", "client certificate, for a server that asks for one (mTLS)"),
        ("--key", KEY_ENV, "PEM", "private key of --cert"),
        (
            "--api-key",
            API_KEY_ENV,
            "KEY",
            "API key, sent as 'authorization: Bearer KEY' (the variable keeps it out of ps)",
        ),
    )
    for flag, variable, metavar, what in options:
        parser.add_argument(flag, default=env(variable) or None, metavar=metavar, help=f"{what} (default: ${variable})")


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()  # stream text as it arrives, even into a pipe


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _fail(message: str) -> None:
    sys.stderr.write(f"attnserve: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
