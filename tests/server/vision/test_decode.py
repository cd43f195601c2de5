"""decode_image: what it accepts and how it refuses untrusted bytes (no server needed)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from attnserve_server.errors import InvalidArgumentError
from attnserve_server.vision.decode import decode_image

LIMIT = 1_000_000


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR is rewritten (with a valid CRC) to claim ``width`` × ``height``."""
    data = bytearray(encode(Image.new("L", (4, 4), 7), "PNG"))
    # Signature (8) + length (4) + b"IHDR" (4), then width and height, then 5 more bytes and the CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bmp_of_size(width: int, height: int) -> bytes:
    """A BMP header (24-bit, uncompressed) of the given size with no pixel data after it."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decodes_the_supported_formats(fmt: str, mode: str) -> None:
    image = decode_image(encode(Image.new(mode, (20, 10), 200), fmt), index=0, max_pixels=LIMIT)
    assert image.size == (20, 10)
    assert image.format == fmt


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "image 3 is empty"),
        (b"hello, this is text", "image 3 is not a PNG, JPEG, WebP or BMP image"),
        (encode(Image.new("L", (8, 8)), "GIF"), "image 3 is a GIF file, an unsupported format"),
        (encode(Image.new("L", (8, 8)), "TIFF"), "image 3 is a TIFF file, an unsupported format"),
        (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:-30], "image 3 is truncated or corrupt"),
        (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200], "image 3 is truncated or corrupt"),
        (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:-100], "image 3 is truncated or corrupt"),
    ],
    ids=["empty", "text", "gif", "tiff", "truncated-png", "truncated-jpeg-header", "truncated-jpeg"],
)
def test_bad_data_is_invalid_argument_naming_the_image(data: bytes, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        decode_image(data, index=3, max_pixels=LIMIT)


@pytest.mark.parametrize(("width", "height"), [(0, 0), (0, 5), (5, 0)])
@pytest.mark.parametrize("fmt", ["BMP", "PNG"])
def test_zero_sized_images_are_refused(fmt: str, width: int, height: int) -> None:
    data = bmp_of_size(width, height) if fmt == "BMP" else png_claiming(width, height)
    with pytest.raises(InvalidArgumentError, match=f"image 0 is {width}×{height} pixels; it must have at least one"):
        decode_image(data, index=0, max_pixels=LIMIT)


def test_pixel_limit_is_checked_on_the_header_before_decoding() -> None:
    # The header claims 2000 × 1000 but holds 4 × 4 pixels of data: had it been decoded, the
    # error would say "truncated".
    with pytest.raises(InvalidArgumentError, match="larger than the server's limit of 1000000 pixels"):
        decode_image(png_claiming(2000, 1000), index=0, max_pixels=LIMIT)
    assert decode_image(png_claiming(4, 4), index=0, max_pixels=16).size == (4, 4)


def test_pillows_own_decompression_bomb_error_never_escapes() -> None:
    # 10⁵ × 10⁵ is over twice Pillow's MAX_IMAGE_PIXELS: Image.open itself raises DecompressionBombError.
    with pytest.raises(InvalidArgumentError, match="larger than the server's limit"):
        decode_image(png_claiming(100_000, 100_000), index=0, max_pixels=10**12)
