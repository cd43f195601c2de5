"""From one input's token vectors to its input-wise vector, and unit length on request."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from attnserve_server.model_format.embeddings import Pooling


def pool(tokens: npt.NDArray[np.float32], pooling: Pooling, *, class_token: bool) -> npt.NDArray[np.float32]:
    """One vector ``(D,)`` of ``tokens`` ``(T, D)`` (padding already removed).

    - ``mean``: the average of the tokens; a class token (ViT) is left out, as timm's ``avg`` pool does;
    - ``last``: the last token (a causal model's only token that has seen the whole input);
    - ``cls``: the class token (token 0).
    """
    if pooling in ("cls", "last"):
        picked: npt.NDArray[np.float32] = tokens[0] if pooling == "cls" else tokens[-1]
        return picked
    if pooling == "mean":
        body = tokens[1:] if class_token else tokens
        mean: npt.NDArray[np.float32] = body.mean(axis=0, dtype=np.float64).astype(np.float32)
        return mean
    raise ValueError(f"pooling {pooling!r} gives no single vector")


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Each vector along the last axis scaled to unit Euclidean length (a zero vector stays zero)."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=-1, keepdims=True)
    scaled: npt.NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return scaled
