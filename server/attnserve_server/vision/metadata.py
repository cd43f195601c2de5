"""The ``image_classification`` section of ``metadata.json``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from attnserve_server.model_format.metadata import TaskSection
from attnserve_server.model_format.preprocess import InputSpec, ResampleName, ResizePolicy

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

    @model_validator(mode="after")
    def _consistent(self) -> ImageClassificationMetadata:
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
        )
