"""The parity check at load: a model on another engine must agree with ONNX Runtime on the same file.

Before a version that runs on OpenVINO serves, the loader runs it and an ONNX Runtime session of
the same file on a few generated inputs, and compares the logits:

- ``max |Δlogit| <= tolerance × max(1, max |logit_ORT|)``: the tolerance is relative to the size of
  the logits (as the exporter's parity check states it), so that models whose logits run to 20 are
  held to the same standard as those whose logits stay near 1. Defaults per precision:
  :data:`DEFAULT_TOLERANCE`; a model's ``config.yaml`` may set ``parity_tolerance``.
- the same top-1 class wherever ONNX Runtime's top-1/top-2 margin is above :data:`TOP1_MARGIN`
  (below it, the two classes are a near tie that any rounding may swap).

A version that fails does not load, and the reason gives the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attnserve_server.runtime import Precision

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per value); through a dozen transformer
# blocks that reaches about 1 % of the logits' scale (measured: 1.2 % on the shipped digit ViT,
# 0.7 % on the Swin), so 5 % leaves room without letting a broken graph through. f32 reorders sums
# only: differences stay near 1e-6 of the scale.
DEFAULT_TOLERANCE: dict[Precision, float] = {"bf16": 5e-2, "f32": 1e-4}
TOP1_MARGIN = 0.05
# How many generated inputs the check runs (one batch): enough to catch a broken graph, cheap at load.
PARITY_INPUTS = 8


@dataclass(frozen=True)
class ParityReport:
    """How a candidate engine's logits compare with ONNX Runtime's on the same inputs."""

    inputs: int
    max_abs_diff: float
    scale: float  # max(1, max |reference logit|)
    tolerance: float  # relative to ``scale``
    decided: int  # inputs whose reference top-1/top-2 margin is above TOP1_MARGIN
    top1_mismatches: int  # of those, how many have another top-1 on the candidate

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.scale

    @property
    def passed(self) -> bool:
        return self.relative_diff <= self.tolerance and self.top1_mismatches == 0

    def summary(self) -> str:
        """The figures, for the load log line or the reason a load is refused."""
        return (
            f"max |Δlogit| {self.max_abs_diff:.3g} = {self.relative_diff:.3g} × max(1, max |logit|) "
            f"(tolerance {self.tolerance:g}); top-1 differs on {self.top1_mismatches} of the {self.decided} "
            f"inputs (of {self.inputs}) whose ONNX Runtime top-1/top-2 margin is > {TOP1_MARGIN:g}"
        )


def compare_logits(
    reference: npt.NDArray[np.floating], candidate: npt.NDArray[np.floating], tolerance: float
) -> ParityReport:
    """Compare ``(batch, classes)`` logits of the candidate engine with the reference (ONNX Runtime)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits of shape {candidate.shape}, ONNX Runtime's are {reference.shape}")
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    cand = candidate.astype(np.float64).reshape(len(candidate), -1)
    if ref.shape[1] > 1:
        top2 = np.sort(ref, axis=-1)[:, -2:]  # (batch, 2): second best, best
        decided = (top2[:, 1] - top2[:, 0]) > TOP1_MARGIN
    else:  # one output per input: there is no top-1 to disagree on
        decided = np.zeros(len(ref), dtype=bool)
    mismatched = decided & (ref.argmax(axis=-1) != cand.argmax(axis=-1))
    return ParityReport(
        inputs=len(ref),
        max_abs_diff=float(np.abs(ref - cand).max()) if ref.size else 0.0,
        scale=max(1.0, float(np.abs(ref).max()) if ref.size else 0.0),
        tolerance=tolerance,
        decided=int(decided.sum()),
        top1_mismatches=int(mismatched.sum()),
    )
