"""Shared fixtures for the export tests: a tiny corpus, a tokenizer trained on it, and a way to tamper
with an exported graph."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from tokenizers import Tokenizer

from attnserve_export.tokenizer import train_bpe_tokenizer

CORPUS = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n"
    "HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles.\n\n"
)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return CORPUS * 20


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus_text: str) -> Tokenizer:
    return train_bpe_tokenizer([corpus_text], vocab_size=400)


def shift_output(model: onnx.ModelProto, output: str, size: int, amount: float) -> None:
    """Tamper with ``model`` in place: add ``amount`` to entry 0 of the last axis (``size`` long) of
    graph output ``output``, so ONNX Runtime disagrees with PyTorch by exactly that much."""
    producer = next(node for node in model.graph.node if output in node.output)
    raw = f"{output}.untampered"
    producer.output[list(producer.output).index(output)] = raw
    shift = np.zeros(size, dtype=np.float32)
    shift[0] = amount
    model.graph.initializer.append(numpy_helper.from_array(shift, name=f"{output}.tamper"))
    model.graph.node.append(helper.make_node("Add", [raw, f"{output}.tamper"], [output], name="tamper"))


@pytest.fixture(scope="session")
def tamper() -> Callable[[onnx.ModelProto, str, int, float], None]:
    """:func:`shift_output`: make an exported graph miss the parity check by a known amount."""
    return shift_output
