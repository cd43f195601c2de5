"""Int8 dynamic quantization of a repository entry, with what it costs in accuracy and gains in speed.

ONNX Runtime's dynamic quantization stores the weights of MatMul and Gemm nodes as int8 and
quantizes their activations on the fly (here each row on its own, so that batching never changes
a result), so it needs no calibration data. The quantized graph is
written as a new version of the same entry (the server then serves it by default), but only
when it is faster than the fp32 version it came from and its accuracy cost is within the
tolerances: test bits per character for a text generator (through the server's KV cache, in
either layout: :mod:`attnserve_export.quantize_text`), test accuracy for a classifier, both
measured here with ONNX Runtime on the fp32 and int8 graphs of the same test split.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from attnserve_export.image_data import read_image_folder, to_batch
from attnserve_export.image_train import load_splits
from attnserve_export.onnx_export import next_version_dir
from attnserve_export.quantize_rows import quantize_rows
from attnserve_export.quantize_text import (
    AGREEMENT_NEW_TOKENS,
    agreement_prompts,
    greedy_agreement,
    greedy_tokens,
    kv_cache_bpc,
    load_generator,
    runner,
    speed_cases,
)
from attnserve_export.text_data import load_corpus
from attnserve_server.model_format.metadata import MetadataError, ModelMetadata, read_metadata, write_metadata
from attnserve_server.task_table import TaskTable
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.vision.metadata import ImageClassificationMetadata

logger = logging.getLogger(__name__)

# Attention and MLP projections: where nearly all the weights and FLOPs are. Convolutions (the
# ViT patch embedding) stay fp32: ONNX Runtime's ConvInteger is slower than its fp32 Conv.
QUANTIZED_OPS = ("MatMul", "Gemm")
MAX_BPC_INCREASE = 0.05
MAX_ACCURACY_DROP = 0.5  # percentage points
SPEED_REPEATS = 30


@dataclass
class SpeedCase:
    """Median latency of one input shape, fp32 against int8 (in-process ONNX Runtime)."""

    name: str
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


@dataclass
class QuantizationReport:
    """What ``quantize`` measured and decided. ``metric`` is ``test_bpc`` or ``test_accuracy`` (%)."""

    name: str
    source_version: str
    task: str
    metric: str
    fp32: float
    int8: float
    fp32_bytes: int
    int8_bytes: int
    threads: int
    speed: list[SpeedCase] = field(default_factory=list)
    max_cost: float = 0.0
    version: str | None = None  # set once written
    # Text: greedy continuations of test prompts by both graphs (quantize_text.greedy_agreement).
    greedy_agreement: dict[str, Any] | None = None
    excluded_nodes: list[str] = field(default_factory=list)  # MatMul/Gemm nodes kept in fp32
    reasons: list[str] = field(default_factory=list)  # why it was rejected; empty if accepted

    @property
    def cost(self) -> float:
        """How much worse int8 is: bpc added, or accuracy points lost (negative: it got better)."""
        return self.int8 - self.fp32 if self.metric == "test_bpc" else self.fp32 - self.int8

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def judge(self, max_cost: float) -> None:
        """Fill ``reasons``: the variant must be faster in every case and cost at most ``max_cost``."""
        self.max_cost = max_cost
        self.reasons = []
        slower = [c.name for c in self.speed if c.speedup <= 1.0]
        if slower:
            self.reasons.append(f"not faster than fp32 for: {', '.join(slower)}")
        if self.cost > max_cost:
            unit = "bits per character" if self.metric == "test_bpc" else "accuracy points"
            self.reasons.append(f"costs {self.cost:.4f} {unit}, more than the {max_cost} allowed")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["speed"] = [{**asdict(c), "speedup": round(c.speedup, 3)} for c in self.speed]
        out |= {"cost": self.cost, "accepted": self.accepted}
        return out


def quantize_file(source: Path, target: Path, exclude: Sequence[str] = ()) -> None:
    """Write the int8 dynamically quantized graph of ``source`` to ``target``; nodes named in ``exclude`` stay fp32.

    ONNX Runtime's pre-processing runs first: shape inference, and constant folding, which turns
    the GPT export's ``Transpose(weight)`` inputs into plain initializers, the only MatMul weights
    the quantizer recognises. Only MatMul and Gemm nodes with a constant weight are quantized;
    a product of two activations has no weight to store in int8 and stays as it is. Activations
    are then quantized per row (:mod:`attnserve_export.quantize_rows`), so that a row's result
    does not depend on the rows batched with it.
    """
    prepared = target.with_name(target.name + ".prep.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(
        prepared,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,  # one scale per output column: much less error than one per matrix
        op_types_to_quantize=list(QUANTIZED_OPS),
        # The quantizer first rewrites a Gemm as a MatMul named "<gemm name>_MatMul": exclude both names.
        nodes_to_exclude=[*exclude, *(f"{name}_MatMul" for name in exclude)],
    )
    prepared.unlink()
    model = onnx.load(str(target))
    quantize_rows(model)
    onnx.save(model, str(target))


def output_layer_nodes(model_path: Path, vocab_size: int) -> list[str]:
    """Names of the MatMul/Gemm nodes whose constant weight maps onto ``vocab_size`` outputs: the LM head.

    Both GPT graph layouts compute the logits as one such product (a tied ``Gemm(x, wte, transB=1)``
    in ``shared_buffer``, a ``MatMul`` in ``concat``); an embedding lookup (Gather) is not one.
    """
    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    heads = []
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        dims = weights[node.input[1]]
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if len(dims) == 2 and dims[0 if trans_b else 1] == vocab_size:
            heads.append(node.name)
    return heads


def _session(path: Path, threads: int) -> ort.InferenceSession:
    # The server's settings (attnserve_server.runtime), so the speed measured is the speed served.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


class Runs(Protocol):
    """What the speed comparison calls: an ONNX Runtime session, or an adapter with the same ``run``."""

    def run(self, output_names: Any, feed: Any) -> Any: ...


def compare_speed(fp32: Runs, int8: Runs, cases: dict[str, dict[str, Any]], repeats: int) -> list[SpeedCase]:
    """Median latency of each feed on both sessions, alternating them so drift hits both alike."""
    results = []
    for name, feed in cases.items():
        fp32_ms, int8_ms = [], []
        for _ in range(3):
            fp32_ms.append(_median_ms(lambda: fp32.run(None, feed), max(1, repeats // 3)))  # noqa: B023 (called now)
            int8_ms.append(_median_ms(lambda: int8.run(None, feed), max(1, repeats // 3)))  # noqa: B023 (called now)
        results.append(SpeedCase(name, statistics.median(fp32_ms), statistics.median(int8_ms)))
    return results


# --- classifiers ----------------------------------------------------------------------------


def _accuracy(session: ort.InferenceSession, meta: ImageClassificationMetadata, x: np.ndarray, y: np.ndarray) -> float:
    correct = 0
    for start in range(0, len(x), 64):
        (logits,) = session.run([meta.output_name], {meta.input_name: x[start : start + 64]})
        correct += int((logits.argmax(-1) == y[start : start + 64]).sum())
    return 100.0 * correct / len(x)


def _labelled_folder(root: Path, version_dir: Path, meta: ImageClassificationMetadata) -> tuple[np.ndarray, np.ndarray]:
    """Every image of an ImageFolder tree ``root/<label>/*``, preprocessed, with its label's index in the model."""
    labels = json.loads((version_dir / meta.labels_file).read_text(encoding="utf-8"))
    images, indices, classes = read_image_folder(root)
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise ValueError(f"{root}: folders {', '.join(unknown[:5])} are not labels of the model")
    batch, _ = to_batch([(image, 0) for image in images], meta.input_spec())
    to_label = np.asarray([labels.index(name) for name in classes], dtype=np.int64)
    return batch.numpy().astype(np.float32), to_label[np.asarray(indices, dtype=np.int64)]


def _imported(metadata: ModelMetadata) -> bool:
    """A version that attnserve-export import wrote: it has no training data on record."""
    return "import_command" in metadata.provenance and "train_config" not in metadata.provenance


def _classifier_report(
    version_dir: Path,
    quantized: Path,
    metadata: ModelMetadata,
    meta: ImageClassificationMetadata,
    *,
    threads: int,
    repeats: int,
    data: Path | None = None,
) -> QuantizationReport:
    if data is not None:
        x, y = _labelled_folder(data, version_dir, meta)
    elif _imported(metadata):
        raise ValueError(
            f"{version_dir} was imported and has no test set on record: pass --data ROOT, an ImageFolder tree "
            "ROOT/<label>/*.png|jpg whose folder names are the model's labels"
        )
    else:
        trained_on = metadata.provenance.get("train_config", {}).get("data", "")
        images, labels = to_batch(load_splits(trained_on).test, meta.input_spec())
        x, y = images.numpy().astype(np.float32), labels.numpy()
    fp32 = _session(version_dir / metadata.model_file, threads)
    int8 = _session(quantized, threads)
    report = QuantizationReport(
        name=version_dir.parent.name,
        source_version=version_dir.name,
        task=metadata.task,
        metric="test_accuracy",
        fp32=_accuracy(fp32, meta, x, y),
        int8=_accuracy(int8, meta, x, y),
        fp32_bytes=(version_dir / metadata.model_file).stat().st_size,
        int8_bytes=quantized.stat().st_size,
        threads=threads,
    )
    cases = {f"batch {b}": {meta.input_name: np.ascontiguousarray(x[:b])} for b in (1, 8)}
    report.speed = compare_speed(fp32, int8, cases, repeats)
    return report


# --- text generators ------------------------------------------------------------------------


def _text_report(
    version_dir: Path,
    quantized: Path,
    metadata: ModelMetadata,
    meta: TextGenerationMetadata,
    *,
    threads: int,
    repeats: int,
    corpus: list[Path] | None,
) -> QuantizationReport:
    """Bits per character, greedy agreement and speed of both graphs, through the server's KV cache."""
    if corpus is None and _imported(metadata):
        raise ValueError(f"{version_dir} was imported and has no corpus on record: pass --corpus PATH...")
    if corpus is None:  # the corpus the model was trained on: its test split
        trained_on = metadata.provenance.get("train_config", {}).get("corpus") or []
        corpus = [Path(p) for p in trained_on] or None
    docs = load_corpus(corpus).test
    with ThreadPoolExecutor(max_workers=1) as executor:
        fp32 = load_generator(version_dir, version_dir / metadata.model_file, meta, threads=threads, executor=executor)
        int8 = load_generator(version_dir, quantized, meta, threads=threads, executor=executor)
        prompts = agreement_prompts(fp32, docs)
        agreement = greedy_agreement(
            greedy_tokens(fp32, prompts, AGREEMENT_NEW_TOKENS), greedy_tokens(int8, prompts, AGREEMENT_NEW_TOKENS)
        )
        report = QuantizationReport(
            name=version_dir.parent.name,
            source_version=version_dir.name,
            task=metadata.task,
            metric="test_bpc",
            fp32=kv_cache_bpc(fp32, docs),
            int8=kv_cache_bpc(int8, docs),
            fp32_bytes=(version_dir / metadata.model_file).stat().st_size,
            int8_bytes=quantized.stat().st_size,
            threads=threads,
            greedy_agreement=agreement,
        )
        report.speed = compare_speed(runner(fp32), runner(int8), speed_cases(fp32), repeats)
    return report


# --- the command ----------------------------------------------------------------------------


def latest_version(model_dir: Path) -> Path:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise FileNotFoundError(f"{model_dir} holds no version directories")
    return model_dir / str(versions[-1])


def quantize_entry(
    repository: Path,
    name: str,
    *,
    from_version: str | None = None,
    version: int | None = None,
    corpus: list[Path] | None = None,
    data: Path | None = None,
    threads: int = 2,
    repeats: int = SPEED_REPEATS,
    max_bpc_increase: float = MAX_BPC_INCREASE,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    force: bool = False,
    keep_output_layer_fp32: bool = False,
    command: str = "",
) -> QuantizationReport:
    """Quantize ``repository/name/<from_version>`` and measure it; write it as a new version if it
    is accepted (faster, and within the tolerance), or whatever the result with ``force``.

    ``keep_output_layer_fp32`` keeps a text model's LM head (the product onto the vocabulary) in
    fp32: the logits then come from full-precision weights, for a little less speed.

    The new version is a copy of the source version with the int8 ``model.onnx`` and a
    ``provenance.quantization`` entry holding the report.
    """
    model_dir = repository / name
    source = model_dir / from_version if from_version else latest_version(model_dir)
    try:  # validated as the server validates it
        metadata = read_metadata(source, TaskTable().sections())
    except MetadataError as exc:
        raise MetadataError(f"{source}: {exc}") from None
    section = metadata.section
    if not isinstance(section, (ImageClassificationMetadata, TextGenerationMetadata)):
        raise ValueError(f"quantize handles text-generation and image-classification models, not {metadata.task}")
    if metadata.provenance.get("quantization"):
        raise ValueError(f"{source} is already quantized; quantize its fp32 source version instead")
    with tempfile.TemporaryDirectory(prefix="attnserve-quantize-") as tmp:
        staged = Path(tmp) / "version"
        shutil.copytree(source, staged)
        quantized = staged / metadata.model_file
        excluded: list[str] = []
        if keep_output_layer_fp32:
            if not isinstance(section, TextGenerationMetadata):
                raise ValueError("keeping the output layer in fp32 applies to text-generation models only")
            excluded = output_layer_nodes(source / metadata.model_file, section.vocab_size)
            if not excluded:
                raise ValueError(f"{source}: no MatMul or Gemm maps onto the {section.vocab_size}-token vocabulary")
        quantize_file(source / metadata.model_file, quantized, exclude=excluded)
        if isinstance(section, ImageClassificationMetadata):
            report = _classifier_report(
                source, quantized, metadata, section, threads=threads, repeats=repeats, data=data
            )
            report.judge(max_accuracy_drop)
        else:
            report = _text_report(source, quantized, metadata, section, threads=threads, repeats=repeats, corpus=corpus)
            report.excluded_nodes = excluded
            report.judge(max_bpc_increase)
        logger.info(
            "%s %s: fp32 %.4f, int8 %.4f; speedups %s; %s",
            name,
            report.metric,
            report.fp32,
            report.int8,
            ", ".join(f"{c.name} {c.speedup:.2f}x" for c in report.speed),
            "accepted" if report.accepted else "rejected: " + "; ".join(report.reasons),
        )
        if not (report.accepted or force):
            return report
        target = model_dir / str(version) if version else next_version_dir(repository, name)
        if target.exists():
            raise FileExistsError(f"{target} already exists")
        report.version = target.name
        quantization = {
            "command": command,
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "activations": "per row, symmetric (attnserve_export.quantize_rows)",
            "op_types": list(QUANTIZED_OPS),
            "scored_through": "attnserve_server.text.kv_cache (prefill, then batched decode steps)"
            if isinstance(section, TextGenerationMetadata)
            else "onnxruntime session",
            "onnxruntime": ort.__version__,
            **report.to_dict(),
        }
        quantized_metadata = metadata.replace(
            description=f"{metadata.description} (int8 dynamic quantization of version {source.name})".strip(),
            provenance={**metadata.provenance, "quantization": quantization},
        )
        write_metadata(staged, quantized_metadata)
        shutil.move(str(staged), target)
    logger.info("wrote %s", target)
    return report
