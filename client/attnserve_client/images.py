"""Turn what a caller passes as an image into the encoded bytes that Classify sends.

Paths and bytes need nothing beyond the standard library. PIL images and numpy arrays are
encoded as PNG with Pillow, the optional extra ``attnserve-client[images]``, imported only then.
An object can only be a PIL image or a numpy array if its module is already imported, so the
type checks below look in ``sys.modules`` and never import anything themselves.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TYPE_CHECKING, Any, Union

from attnserve_client.errors import InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

__all__ = ["ImageInput", "encode_image"]

# What classify() accepts: a path, encoded bytes, a PIL image or a uint8 array (H×W or H×W×3).
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image.Image", "npt.NDArray[np.uint8]"]

EXTRA_HINT = "install the optional extra: pip install 'attnserve-client[images]'"


def _is_instance(value: object, module: str, name: str) -> bool:
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(value, cls)


def _pillow(what: str) -> Any:
    try:
        from PIL import Image  # noqa: PLC0415 (the optional extra, imported only when needed)
    except ImportError:
        raise ImportError(f"encoding {what} as PNG needs Pillow: {EXTRA_HINT}") from None
    return Image


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image: object, index: int = 0) -> bytes:
    """The bytes to send for one image; raises InvalidArgumentError (naming ``index``) if unusable.

    - ``str`` or ``os.PathLike``: the file's bytes, sent as they are (the server decodes them).
    - ``bytes``, ``bytearray``, ``memoryview``: an encoded image, sent as it is.
    - a PIL image, or a numpy ``uint8`` array of shape H×W (grey) or H×W×3 (RGB): encoded as PNG.
    """
    where = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise InvalidArgumentError(f"{where}: cannot read {os.fspath(image)!r}: {exc.strerror or exc}") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif _is_instance(image, "PIL.Image", "Image"):
        _pillow("a PIL image")
        data = _png(image)
    elif _is_instance(image, "numpy", "ndarray"):
        data = _encode_array(image, where)
    else:
        raise InvalidArgumentError(
            f"{where} is a {type(image).__name__}; pass a path, encoded bytes, a PIL image "
            "or a numpy uint8 array (H×W or H×W×3)"
        )
    if not data:
        raise InvalidArgumentError(f"{where} is empty")
    return data


def _encode_array(array: Any, where: str) -> bytes:
    if str(array.dtype) != "uint8":
        raise InvalidArgumentError(f"{where}: a numpy image must have dtype uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise InvalidArgumentError(f"{where}: a numpy image must be H×W or H×W×3, got shape {array.shape}")
    if 0 in array.shape:
        raise InvalidArgumentError(f"{where}: a numpy image must not be empty, got shape {array.shape}")
    pil = _pillow("a numpy array")
    return _png(pil.fromarray(array, mode="L" if array.ndim == 2 else "RGB"))
