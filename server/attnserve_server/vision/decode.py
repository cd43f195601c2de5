"""Decoding untrusted image bytes with Pillow, safely.

Only PNG, JPEG, WebP and BMP are accepted: Pillow is told to try only those plugins, so other
parsers never see client data. The pixel limit is checked on the header, which ``Image.open``
reads lazily, BEFORE any pixel is decoded: a 100-byte PNG can claim 10⁵ × 10⁵ pixels.
"""

from __future__ import annotations

import io
import struct

from PIL import Image, UnidentifiedImageError

from attnserve_server.errors import InvalidArgumentError

FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
FORMAT_NAMES = "PNG, JPEG, WebP or BMP"

# Magic numbers of formats people commonly try, so the message can say "unsupported" rather than
# "not an image". Pillow never parses these.
_KNOWN_UNSUPPORTED: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
)


def _unsupported(data: bytes) -> str | None:
    for magic, name in _KNOWN_UNSUPPORTED:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"avif", b"mif1"):
        return "HEIF/AVIF"
    return None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or BMP header, read by hand: Pillow refuses a zero-sized
    header as "cannot identify", and the caller deserves to hear what is really wrong."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return int(width), abs(int(height))  # a negative height means top-down rows
    return None


def decode_image(data: bytes, *, index: int, max_pixels: int) -> Image.Image:
    """Decode one encoded image; raise InvalidArgumentError naming ``index`` and what to fix.

    Rejects empty data, data that is not a PNG/JPEG/WebP/BMP image, images of zero size, images
    whose header claims more than ``max_pixels`` pixels (before decoding them) and truncated or
    corrupt files. Never lets Pillow's own DecompressionBombError through (Pillow raises it above
    twice its ``MAX_IMAGE_PIXELS``, 179 MP, whatever ``max_pixels`` says, and only warns between
    89 and 179 MP; the default limit is below both, and ``warnings.catch_warnings`` is not
    thread-safe, so the warning is left alone).
    """
    where = f"image {index}"
    if not data:
        raise InvalidArgumentError(f"{where} is empty; send the bytes of a {FORMAT_NAMES} file")
    unsupported = _unsupported(data)
    if unsupported is not None:
        raise InvalidArgumentError(
            f"{where} is a {unsupported} file, an unsupported format; convert it to {FORMAT_NAMES}"
        )
    too_big = (
        f"{where} is larger than the server's limit of {max_pixels} pixels "
        "(--max-image-pixels / ATTNSERVE_MAX_IMAGE_PIXELS); downscale it before sending"
    )
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise InvalidArgumentError(too_big) from None
    except UnidentifiedImageError:
        size = _declared_size(data)
        if size is not None and 0 in size:
            raise InvalidArgumentError(
                f"{where} is {size[0]}×{size[1]} pixels; it must have at least one pixel"
            ) from None
        raise InvalidArgumentError(f"{where} is not a {FORMAT_NAMES} image (unrecognised or corrupt data)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's ways of saying "bad header"
        raise InvalidArgumentError(f"{where} is truncated or corrupt (in its header): {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidArgumentError(f"{where} is {width}×{height} pixels; it must have at least one pixel")
    if width * height > max_pixels:
        raise InvalidArgumentError(f"{too_big} ({width}×{height} = {width * height} pixels)")
    try:
        image.load()
    except Image.DecompressionBombError:
        raise InvalidArgumentError(too_big) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # "image file is truncated", broken chunks, bad CRCs, ...
        raise InvalidArgumentError(f"{where} is truncated or corrupt ({image.format}): {exc}") from None
    return image
