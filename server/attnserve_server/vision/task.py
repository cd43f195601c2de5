"""The image-classification row of the task table, and what GetModel says about an image model."""

from __future__ import annotations

from dataclasses import dataclass

from attnserve_server.loaded import Model
from attnserve_server.model_format.preprocess import InputSpec
from attnserve_server.task import Task
from attnserve_server.vision.classifier import ImageClassifier
from attnserve_server.vision.embeddings import image_embeddings
from attnserve_server.vision.explain import image_explain
from attnserve_server.vision.handler import ImageClassificationHandler
from attnserve_server.vision.loader import load_image_classification
from attnserve_server.vision.metadata import ImageClassificationMetadata
from attnserve_server.vision.v2 import image_signature, infer_image


@dataclass(frozen=True)
class ImageClassificationInfo:
    """What a client needs to know to call an image model."""

    labels: tuple[str, ...]
    input: InputSpec
    max_images_per_request: int


def describe_image_model(model: Model) -> ImageClassificationInfo:
    classifier = model.version().engine_as(ImageClassifier)
    return ImageClassificationInfo(
        labels=classifier.spec.labels,
        input=classifier.spec.input,
        max_images_per_request=model.max_images_per_request,
    )


IMAGE_CLASSIFICATION_TASK: Task[ImageClassificationHandler] = Task(
    section=ImageClassificationMetadata,
    load=load_image_classification,
    handler=ImageClassificationHandler.of,
    signature=image_signature,
    infer=infer_image,
    embeddings=image_embeddings,
    explain=image_explain,
    describe=describe_image_model,
)
