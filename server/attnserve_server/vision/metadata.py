"""The ``image_classification`` section of ``metadata.json``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from attnserve_server.model_format.embeddings import EmbeddingsGraph
from attnserve_server.model_format.explain import ExplainGraph
from attnserve_server.model_format.metadata import TaskSection
from attnserve_server.model_format.preprocess import InputSpec, ResampleName, ResizePolicy, Transparency

IMAGE_CLASSIFICATION = "image-classification"


class ImageClassificationMetadata(TaskSection):
    """The ``image_classification`` section: the graph's tensors, the labels file and the preprocessing."""

    TASK: ClassVar[str] = IMAGE_CLASSIFICATION

    labels_file: str
    num_classes: PositiveInt
    input_name: str
    output_name: str
    channels: Literal[1, 3]
    height: PositiveInt
    width: PositiveInt
    resample: ResampleName
    resize_policy: ResizePolicy
    crop_ratio: PositiveFloat | None = Field(default=None, le=1)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Optional, for models imported from Hugging Face folders (see model_format.preprocess); unset
    # fields are not written, so the metadata of other models is unchanged.
    shortest_edge: PositiveInt | None = None
    resize_to: tuple[PositiveInt, PositiveInt] | None = None
    transparency: Transparency | None = None
    # The graph that exposes hidden states for the Embed RPC (model_format.embeddings); unset: none.
    embeddings: EmbeddingsGraph | None = None
    # The graph that returns attention probabilities for the Explain RPC (model_format.explain); unset: none.
    explain: ExplainGraph | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ImageClassificationMetadata:
        self._check_resize_then_center_crop()
        if self.transparency is not None and self.channels != 3:
            raise ValueError("transparency is only meaningful with 3 channels")
        if self.resize_policy == "resize_center_crop" and self.crop_ratio is None:
            raise ValueError("resize_policy resize_center_crop needs crop_ratio")
        if self.resize_policy == "resize" and self.crop_ratio is not None:
            raise ValueError("crop_ratio is only meaningful with resize_policy resize_center_crop")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} needs one value per channel ({self.channels})")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self

    def _check_resize_then_center_crop(self) -> None:
        """``shortest_edge`` or ``resize_to``, exactly with that policy, and a crop inside the resized image."""
        if self.resize_policy != "resize_then_center_crop":
            if self.shortest_edge is not None or self.resize_to is not None:
                raise ValueError("shortest_edge and resize_to are only meaningful with resize_then_center_crop")
            return
        if (self.shortest_edge is None) == (self.resize_to is None):
            raise ValueError("resize_policy resize_then_center_crop needs one of shortest_edge and resize_to")
        if self.crop_ratio is not None:
            raise ValueError("crop_ratio is only meaningful with resize_policy resize_center_crop")
        if self.shortest_edge is not None and self.shortest_edge < max(self.height, self.width):
            raise ValueError("shortest_edge must be at least the larger of height and width (the crop)")
        if self.resize_to is not None and (self.resize_to[0] < self.height or self.resize_to[1] < self.width):
            raise ValueError("resize_to must be at least height x width (the crop)")

    @classmethod
    def from_input_spec(
        cls, spec: InputSpec, *, labels_file: str, num_classes: int, input_name: str, output_name: str
    ) -> ImageClassificationMetadata:
        """The section for a model that takes ``spec`` (how the exporter builds it)."""
        return cls(
            labels_file=labels_file,
            num_classes=num_classes,
            input_name=input_name,
            output_name=output_name,
            channels=spec.channels,  # type: ignore[arg-type]  # 1 or 3: validated here
            height=spec.height,
            width=spec.width,
            resample=spec.resample,
            resize_policy=spec.resize_policy,
            crop_ratio=spec.crop_ratio,
            mean=spec.mean,
            std=spec.std,
            shortest_edge=spec.shortest_edge,
            resize_to=spec.resize_to,
            transparency=spec.transparency,
        )

    def input_spec(self) -> InputSpec:
        return InputSpec(
            channels=self.channels,
            height=self.height,
            width=self.width,
            resample=self.resample,
            resize_policy=self.resize_policy,
            crop_ratio=self.crop_ratio,
            mean=self.mean,
            std=self.std,
            shortest_edge=self.shortest_edge,
            resize_to=self.resize_to,
            transparency=self.transparency,
        )
