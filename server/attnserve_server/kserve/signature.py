"""The tensors a model shows through the KServe v2 API, derived from its attnserve metadata.

- Image classifiers take exactly one of two inputs: the preprocessed pixel tensor (FP32, the
  ONNX graph's own input) or ``image`` (BYTES, one encoded image per element, decoded and
  preprocessed on the server). Their output is the graph's logits.
- Text generators follow the generate convention: BYTES ``text_input`` in, BYTES ``text_output``
  out, sampling settings as request parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnserve_server.repository import IMAGE_CLASSIFICATION, Model, ModelVersion

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
ENCODED_IMAGE = "image"
# ONNX Runtime runs every model; the name is the one Triton gives ONNX models.
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: ``shape`` includes the batch dimension; -1 is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Signature:
    """A model version's inputs and outputs, and the largest batch it takes (0: no batch dimension)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    # One request may get many responses (streamed generation).
    decoupled: bool = False

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


def encoded_image_input(pixel_input: str) -> str:
    """The name of the encoded-image input: ``image``, unless the graph's own input is called that."""
    return ENCODED_IMAGE if pixel_input != ENCODED_IMAGE else f"{ENCODED_IMAGE}_bytes"


def signature(model: Model, version: ModelVersion) -> Signature:
    """The v2 view of one loaded version."""
    if version.metadata.task == IMAGE_CLASSIFICATION:
        meta = version.image_classification
        return Signature(
            inputs=(
                TensorSpec(meta.input_name, "FP32", (-1, meta.channels, meta.height, meta.width), optional=True),
                TensorSpec(encoded_image_input(meta.input_name), "BYTES", (-1,), optional=True),
            ),
            outputs=(TensorSpec(meta.output_name, "FP32", (-1, meta.num_classes)),),
            max_batch_size=model.max_images_per_request,
        )
    return Signature(
        inputs=(TensorSpec(TEXT_INPUT, "BYTES", (1,)),),
        outputs=(TensorSpec(TEXT_OUTPUT, "BYTES", (1,)),),
        max_batch_size=0,
        decoupled=True,
    )
