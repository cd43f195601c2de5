"""Reading a local Hugging Face model folder without transformers and without unpickling anything.

A folder holds ``config.json`` and its weights as ``model.safetensors`` or as shards listed in
``model.safetensors.index.json``; the tokenizer or image-processor files sit beside them. Weights
in pickle formats (``pytorch_model.bin``, ``*.pt``, ...) are refused: they are never opened.
Every problem is a :class:`CheckpointError` whose message says what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weight files that only a pickle loader reads (torch.load, numpy.load(allow_pickle), ...).
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

CONVERT_HINT = (
    "attnserve never unpickles weights, because loading a pickle can run arbitrary code. Convert them to "
    "safetensors first, in an environment where you trust the file, e.g. with transformers: "
    "`AutoModelFor...from_pretrained(PATH).save_pretrained(OUT)` (it writes model.safetensors), or with torch "
    "and safetensors: `safetensors.torch.save_file(torch.load(FILE, weights_only=True), 'model.safetensors')`"
    " (then add the metadata {'format': 'pt'} and keep config.json)"
)


class CheckpointError(ValueError):
    """The folder cannot be imported; the message says why and what to do."""


@dataclass
class Checkpoint:
    """A folder's ``config.json`` and weights (float32, by their names in the files)."""

    path: Path
    config: dict[str, Any]
    config_sha256: str
    weights: dict[str, torch.Tensor]
    weight_files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256

    @property
    def architecture(self) -> str:
        return architecture_of(self.config)

    def file(self, name: str) -> Path:
        """``name`` inside the folder (a plain file name: nothing outside the folder is read)."""
        return inside(self.path, name)


def inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing names that leave the folder (an index may name any path)."""
    path = (folder / name).resolve()
    if Path(name).name != name or not path.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{name!r} is not a file name inside {folder}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the folder, or a CheckpointError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} is missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path.name} is not valid JSON: {exc}") from None


def read_config(folder: Path) -> tuple[dict[str, Any], str]:
    """``config.json`` as a dict, and the SHA-256 of its bytes."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    config = read_json(folder / CONFIG_FILE, f"{CONFIG_FILE} (the model's architecture and shape)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{CONFIG_FILE} must hold a JSON object")
    return config, sha256_of(folder / CONFIG_FILE)


def architecture_of(config: dict[str, Any]) -> str:
    """The one architecture that ``config.json`` names (``architectures``), e.g. ``GPT2LMHeadModel``."""
    names = config.get("architectures")
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        model_type = config.get("model_type", "unknown")
        raise CheckpointError(
            f"{CONFIG_FILE} must name exactly one class in 'architectures' (model_type {model_type!r}, "
            f"architectures {names!r})"
        )
    return names[0]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the weights (one, or the shards of the index)."""
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        data = read_json(index, SAFETENSORS_INDEX)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{SAFETENSORS_INDEX} has no 'weight_map'")
        names = sorted(set(weight_map.values()))
        files = [inside(folder, str(name)) for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{SAFETENSORS_INDEX} lists shards that are missing: {', '.join(missing)}")
        return files
    single = folder / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    pickled = sorted({p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)})
    if pickled:
        raise CheckpointError(
            f"{folder} holds weights only in a pickle format ({', '.join(pickled)}), and no {SAFETENSORS_FILE}. "
            + CONVERT_HINT
        )
    raise CheckpointError(f"{folder} has no weights: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}")


def load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors ``files``, as float32 (a truncated or corrupt file is refused)."""
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118  # safe_open has no __iter__
                    if name in weights:
                        raise CheckpointError(f"tensor {name} is in more than one shard")
                    tensor = handle.get_tensor(name)
                    if tensor.dtype not in FLOAT_DTYPES:
                        raise CheckpointError(f"tensor {name} in {path.name} is {tensor.dtype}, not a float type")
                    weights[name] = tensor.to(torch.float32)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types (and OSError) on a bad file
            raise CheckpointError(
                f"{path.name} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
    return weights


def read_checkpoint(folder: Path) -> Checkpoint:
    """``config.json`` and the weights of a folder, checked for readability (not yet for shape)."""
    folder = folder.resolve()
    config, config_sha = read_config(folder)
    architecture_of(config)  # fail before reading gigabytes of weights
    files = weight_files(folder)
    weights = load_weights(files)
    return Checkpoint(
        path=folder,
        config=config,
        config_sha256=config_sha,
        weights=weights,
        weight_files={f.name: sha256_of(f) for f in files},
    )


def take(weights: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], *, explain: str = "") -> torch.Tensor:
    """Remove and return ``weights[name]``, refusing a missing tensor or one of another shape."""
    if name not in weights:
        raise CheckpointError(f"the weights have no tensor {name}{explain}")
    tensor = weights.pop(name)
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"{CONFIG_FILE} disagrees with the weights: {name} has shape {list(tensor.shape)}, "
            f"but config.json implies {list(shape)}{explain}"
        )
    return tensor


def strip_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The weights with ``prefix`` removed where every backbone name carries it (``transformer.``, ``vit.``)."""
    if any(name.startswith(prefix) for name in weights):
        return {name.removeprefix(prefix): tensor for name, tensor in weights.items()}
    return dict(weights)


def check_all_used(weights: dict[str, torch.Tensor]) -> None:
    """Refuse weights that no parameter took: they belong to a model other than config.json's."""
    if weights:
        names = sorted(weights)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise CheckpointError(
            f"{CONFIG_FILE} disagrees with the weights: they hold tensors this architecture has no place for: "
            f"{', '.join(names[:5])}{more}"
        )
