"""Fuzzing every RPC of a real server: no client input may stall it or make it answer INTERNAL/UNKNOWN.

Two tiers share the generators below:

- ``test_fuzz_every_rpc`` (in ``make test``): 2,500 requests from a fixed seed (at most 3,000,
  and no more sending after 75 s; ``ATTNSERVE_FUZZ_FAST_EXAMPLES`` changes the count).
- ``test_fuzz_long`` (``make fuzz``, marker ``fuzz_long``): ``ATTNSERVE_FUZZ_REQUESTS`` requests
  (100,000 there) in batches of fresh seeds; skipped unless that variable is set.

Two servers (``fuzz_servers``) serve ``tiny-gpt`` and ``tiny-digits``: most calls go to the
default one; repository load/unload calls, and a few others, to one in explicit model-control mode.
Each request draws a chaos level: sane (the model runs and answers, so the deep code is reached),
some parts wild, or all wild.

Every request goes through a generic channel method (``request_serializer=None``), so what is sent
is bytes: a message built from hypothesis-drawn fields (typed API, KServe v2 with random datatypes,
shapes, typed and raw contents and parameters, health, reflection, the RPCs the server does not
implement, unknown methods), or such bytes mutated (truncated, flipped, spliced, invalid UTF-8 in
string fields, fields of the wrong wire type, overlong varints), or wire-format garbage. Values
go to the extremes: integers at and beyond each field's width, NaN and infinities, empty strings
and strings of up to several hundred KiB (each payload is at most 1 MiB), unicode edge cases,
negative, zero-product and overflowing shapes, up to 4 images (valid ones of every mode, corrupt
ones, headers that claim 10⁵ × 10⁵ pixels).

Checks over all the requests of a run: no INTERNAL and no UNKNOWN status (nor such a code in a
ModelStreamInfer ``error_message``), no call slower than 5 s and no DEADLINE_EXCEEDED (each call
has a 4 s deadline; Watch streams cut on purpose and the few calls sent with a deliberately tiny
deadline excepted), and at the end both servers alive and SERVING. The status-code histogram is
printed in the terminal summary and recorded as the ``fuzz_codes`` property.

Known defects: offences matching one of the defects being fixed on the server (see
``KNOWN_DEFECTS``) are counted and shown but do not fail the run, unless
``ATTNSERVE_FUZZ_STRICT=1``. Anything else fails with the first offending request.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from attnserve_client.pb import embeddings_pb2 as embeddings_pb
from attnserve_client.pb import explain_pb2 as explain_pb
from attnserve_client.pb import image_classification_pb2 as image_pb
from attnserve_client.pb import models_pb2, text_generation_pb2
from attnserve_server.kserve.pb import grpc_service_pb2 as v2

TEXT_MODEL = "tiny-gpt"
IMAGE_MODEL = "tiny-digits"
MODELS = (TEXT_MODEL, IMAGE_MODEL)

MAX_PAYLOAD = 1 << 20  # bytes per request message
CALL_TIMEOUT_S = 4.0
SLOW_S = 5.0
WATCH_CUT_S = 0.3
TINY_DEADLINES_S = (0.0005, 0.002, 0.01, 0.05)

FAST_EXAMPLES = int(os.environ.get("ATTNSERVE_FUZZ_FAST_EXAMPLES", "2500"))
FAST_MAX_REQUESTS = 3000
FAST_BUDGET_S = 75.0
LONG_REQUESTS = int(os.environ.get("ATTNSERVE_FUZZ_REQUESTS", "0") or 0)
LONG_BATCH = 2000
STRICT = os.environ.get("ATTNSERVE_FUZZ_STRICT", "") not in ("", "0")

TEXT_SERVICE = "/attnserve.v1.TextGenerationService/"
IMAGE_SERVICE = "/attnserve.v1.ImageClassificationService/"
MODEL_SERVICE = "/attnserve.v1.ModelService/"
EMBED_SERVICE = "/attnserve.v1.EmbeddingService/"
EXPLAIN_SERVICE = "/attnserve.v1.ExplainService/"
V2 = "/inference.GRPCInferenceService/"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)


# --------------------------------------------------------------------------------------------
# One request and what became of it
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One RPC: bytes to send, how, and what a report shows of it."""

    method: str
    kind: str  # "unary", "server_stream" or "bidi"
    payloads: tuple[bytes, ...]
    messages: tuple[Message | None, ...] = ()  # the messages the payloads were built from, for reports
    target: str = "main"  # which fuzz server: "main" or "explicit"
    timeout: float = CALL_TIMEOUT_S
    cut_after: int | None = None  # streams: cancel after this many responses
    note: str = ""  # e.g. "mutated: truncate at 17"

    @property
    def tiny_deadline(self) -> bool:
        return self.timeout < WATCH_CUT_S

    def shown(self, limit: int = 1500) -> str:
        """A readable, truncated form: the text format of each message, or the bytes."""
        parts = []
        for i, payload in enumerate(self.payloads):
            message = self.messages[i] if i < len(self.messages) else None
            if message is not None and not self.note.startswith("mutated"):
                body = text_format.MessageToString(message, as_utf8=True, as_one_line=True)
                body = f"{type(message).__name__} {{{_truncate(body, limit)}}}"
            else:
                body = f"bytes[{len(payload)}] {_truncate(repr(payload), limit)}"
                if message is not None:
                    original = text_format.MessageToString(message, as_utf8=True, as_one_line=True)
                    body += f" (from {type(message).__name__} {{{_truncate(original, limit // 2)}}})"
            parts.append(body)
        extra = [f"target={self.target}", f"timeout={self.timeout}s"]
        if self.cut_after is not None:
            extra.append(f"cut after {self.cut_after} responses")
        if self.note:
            extra.append(self.note)
        return f"{self.kind} {self.method} [{', '.join(extra)}]\n  " + "\n  ".join(parts)


_RUN = re.compile(r"(.{1,16}?)\1{7,}", re.DOTALL)


def _truncate(text: str, limit: int) -> str:
    """``text`` with long runs of a repeated unit written ``(unit)×count``, cut at ``limit`` characters."""
    text = _RUN.sub(lambda m: f"({m.group(1)})×{len(m.group(0)) // len(m.group(1))}", text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def message_call(method: str, kind: str, *messages: Message, **options: Any) -> Call:
    return Call(method, kind, tuple(m.SerializeToString() for m in messages), messages=tuple(messages), **options)


@dataclass
class Outcome:
    code: str  # the RPC's status code name, or e.g. "CANCELLED (cut)"
    elapsed: float
    responses: int = 0
    stream_errors: tuple[str, ...] = ()  # ModelStreamInfer error_message codes
    detail: str = ""


@dataclass
class Offence:
    why: str
    call: Call
    outcome: Outcome
    known: str | None = None

    def shown(self) -> str:
        return (
            f"{self.why}: {self.outcome.code} after {self.outcome.elapsed:.3f} s"
            f" ({_truncate(self.outcome.detail, 300)})\n{self.call.shown()}"
        )


# --------------------------------------------------------------------------------------------
# Known defects: issue 12's server defects that are being fixed as this fuzzer is written (prompt
# caps, numpy-unbuildable v2 shapes, negative v2 seeds, name truncation in messages, malformed
# health/reflection requests, UNIMPLEMENTED v2 RPCs, RepositoryModelLoad parameters). An offence
# that one of these narrow predicates matches is counted and shown, but fails the run only with
# ATTNSERVE_FUZZ_STRICT=1; anything else fails it. None of them showed up against the server this
# fuzzer was written with, so the table is empty; add an entry only for one of those defects.
# --------------------------------------------------------------------------------------------

KNOWN_DEFECTS: dict[str, Callable[[Call, Outcome], bool]] = {}


def known_defect(call: Call, outcome: Outcome) -> str | None:
    for name, matches in KNOWN_DEFECTS.items():
        if matches(call, outcome):
            return name
    return None


# --------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------


class Fuzzer:
    """Sends calls through generic (bytes in, bytes out) channel methods and keeps the tally."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
        self._callables: dict[tuple[str, str, str], Any] = {}
        self.codes: Counter[str] = Counter()
        self.by_method: dict[str, Counter[str]] = {}
        self.offences: list[Offence] = []
        self.known: Counter[str] = Counter()
        self.requests = 0
        self.messages = 0
        self.slowest = (0.0, "")
        self.started = time.monotonic()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def _callable(self, call: Call) -> Any:
        key = (call.target, call.kind, call.method)
        if key not in self._callables:
            channel = self.channels[call.target]
            make = {"unary": channel.unary_unary, "server_stream": channel.unary_stream, "bidi": channel.stream_stream}
            self._callables[key] = make[call.kind](call.method, request_serializer=None, response_deserializer=None)
        return self._callables[key]

    def send(self, call: Call) -> Outcome:
        start = time.monotonic()
        try:
            outcome = self._invoke(call, start)
        except grpc.RpcError as exc:
            outcome = Outcome(exc.code().name, time.monotonic() - start, detail=str(exc.details()))  # type: ignore[attr-defined]
        self._record(call, outcome)
        return outcome

    def _invoke(self, call: Call, start: float) -> Outcome:
        rpc = self._callable(call)
        if call.kind == "unary":
            rpc(call.payloads[0], timeout=call.timeout)
            return Outcome("OK", time.monotonic() - start, responses=1)
        if call.kind == "server_stream":
            stream = rpc(call.payloads[0], timeout=call.timeout)
        else:
            stream = rpc(iter(call.payloads), timeout=call.timeout)
        responses = 0
        errors: list[str] = []
        try:
            for response in stream:
                responses += 1
                if call.method == V2 + "ModelStreamInfer":
                    text = v2.ModelStreamInferResponse.FromString(response).error_message
                    if text:
                        errors.append(text.split(":", 1)[0])
                if call.cut_after is not None and responses >= call.cut_after:
                    stream.cancel()
                    return Outcome("CANCELLED (cut)", time.monotonic() - start, responses, tuple(errors))
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
            if code == "DEADLINE_EXCEEDED" and call.method == HEALTH + "Watch":
                code = "DEADLINE_EXCEEDED (watch cut)"
            return Outcome(code, time.monotonic() - start, responses, tuple(errors), str(exc.details()))  # type: ignore[attr-defined]
        return Outcome("OK", time.monotonic() - start, responses, tuple(errors))

    def _record(self, call: Call, outcome: Outcome) -> None:
        self.requests += 1
        self.messages += len(call.payloads)
        code = outcome.code
        if code == "DEADLINE_EXCEEDED" and call.tiny_deadline:
            code = "DEADLINE_EXCEEDED (tiny deadline)"
        self.codes[code] += 1
        service, _, name = call.method.lstrip("/").partition("/")
        method = f"{service.rsplit('.', 1)[-1]}/{name}"
        self.by_method.setdefault(method, Counter())[code] += 1
        for error in outcome.stream_errors:
            self.codes[f"in-stream {error}"] += 1
        if outcome.elapsed > self.slowest[0]:
            self.slowest = (outcome.elapsed, f"{call.method} ({code})")
        why = None
        if code in ("INTERNAL", "UNKNOWN"):
            why = f"status {code}"
        elif set(outcome.stream_errors) & {"INTERNAL", "UNKNOWN"}:
            why = f"in-stream error {sorted(set(outcome.stream_errors) & {'INTERNAL', 'UNKNOWN'})}"
        elif code == "DEADLINE_EXCEEDED" or ("DEADLINE_EXCEEDED" in outcome.stream_errors and not call.tiny_deadline):
            why = f"no answer within the {call.timeout} s deadline"
        elif outcome.elapsed > SLOW_S:
            why = f"slower than {SLOW_S} s"
        if why is not None:
            known = known_defect(call, outcome)
            if known is not None:
                self.known[known] += 1
            self.offences.append(Offence(why, call, outcome, known))

    def failures(self) -> list[Offence]:
        return [o for o in self.offences if STRICT or o.known is None]

    def summary(self) -> str:
        wall = time.monotonic() - self.started
        lines = [
            f"{self.requests} requests ({self.messages} messages) in {wall:.1f} s; "
            f"slowest {self.slowest[0]:.3f} s: {self.slowest[1]}",
            "status codes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.codes.items())),
            "by method:",
            *(
                f"  {m}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
                for m, c in sorted(self.by_method.items())
            ),
        ]
        if self.known:
            lines.append(
                "known defects (not failures unless ATTNSERVE_FUZZ_STRICT=1): "
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.known.items()))
            )
            first_known = {}
            for offence in self.offences:
                if offence.known is not None:
                    first_known.setdefault(offence.known, offence)
            lines += [f"  first of {k}: {o.shown()}" for k, o in first_known.items()]
        failures = self.failures()
        if failures:
            lines.append(f"{len(failures)} offending requests; the first: {failures[0].shown()}")
        return "\n".join(lines)


def check_servers(servers: dict[str, Any]) -> list[str]:
    """Problems with the servers after fuzzing: a dead process, or health not SERVING."""
    problems = []
    for name, server in servers.items():
        if server.process.poll() is not None:
            problems.append(f"{name} server exited with {server.process.returncode}:\n{server.stderr()[-3000:]}")
            continue
        with grpc.insecure_channel(server.address) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=SLOW_S)
            except grpc.RpcError as exc:
                problems.append(f"{name} server health Check failed: {exc}")
                continue
            if status.status != health_pb2.HealthCheckResponse.SERVING:
                problems.append(f"{name} server is {health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)}")
    return problems


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

EDGE_STRINGS = (
    "", " ", "\x00", "\x00tiny-gpt", "tiny-gpt\x00", "\t\r\n", "\u200b", "\u200d", "\ufeff", "\u202e\u202d",
    "\uffff", "\ufffd", "\U0010ffff", "e\u0301\u0301\u0301", "🙂", "👩\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "𝕏",
    "ǅ", "İ", "ß", "\u0085", "\u2028\u2029", "日本語のテキスト", "Привет", "%s%s%n", "{0}{1}", "${jndi:x}",
    "../", "../../../etc/passwd", "/", ".", "..", "-1", "0", "NaN", "inf", "1e309", "null", "<|endoftext|>",
    "TINY-GPT", " tiny-gpt", "tiny-gpt ", "tiny-gpt/1", "tiny-digits\n", "tiny_gpt", "'; --", "\\",
)  # fmt: skip
PIECES = ("a", "ab", " ", "\x00", "é", "日", "🙂", "👩\u200d👩\u200d👧", "e\u0301", "\ufffd", "<|endoftext|>", "\n")


@st.composite
def long_strings(draw: st.DrawFn, max_bytes: int = 256 * 1024) -> str:
    """A piece repeated up to ``max_bytes`` bytes of UTF-8 (a few are long, most moderate)."""
    piece = draw(st.one_of(st.sampled_from(PIECES), st.text(min_size=1, max_size=6)))
    width = max(1, len(piece.encode()))
    most = max(1, max_bytes // width)
    count = draw(st.one_of(st.integers(1, min(most, 300)), st.integers(1, most), st.just(most)))
    return piece * count


def strings(max_bytes: int = 256 * 1024) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EDGE_STRINGS), st.text(max_size=24), long_strings(max_bytes))


def names() -> st.SearchStrategy[str]:
    """Model names: mostly real ones (so the deeper code runs), else anything."""
    return st.one_of(st.sampled_from(MODELS), st.sampled_from(MODELS), st.sampled_from(MODELS), strings(4096))


def versions() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""), st.just(""), st.sampled_from(["1", "2", "0", "-1", "01", " 1", "1.0", "99999999999999999999"]),
        strings(4096),
    )  # fmt: skip


INT_EDGES = (0, 1, 2, -1, 48, 49, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1,
             2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1)  # fmt: skip


def ints(bounds: tuple[int, int], small: tuple[int, int] = (-3, 64)) -> st.SearchStrategy[int]:
    """Integers within a field's ``bounds``: small ones, the edges of every width, or any."""
    lo, hi = bounds
    edges = sorted({lo, hi, *(v for v in INT_EDGES if lo <= v <= hi)})
    return st.one_of(st.integers(max(lo, small[0]), min(hi, small[1])), st.sampled_from(edges), st.integers(lo, hi))


FLOAT_EDGES = (
    math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 0.5, 2.0, 1e-45, 1.17549435e-38, 3.4028235e38, -1.0,
    5e-324, 1.7976931348623157e308, 1e-7,
)  # fmt: skip


def floats(width: int = 64) -> st.SearchStrategy[float]:
    edges = [np.float32(v).item() if width == 32 else v for v in FLOAT_EDGES if width == 64 or abs(v) < 3.5e38]
    return st.one_of(st.sampled_from(edges), st.floats(0, 2, width=width), st.floats(width=width))


# --------------------------------------------------------------------------------------------
# Raw protobuf wire format, for what a well-formed message cannot say
# --------------------------------------------------------------------------------------------


def varint(value: int, overlong: int = 0) -> bytes:
    """A base-128 varint of ``value`` (as uint64), padded with ``overlong`` redundant bytes."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if overlong:
        out[-1] |= 0x80
        out += b"\x80" * (overlong - 1) + b"\x00"
    return bytes(out)


BAD_UTF8 = (
    b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"tiny-gpt\x80", b"\xe6\x97", b"\x00",
)  # fmt: skip


@st.composite
def wire_field(draw: st.DrawFn) -> bytes:
    """One field of any number and wire type, its value possibly lying about its length."""
    number = draw(st.one_of(st.integers(1, 12), st.sampled_from([0, 15, 16, 2047, 19000, 19999, 536870911])))
    wire_type = draw(st.one_of(st.sampled_from([0, 1, 2, 5]), st.integers(0, 7)))
    key = varint((number << 3) | wire_type)
    if wire_type == 0:
        return key + varint(draw(ints(UINT64)), overlong=draw(st.sampled_from([0, 0, 0, 1, 5])))
    if wire_type == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        body = draw(st.one_of(st.sampled_from(BAD_UTF8), st.binary(max_size=32), st.just(b"")))
        length = draw(st.one_of(st.just(len(body)), st.just(len(body)), ints(UINT64, small=(0, 64))))
        return key + varint(length) + body
    return key + draw(st.binary(max_size=8))  # groups (3, 4) and the invalid wire types 6 and 7


def garbage() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(wire_field(), min_size=1, max_size=6).map(b"".join),
        st.binary(min_size=1, max_size=64),
        st.sampled_from([b"\xff" * 16, b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]),
    )


@st.composite
def mutated(draw: st.DrawFn, payload: bytes) -> tuple[bytes, str]:
    """``payload`` changed by one of a few operations, and a note saying which."""
    op = draw(st.sampled_from(["truncate", "flip", "insert", "append", "splice", "replace"]))
    size = len(payload)
    if op == "truncate" and size:
        at = draw(st.integers(0, size - 1))
        return payload[:at], f"mutated: truncated to {at} bytes"
    if op == "flip" and size:
        out = bytearray(payload)
        spots = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=6))
        for at, mask in spots:
            out[at] ^= mask
        return bytes(out), f"mutated: xor {spots}"
    if op == "insert":
        at = draw(st.integers(0, size))
        chunk = draw(st.one_of(st.binary(min_size=1, max_size=16), wire_field()))
        return payload[:at] + chunk + payload[at:], f"mutated: {chunk!r} inserted at {at}"
    if op == "append":
        fields = draw(st.lists(wire_field(), min_size=1, max_size=4))
        return payload + b"".join(fields), f"mutated: appended {b''.join(fields)!r}"
    if op == "splice" and size:
        at = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, max(1, min(64, size - at))))
        return payload[: at + length] + payload[at:], f"mutated: bytes {at}..{at + length} doubled"
    body = draw(garbage())
    return body, "mutated: replaced by garbage"


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "ICO")
IMAGE_MODES = ("L", "RGB", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK", "YCbCr")


@functools.lru_cache(maxsize=128)
def encode_image(fmt: str, mode: str, width: int, height: int, fill: int) -> bytes:
    """An image of ``mode`` in ``fmt`` (Pillow picks a mode the format can write where it must)."""
    rng = np.random.default_rng(fill)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if fill else np.zeros((height, width, 3), np.uint8)
    image = Image.fromarray(array, "RGB")
    try:
        image = image.convert(mode)
    except ValueError:
        image = image.convert("L")
    buffer = io.BytesIO()
    for candidate in (image, image.convert("RGBA"), image.convert("RGB")):
        try:
            candidate.save(buffer, format=fmt)
            return buffer.getvalue()
        except (OSError, ValueError, KeyError):
            buffer = io.BytesIO()
    return b""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, color_type: int = 0, depth: int = 8, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims ``width`` × ``height``: its pixels may be missing or lie."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def bmp_header(width: int, height: int, bits: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + info + b"\x00" * 16


@functools.lru_cache(maxsize=1)
def zero_bomb() -> bytes:
    """A ~100 KB PNG of 10,000 × 10,000 black pixels (100 MP: past the server's and Pillow's limits)."""
    width = height = 10_000
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_header(width, height, idat=idat)


def special_images() -> list[bytes]:
    jpeg = encode_image("JPEG", "L", 8, 8, 1)
    sof = jpeg.find(b"\xff\xc0")
    huge_jpeg = jpeg[: sof + 5] + struct.pack(">HH", 65535, 65535) + jpeg[sof + 9 :] if sof >= 0 else jpeg
    zero_jpeg = jpeg[: sof + 5] + struct.pack(">HH", 0, 0) + jpeg[sof + 9 :] if sof >= 0 else jpeg
    return [
        png_header(100_000, 100_000), png_header(0, 0), png_header(0, 5), png_header(2**31 - 1, 1),
        png_header(2**32 - 1, 2**32 - 1), png_header(16, 16, idat=zlib.compress(b"\x00" * 10)),
        png_header(16, 16, color_type=3), png_header(16, 16, depth=16, color_type=6), png_header(16, 16, depth=3),
        bmp_header(100_000, 100_000), bmp_header(16, -16), bmp_header(0, 16), bmp_header(-(2**31), 2**31 - 1),
        bmp_header(16, 16, bits=0), bmp_header(16, 16, bits=7),
        huge_jpeg, zero_jpeg, b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM",
        b"GIF89a", b"II*\x00", b"%PDF-1.4", b"\x00\x00\x00\x18ftypheic", b"",
    ]  # fmt: skip


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "corrupt", "special", "bomb", "random"]))
    if kind == "special":
        return draw(st.sampled_from(special_images()))
    if kind == "bomb":
        return zero_bomb()
    if kind == "random":
        magic = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"RIFF\x10\0\0\0WEBP"]))
        return magic + draw(st.binary(max_size=64))
    width, height = draw(
        st.one_of(
            st.tuples(st.integers(1, 40), st.integers(1, 40)),
            st.sampled_from([(1, 1), (16, 16), (15, 17), (256, 256), (1, 3000), (3000, 1), (2, 1500)]),
        )
    )
    fmt, mode = draw(st.sampled_from(IMAGE_FORMATS)), draw(st.sampled_from(IMAGE_MODES))
    data = encode_image(fmt, mode, width, height, draw(st.integers(0, 3)))
    if kind == "corrupt" and data:
        if draw(st.booleans()):
            return data[: draw(st.integers(0, len(data) - 1))]
        out = bytearray(data)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            out[at] ^= 0xFF
        return bytes(out)
    return data


@st.composite
def valid_images(draw: st.DrawFn) -> bytes:
    """A decodable image in a supported format, of a sensible size."""
    fmt, mode = draw(st.sampled_from(("PNG", "JPEG", "WEBP", "BMP"))), draw(st.sampled_from(("L", "RGB", "RGBA", "P")))
    size = draw(st.sampled_from([(16, 16), (28, 28), (8, 8), (40, 30), (1, 1), (64, 16)]))
    return encode_image(fmt, mode, *size, draw(st.integers(0, 3)))


# --------------------------------------------------------------------------------------------
# The typed attnserve.v1 API. Each request draws a chaos level: 0 keeps every part sane (so the
# model runs and the deeper code is reached), 1 makes some parts wild, 2 makes every part wild.
# --------------------------------------------------------------------------------------------

CHAOS = st.sampled_from([0, 0, 1, 1, 2])


def is_wild(draw: st.DrawFn, chaos: int) -> bool:
    """Whether one part of a request is drawn wild at this chaos level."""
    return chaos == 2 or (chaos == 1 and draw(st.integers(0, 3)) == 2)


SANE_PROMPTS = ("ROMEO.\n", "To be, or not to be", "Le café est très chaud", "日本語のテキスト", "🙂 🚀", "a", "\n")


@st.composite
def sane_prompts(draw: st.DrawFn) -> str:
    return draw(st.one_of(st.sampled_from(SANE_PROMPTS), st.text(min_size=1, max_size=40)))


def prompts() -> st.SearchStrategy[str]:
    return st.one_of(sane_prompts(), st.sampled_from(["", " ", "\x00"]), strings(900 * 1024))


@st.composite
def generation_parameters(draw: st.DrawFn, chaos: int) -> text_generation_pb2.GenerationParameters:
    p = text_generation_pb2.GenerationParameters()
    if draw(st.booleans()):
        p.max_new_tokens = draw(ints(INT32, small=(-2, 50)) if is_wild(draw, chaos) else st.integers(1, 16))
    if draw(st.booleans()):
        p.temperature = draw(floats(32) if is_wild(draw, chaos) else st.floats(0, 2, width=32))
    if draw(st.booleans()):
        p.top_k = draw(ints(INT32, small=(-2, 500)) if is_wild(draw, chaos) else st.integers(0, 50))
    if draw(st.booleans()):
        p.top_p = draw(floats(32) if is_wild(draw, chaos) else st.floats(0.0625, 1, width=32))
    if draw(st.booleans()):
        p.repetition_penalty = draw(floats(32) if is_wild(draw, chaos) else st.floats(0.5, 2, width=32))
    if draw(st.booleans()):
        stop = strings(32 * 1024) if is_wild(draw, chaos) else st.text(min_size=1, max_size=4)
        p.stop.extend(draw(st.lists(stop, max_size=6 if is_wild(draw, chaos) else 4)))
    if draw(st.booleans()):
        p.seed = draw(ints(UINT64))
    p.logprobs = draw(st.booleans())
    return p


@st.composite
def generate_calls(draw: st.DrawFn) -> Call:
    chaos = draw(CHAOS)
    request = text_generation_pb2.GenerateRequest(
        model=draw(names()) if is_wild(draw, chaos) else TEXT_MODEL,
        prompt=draw(prompts() if is_wild(draw, chaos) else sane_prompts()),
        model_version=draw(versions()) if is_wild(draw, chaos) else draw(st.sampled_from(["", "1"])),
    )
    if draw(st.integers(0, 4)):
        request.parameters.CopyFrom(draw(generation_parameters(chaos)))
    if draw(st.booleans()):
        return message_call(TEXT_SERVICE + "Generate", "unary", request)
    cut = draw(st.one_of(st.none(), st.integers(1, 3)))
    return message_call(TEXT_SERVICE + "GenerateStream", "server_stream", request, cut_after=cut)


@st.composite
def classify_calls(draw: st.DrawFn) -> Call:
    chaos = draw(CHAOS)
    images = image_bytes() if is_wild(draw, chaos) else valid_images()
    request = image_pb.ClassifyRequest(
        model=draw(names()) if is_wild(draw, chaos) else IMAGE_MODEL,
        images=draw(st.lists(images, min_size=0 if is_wild(draw, chaos) else 1, max_size=4)),
        model_version=draw(versions()) if is_wild(draw, chaos) else draw(st.sampled_from(["", "1"])),
    )
    if draw(st.booleans()):
        request.top_k = draw(ints(INT32, small=(-2, 12)) if is_wild(draw, chaos) else st.integers(1, 10))
    return message_call(IMAGE_SERVICE + "Classify", "unary", request)


@st.composite
def embed_calls(draw: st.DrawFn) -> Call:
    """EmbeddingService.Embed: texts to the text model, images to the image model, or any mix when wild."""
    chaos = draw(CHAOS)
    wild = is_wild(draw, chaos)
    model = draw(names()) if wild else draw(st.sampled_from(MODELS))
    request = embeddings_pb.EmbedRequest(
        model=model,
        pooling=draw(st.integers(-1, 6) if wild else st.integers(0, 4)),  # type: ignore[arg-type]
        normalize=draw(st.booleans()),
        model_version=draw(versions()) if wild else draw(st.sampled_from(["", "1"])),
    )
    if wild or model == TEXT_MODEL:
        texts = prompts() if wild else sane_prompts()
        request.texts.extend(draw(st.lists(texts, min_size=0 if wild else 1, max_size=4)))
    if wild or model == IMAGE_MODEL:
        images = image_bytes() if wild else valid_images()
        request.images.extend(draw(st.lists(images, min_size=0 if wild else 1, max_size=4)))
    if draw(st.booleans()):
        request.layer = draw(ints(INT32, small=(-4, 4)) if wild else st.integers(-2, 2))
    return message_call(EMBED_SERVICE + "Embed", "unary", request)


@st.composite
def explain_calls(draw: st.DrawFn) -> Call:
    """ExplainService.Explain: a text or an image to either model, with any selection when wild."""
    chaos = draw(CHAOS)
    wild = is_wild(draw, chaos)
    model = draw(names()) if wild else draw(st.sampled_from(MODELS))
    request = explain_pb.ExplainRequest(
        model=model, model_version=draw(versions()) if wild else draw(st.sampled_from(["", "1"]))
    )
    if (wild and draw(st.booleans())) or (not wild and model == TEXT_MODEL):
        request.text = draw(prompts() if wild else sane_prompts())
    elif wild or model == IMAGE_MODEL:
        request.image = draw(image_bytes() if wild else valid_images())
    small = (-4, 8) if wild else (-1, 1)
    request.layers.extend(draw(st.lists(ints(INT32, small=small) if wild else st.integers(*small), max_size=3)))
    request.heads.extend(draw(st.lists(ints(INT32, small=(-2, 8)) if wild else st.integers(0, 1), max_size=3)))
    if wild:
        for name in ("stage", "query_row", "query_col", "max_new_tokens"):
            if draw(st.booleans()):
                setattr(request, name, draw(ints(INT32, small=(-2, 12))))
    return message_call(EXPLAIN_SERVICE + "Explain", "unary", request)


@st.composite
def model_service_calls(draw: st.DrawFn) -> Call:
    target = draw(st.sampled_from(["main", "main", "explicit"]))
    if draw(st.booleans()):
        return message_call(MODEL_SERVICE + "ListModels", "unary", models_pb2.ListModelsRequest(), target=target)
    request = models_pb2.GetModelRequest(name=draw(names()))
    return message_call(MODEL_SERVICE + "GetModel", "unary", request, target=target)


# --------------------------------------------------------------------------------------------
# KServe v2
# --------------------------------------------------------------------------------------------

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES")  # fmt: skip
BAD_DATATYPES = ("", "fp32", "STRING", "TYPE_FP32", "BF16", "FP8", "INT128", "BYTES\x00", "🙂")
NUMPY = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
         "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}  # fmt: skip
FIELDS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
          "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
          "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
          "BYTES": "bytes_contents"}  # fmt: skip
FIELD_BOUNDS = {"int_contents": INT32, "uint_contents": UINT32, "int64_contents": INT64, "uint64_contents": UINT64}
MAX_ELEMENTS = 4096
PARAMETER_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed",
                  "triton_enable_empty_final_response", "binary_data_output", "classification", "priority",
                  "timeout", "sequence_id", "logprobs", "")  # fmt: skip


@dataclass(frozen=True)
class Shapes:
    """Names the fuzz needs from the image model's metadata."""

    pixel_input: str = "pixel_values"
    logits_output: str = "logits"
    channels: int = 1
    size: int = 16


SHAPES = Shapes()


@st.composite
def infer_parameter(draw: st.DrawFn, key: str = "") -> v2.InferParameter:
    p = v2.InferParameter()
    choice = draw(st.sampled_from(["int64", "int64", "uint64", "double", "string", "bool", "unset"]))
    if choice == "int64":
        small = (-3, 60) if key != "seed" else (-5, 5)
        p.int64_param = draw(ints(INT64, small=small))
    elif choice == "uint64":
        p.uint64_param = draw(ints(UINT64))
    elif choice == "double":
        p.double_param = draw(floats())
    elif choice == "string":
        p.string_param = draw(strings(16 * 1024))
    elif choice == "bool":
        p.bool_param = draw(st.booleans())
    return p


def set_parameters(target: Any, entries: dict[str, v2.InferParameter]) -> None:
    for key, value in entries.items():
        target[key].CopyFrom(value)


@st.composite
def parameter_maps(draw: st.DrawFn) -> dict[str, v2.InferParameter]:
    keys = draw(st.lists(st.one_of(st.sampled_from(PARAMETER_KEYS), strings(1024)), max_size=5, unique=True))
    return {key: draw(infer_parameter(key)) for key in keys}


@st.composite
def sane_parameter_maps(draw: st.DrawFn) -> dict[str, v2.InferParameter]:
    """The generate convention's parameters, each within its range."""
    out = {}
    if draw(st.booleans()):
        out["max_tokens"] = v2.InferParameter(int64_param=draw(st.integers(1, 16)))
    if draw(st.booleans()):
        out["temperature"] = v2.InferParameter(double_param=draw(st.floats(0, 2)))
    if draw(st.booleans()):
        out["top_k"] = v2.InferParameter(int64_param=draw(st.integers(0, 50)))
    if draw(st.booleans()):
        out["top_p"] = v2.InferParameter(double_param=draw(st.floats(0.05, 1)))
    if draw(st.booleans()):
        out["seed"] = v2.InferParameter(int64_param=draw(st.integers(0, 2**63 - 1)))
    if draw(st.booleans()):
        out["stop"] = v2.InferParameter(string_param=draw(st.text(min_size=1, max_size=4)))
    if draw(st.booleans()):
        out["triton_enable_empty_final_response"] = v2.InferParameter(bool_param=draw(st.booleans()))
    return out


def sane_shapes(input_name: str) -> st.SearchStrategy[list[int]]:
    if input_name == "text_input":
        return st.sampled_from([[1], [1], [1], [1, 1]])
    if input_name == SHAPES.pixel_input:
        return st.integers(1, 4).map(lambda b: [b, SHAPES.channels, SHAPES.size, SHAPES.size])
    return st.one_of(st.integers(1, 4).map(lambda b: [b]), st.integers(1, 4).map(lambda b: [b, 1]))


@st.composite
def shapes(draw: st.DrawFn, input_name: str) -> list[int]:
    kind = draw(st.sampled_from(["plausible", "plausible", "small", "extreme"]))
    if kind == "plausible":
        if input_name == "text_input":
            return draw(st.sampled_from([[1], [1, 1], [], [2], [0], [1, 1, 1]]))
        if input_name == SHAPES.pixel_input:
            batch = draw(st.integers(0, 4))
            rest = draw(st.sampled_from([(1, 16, 16), (3, 16, 16), (1, 8, 8), (16, 16), (1, 16, 17), (1, 1, 16, 16)]))
            return [batch, *rest]
        return draw(st.sampled_from([[1], [2], [4], [1, 1], [0], [3, 1], [2, 2], [1, 1, 1]]))
    if kind == "small":
        return draw(st.lists(st.integers(0, 8), max_size=6))
    return draw(
        st.one_of(
            st.lists(ints(INT64, small=(-3, 8)), min_size=1, max_size=5),
            st.sampled_from([[0, 2**62], [2**62, 0], [0, 2**63 - 1], [2**32, 2**32], [-1], [-1, -1], [1, -(2**63)],
                             [2**31, 2**31, 0], [0, -1], [1] * 17, [1] * 65, [1] * 200, [0] * 33, [2**62, 2**62, 0],
                             [0, 2**40, 2**40], [2**63 - 1, 0, 2**63 - 1]]),
        )
    )  # fmt: skip


def element_count(shape: Iterable[int]) -> int:
    dims = list(shape)
    return math.prod(dims) if all(d >= 0 for d in dims) else 0


@st.composite
def typed_values(draw: st.DrawFn, field_name: str, count: int, input_name: str, wild: bool = True) -> list[Any]:
    """``count`` values for a typed contents field: drawn when few, else a pattern tiled or an RNG fill."""
    if field_name == "bytes_contents":
        if input_name in ("image", "image_bytes"):
            element = image_bytes() if wild else valid_images()
        elif input_name == "text_input":
            element = (
                st.one_of(prompts().map(str.encode), st.sampled_from(BAD_UTF8))
                if wild
                else sane_prompts().map(str.encode)
            )
        else:
            element = st.binary(max_size=32)
        if count <= 4:
            return draw(st.lists(element, min_size=count, max_size=count))
        return [draw(element)] * count
    if field_name == "bool_contents":
        element = st.booleans()
    elif field_name in FIELD_BOUNDS:
        element = ints(FIELD_BOUNDS[field_name], small=(-3, 260)) if wild else st.integers(0, 100)
    else:
        element = floats(32 if field_name == "fp32_contents" else 64) if wild else st.floats(-3, 3)
    if count <= 16:
        return draw(st.lists(element, min_size=count, max_size=count))
    if wild and draw(st.booleans()):
        pattern = draw(st.lists(element, min_size=1, max_size=8))
        return (pattern * (count // len(pattern) + 1))[:count]
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    if field_name == "bool_contents":
        return rng.integers(0, 2, count).astype(bool).tolist()
    if field_name in FIELD_BOUNDS:
        lo, hi = FIELD_BOUNDS[field_name]
        return rng.integers(max(lo, -300), min(hi, 300), count).tolist()
    return rng.standard_normal(count).tolist()


@st.composite
def raw_contents(draw: st.DrawFn, datatype: str, count: int, input_name: str, wild: bool = True) -> bytes:
    if datatype == "BYTES" or datatype not in NUMPY:
        elements = draw(typed_values("bytes_contents", min(count, 64), input_name, wild))
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)
    dtype = np.dtype(NUMPY[datatype])
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    fill = draw(st.sampled_from(["normal", "bytes", "nan", "inf", "max"])) if wild else "normal"
    if fill == "bytes":
        data = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8).tobytes()
    elif dtype.kind == "f" and fill in ("nan", "inf"):
        data = np.full(count, np.nan if fill == "nan" else np.inf, dtype).tobytes()
    elif fill == "max":
        data = np.full(count, np.iinfo(dtype).max if dtype.kind in "iu" else 1, dtype).tobytes()
    else:
        data = rng.standard_normal(count).astype(dtype).tobytes()
    return data


@st.composite
def input_tensor(draw: st.DrawFn, model: str, chaos: int) -> tuple[v2.ModelInferRequest.InferInputTensor, bytes | None]:
    """One input and its raw contents (if it has them)."""
    likely = {TEXT_MODEL: ["text_input"], IMAGE_MODEL: [SHAPES.pixel_input, "image"]}.get(model, ["text_input"])
    if is_wild(draw, chaos):
        names_ = st.sampled_from(["text_input", "image", SHAPES.pixel_input, "image_bytes", "text_output"])
        name = draw(st.one_of(st.sampled_from(likely), names_, strings(1024)))
    else:
        name = draw(st.sampled_from(likely))
    natural = {"text_input": "BYTES", "image": "BYTES", SHAPES.pixel_input: "FP32"}.get(name, "FP32")
    if is_wild(draw, chaos):
        datatype = draw(st.one_of(st.just(natural), st.sampled_from(DATATYPES), st.sampled_from(BAD_DATATYPES)))
    else:
        datatype = draw(st.sampled_from(["FP32", "FP32", "FP16", "FP64"])) if natural == "FP32" else natural
    shape = draw(shapes(name) if is_wild(draw, chaos) else sane_shapes(name))
    count = element_count(shape)
    tensor = v2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if draw(st.integers(0, 5)) == 2:
        set_parameters(tensor.parameters, draw(parameter_maps()))
    n = count if count <= MAX_ELEMENTS else draw(st.integers(0, 8))
    if is_wild(draw, chaos):
        n = min(draw(st.one_of(st.just(n), st.integers(0, 8), st.just(n + 1))), MAX_ELEMENTS)
    wild_contents = is_wild(draw, chaos)
    modes = ["typed", "raw", "raw_garbage", "both", "none", "wrong_field"] if wild_contents else ["typed", "raw"]
    mode = draw(st.sampled_from(modes))
    if mode == "typed" and datatype == "FP16" and not wild_contents:
        mode = "raw"
    raw: bytes | None = None
    if mode in ("typed", "both", "wrong_field"):
        field_name = FIELDS.get(datatype, "fp32_contents")
        if mode == "wrong_field":
            field_name = draw(st.sampled_from(sorted(set(FIELDS.values()))))
        getattr(tensor.contents, field_name).extend(draw(typed_values(field_name, n, name, wild_contents)))
    if mode in ("raw", "both"):
        raw = draw(raw_contents(datatype, n, name, wild_contents))
    if mode == "raw_garbage":
        raw = draw(st.one_of(st.binary(max_size=64), garbage()))
    return tensor, raw


@st.composite
def infer_requests(draw: st.DrawFn) -> v2.ModelInferRequest:
    chaos = draw(CHAOS)
    model = draw(names()) if is_wild(draw, chaos) else draw(st.sampled_from(MODELS))
    request = v2.ModelInferRequest(
        model_name=model,
        model_version=draw(versions()) if is_wild(draw, chaos) else draw(st.sampled_from(["", "1"])),
        id=draw(strings(1024)) if is_wild(draw, chaos) else draw(st.sampled_from(["", "req-1", "🙂"])),
    )
    set_parameters(request.parameters, draw(parameter_maps() if is_wild(draw, chaos) else sane_parameter_maps()))
    count = draw(st.integers(0, 3)) if is_wild(draw, chaos) else 1
    raws: list[bytes | None] = []
    for _ in range(count):
        tensor, raw = draw(input_tensor(model, chaos))
        request.inputs.append(tensor)
        raws.append(raw)
    if any(r is not None for r in raws):
        entries = [r if r is not None else b"" for r in raws]
        shift = draw(st.sampled_from([0, 1, -1])) if is_wild(draw, chaos) else 0
        entries = [*entries, b"\x00"] if shift > 0 else entries[:-1] if shift < 0 else entries
        request.raw_input_contents.extend(entries)
    if is_wild(draw, chaos):
        for _ in range(draw(st.integers(0, 2))):
            output = request.outputs.add(
                name=draw(st.one_of(st.sampled_from(["text_output", SHAPES.logits_output]), strings(1024)))
            )
            if draw(st.booleans()):
                output.parameters["classification"].CopyFrom(draw(infer_parameter("classification")))
            if draw(st.integers(0, 3)) == 2:
                set_parameters(output.parameters, draw(parameter_maps()))
    elif draw(st.booleans()):
        output = request.outputs.add(name="text_output" if model == TEXT_MODEL else SHAPES.logits_output)
        if model == IMAGE_MODEL and draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(1, 10))
    return request


@st.composite
def model_infer_calls(draw: st.DrawFn) -> Call:
    request = draw(infer_requests())
    target = draw(st.sampled_from(["main"] * 9 + ["explicit"]))
    return message_call(V2 + "ModelInfer", "unary", request, target=target)


@st.composite
def stream_infer_calls(draw: st.DrawFn) -> Call:
    requests = draw(st.lists(infer_requests(), min_size=1, max_size=3))
    cut = draw(st.one_of(st.none(), st.none(), st.integers(1, 3)))
    return message_call(V2 + "ModelStreamInfer", "bidi", *requests, cut_after=cut)


@st.composite
def v2_metadata_calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(["ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata",
                                   "ModelConfig", "ModelStatistics", "RepositoryIndex"]))  # fmt: skip
    target = draw(st.sampled_from(["main", "main", "explicit"]))
    name, version = draw(names()), draw(versions())
    message: Message
    if method in ("ServerLive", "ServerReady", "ServerMetadata"):
        message = getattr(v2, method + "Request")()
    elif method == "RepositoryIndex":
        message = v2.RepositoryIndexRequest(repository_name=draw(strings(1024)), ready=draw(st.booleans()))
    else:
        message = getattr(v2, method + "Request")(name=draw(st.one_of(st.just(""), st.just(name))), version=version)
    return message_call(V2 + method, "unary", message, target=target)


@st.composite
def repository_calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(["RepositoryModelLoad", "RepositoryModelUnload"]))
    message = getattr(v2, method + "Request")(repository_name=draw(strings(1024)), model_name=draw(names()))
    if draw(st.integers(0, 3)) == 0:
        for key in draw(st.lists(st.one_of(st.sampled_from(["config", "file:1/model.onnx", ""]), strings(256)),
                                 min_size=1, max_size=3)):  # fmt: skip
            choice = draw(st.sampled_from(["bool", "int64", "string", "bytes", "unset"]))
            entry = message.parameters[key]
            if choice == "bool":
                entry.bool_param = draw(st.booleans())
            elif choice == "int64":
                entry.int64_param = draw(ints(INT64))
            elif choice == "string":
                entry.string_param = draw(strings(4096))
            elif choice == "bytes":
                entry.bytes_param = draw(st.binary(max_size=64))
    return message_call(V2 + method, "unary", message, target=draw(st.sampled_from(["explicit", "explicit", "main"])))


UNIMPLEMENTED_V2 = {
    "SystemSharedMemoryStatus": lambda d: v2.SystemSharedMemoryStatusRequest(name=d(strings(256))),
    "SystemSharedMemoryRegister": lambda d: v2.SystemSharedMemoryRegisterRequest(
        name=d(strings(256)), key=d(strings(256)), offset=d(ints(UINT64)), byte_size=d(ints(UINT64))
    ),
    "SystemSharedMemoryUnregister": lambda d: v2.SystemSharedMemoryUnregisterRequest(name=d(strings(256))),
    "CudaSharedMemoryStatus": lambda d: v2.CudaSharedMemoryStatusRequest(name=d(strings(256))),
    "CudaSharedMemoryRegister": lambda d: v2.CudaSharedMemoryRegisterRequest(
        name=d(strings(256)), raw_handle=d(st.binary(max_size=64)), device_id=d(ints(INT64)), byte_size=d(ints(UINT64))
    ),
    "CudaSharedMemoryUnregister": lambda d: v2.CudaSharedMemoryUnregisterRequest(name=d(strings(256))),
    "TraceSetting": lambda d: v2.TraceSettingRequest(model_name=d(names())),
    "LogSettings": lambda d: v2.LogSettingsRequest(),
}


@st.composite
def unimplemented_calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(sorted(UNIMPLEMENTED_V2)))
    message = UNIMPLEMENTED_V2[method](draw)
    if method == "TraceSetting":
        message.settings[draw(strings(64))].value.extend(draw(st.lists(strings(256), max_size=3)))
    if method == "LogSettings":
        entry = message.settings[draw(st.sampled_from(["log_info", "log_verbose_level", "log_format", ""]))]
        entry.uint32_param = draw(ints(UINT32))
    return message_call(V2 + method, "unary", message)


@st.composite
def unknown_method_calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from([V2 + "NoSuchMethod", "/attnserve.v1.Nope/Generate", TEXT_SERVICE + "generate",
                                   "/inference.GRPCInferenceService/", "/grpc.health.v1.Health/Nope",
                                   "/attnserve.v2.TextGenerationService/Generate"]))  # fmt: skip
    kind = draw(st.sampled_from(["unary", "server_stream", "bidi"]))
    return Call(method, kind, (draw(garbage()),))


# --------------------------------------------------------------------------------------------
# Health and reflection
# --------------------------------------------------------------------------------------------

SERVICES = ("", "attnserve.v1.TextGenerationService", "attnserve.v1.ImageClassificationService",
            "attnserve.v1.EmbeddingService", "attnserve.v1.ModelService", "inference.GRPCInferenceService",
            "grpc.health.v1.Health", TEXT_MODEL, IMAGE_MODEL)  # fmt: skip


@st.composite
def health_calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(["Check", "Check", "List", "Watch"]))
    service = draw(st.one_of(st.sampled_from(SERVICES), strings(4096)))
    target = draw(st.sampled_from(["main", "explicit"]))
    if method == "List":
        return message_call(HEALTH + "List", "unary", health_pb2.HealthListRequest(), target=target)
    request = health_pb2.HealthCheckRequest(service=service)
    if method == "Check":
        return message_call(HEALTH + "Check", "unary", request, target=target)
    if draw(st.booleans()):
        return message_call(HEALTH + "Watch", "server_stream", request, target=target, timeout=WATCH_CUT_S)
    return message_call(HEALTH + "Watch", "server_stream", request, target=target, cut_after=1)


SYMBOLS = ("attnserve.v1.TextGenerationService", "inference.GRPCInferenceService", "inference.ModelInferRequest",
           "inference.ModelConfig", "attnserve.v1.GenerateRequest.parameters", "grpc.health.v1.Health.Check",
           "grpc.reflection.v1alpha.ServerReflection", "google.protobuf.Any", "attnserve.v1", ".")  # fmt: skip
FILES = ("attnserve/v1/text_generation.proto", "attnserve/v1/image_classification.proto", "attnserve/v1/models.proto",
         "inference/grpc_service.proto", "inference/model_config.proto", "grpc_health/v1/health.proto",
         "grpc_reflection/v1alpha/reflection.proto", "google/protobuf/descriptor.proto", "")  # fmt: skip


@st.composite
def reflection_requests(draw: st.DrawFn) -> reflection_pb2.ServerReflectionRequest:
    request = reflection_pb2.ServerReflectionRequest(host=draw(st.one_of(st.just(""), strings(1024))))
    which = draw(st.sampled_from(["file_by_filename", "file_containing_symbol", "file_containing_extension",
                                  "all_extension_numbers_of_type", "list_services", "none"]))  # fmt: skip
    text = st.one_of(st.sampled_from(SYMBOLS if which != "file_by_filename" else FILES), strings(4096))
    if which == "file_containing_extension":
        request.file_containing_extension.containing_type = draw(text)
        request.file_containing_extension.extension_number = draw(ints(INT32))
    elif which != "none":
        setattr(request, which, draw(text))
    return request


@st.composite
def reflection_calls(draw: st.DrawFn) -> Call:
    requests = draw(st.lists(reflection_requests(), min_size=1, max_size=3))
    cut = draw(st.one_of(st.none(), st.none(), st.just(1)))
    target = draw(st.sampled_from(["main", "explicit"]))
    return message_call(REFLECTION, "bidi", *requests, target=target, cut_after=cut)


# --------------------------------------------------------------------------------------------
# Every call
# --------------------------------------------------------------------------------------------


@st.composite
def calls(draw: st.DrawFn) -> Call:
    """Any call: a well-formed message of any RPC (inference RPCs the most often), perhaps mutated,
    and now and then sent with a tiny deadline."""
    call = draw(
        st.one_of(
            generate_calls(), generate_calls(), classify_calls(), classify_calls(), embed_calls(), explain_calls(),
            model_infer_calls(), model_infer_calls(), model_infer_calls(), stream_infer_calls(), stream_infer_calls(),
            model_service_calls(),
            v2_metadata_calls(), repository_calls(), unimplemented_calls(), health_calls(), reflection_calls(),
            unknown_method_calls(),
        )
    )  # fmt: skip
    if draw(st.integers(0, 6)) == 3 and call.payloads:
        index = draw(st.integers(0, len(call.payloads) - 1))
        body, note = draw(mutated(call.payloads[index]))
        call.payloads = (*call.payloads[:index], body, *call.payloads[index + 1 :])
        call.note = note
    if draw(st.integers(0, 29)) == 17 and call.cut_after is None and call.timeout == CALL_TIMEOUT_S:
        call.timeout = draw(st.sampled_from(TINY_DEADLINES_S))
    # Each message is at most 1 MiB: a longer one is cut (and so becomes a mutated message).
    if any(len(p) > MAX_PAYLOAD for p in call.payloads):
        call.payloads = tuple(p[:MAX_PAYLOAD] for p in call.payloads)
        call.note = (call.note + "; " if call.note else "") + "mutated: cut to 1 MiB"
    return call


SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


def run_fuzz(fuzzer: Fuzzer, examples: int, seed_value: int, budget_s: float | None, max_requests: int) -> None:
    """``examples`` hypothesis examples from ``seed_value``; each sends one call (none once the budget is spent)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s

    @seed(seed_value)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=SUPPRESSED,
        print_blob=False,
    )
    @given(call=calls())
    def body(call: Call) -> None:
        if fuzzer.requests >= max_requests or (deadline is not None and time.monotonic() > deadline):
            return
        fuzzer.send(call)

    body()


@pytest.fixture(scope="module")
def shapes_from_server(fuzz_servers: dict[str, Any]) -> Shapes:
    """The image model's input and output names, as the server describes them."""
    global SHAPES  # noqa: PLW0603 (the strategies read it)
    with grpc.insecure_channel(fuzz_servers["main"].address) as channel:
        meta = channel.unary_unary(
            V2 + "ModelMetadata",
            request_serializer=v2.ModelMetadataRequest.SerializeToString,
            response_deserializer=v2.ModelMetadataResponse.FromString,
        )(v2.ModelMetadataRequest(name=IMAGE_MODEL), timeout=10)
    pixel = next(t for t in meta.inputs if t.datatype == "FP32")
    SHAPES = Shapes(pixel.name, meta.outputs[0].name, int(pixel.shape[1]), int(pixel.shape[2]))
    return SHAPES


def first_traceback(log: str) -> list[str]:
    """The log line before the first traceback, the traceback and its exception line (lines cut at 300)."""
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    end = next((i for i in range(at + 1, len(lines)) if not lines[i].startswith(" ")), len(lines) - 1)
    return [line[:300] for line in lines[max(0, at - 1) : end + 1]]


def finish(fuzzer: Fuzzer, servers: dict[str, Any], record_property: Any, report: Any, title: str) -> None:
    problems = check_servers(servers)
    summary = fuzzer.summary()
    record_property("fuzz_requests", fuzzer.requests)
    record_property("fuzz_codes", dict(fuzzer.codes))
    record_property("fuzz_known_defects", dict(fuzzer.known))
    for name, server in servers.items():
        log = server.stderr()
        logged = log.count("Traceback")
        if logged:
            summary += f"\n{name} server log: {logged} tracebacks; the first:\n    " + "\n    ".join(
                first_traceback(log)
            )
    report(title, summary)
    if fuzzer.failures() or problems:
        pytest.fail("\n".join([summary, *problems]), pytrace=False)


def test_fuzz_every_rpc(
    fuzz_servers: dict[str, Any], shapes_from_server: Shapes, record_property: Any, fuzz_report: Any
) -> None:
    """The fast tier: a fixed seed, at most 3,000 requests and about 75 s of sending."""
    fuzzer = Fuzzer({name: server.address for name, server in fuzz_servers.items()})
    try:
        run_fuzz(fuzzer, FAST_EXAMPLES, 0, FAST_BUDGET_S, FAST_MAX_REQUESTS)
    finally:
        fuzzer.close()
    assert fuzzer.requests >= min(FAST_EXAMPLES, FAST_MAX_REQUESTS) // 3, fuzzer.summary()
    finish(fuzzer, fuzz_servers, record_property, fuzz_report, "fuzz: every RPC (fast tier)")


@pytest.mark.fuzz_long
@pytest.mark.timeout(600 + LONG_REQUESTS // 5)
@pytest.mark.skipif(LONG_REQUESTS <= 0, reason="set ATTNSERVE_FUZZ_REQUESTS (make fuzz) to run the long tier")
def test_fuzz_long(
    fuzz_servers: dict[str, Any], shapes_from_server: Shapes, record_property: Any, fuzz_report: Any
) -> None:
    """The long tier: ``ATTNSERVE_FUZZ_REQUESTS`` requests, batches of fresh seeds 1, 2, 3, ..."""
    fuzzer = Fuzzer({name: server.address for name, server in fuzz_servers.items()})
    try:
        batch = 0
        while fuzzer.requests < LONG_REQUESTS:
            batch += 1
            run_fuzz(fuzzer, min(LONG_BATCH, LONG_REQUESTS - fuzzer.requests), batch, None, LONG_REQUESTS)
            if check_servers(fuzz_servers):
                break
    finally:
        fuzzer.close()
    finish(fuzzer, fuzz_servers, record_property, fuzz_report, f"fuzz: long tier ({LONG_REQUESTS} requests)")
