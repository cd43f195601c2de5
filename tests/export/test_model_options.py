"""The model options that imported checkpoints need, and that the existing presets are unaffected by them.

GPT: the GELU variant, the LayerNorm epsilon and the MLP width. ViT and Swin: non-square inputs,
the LayerNorm epsilon, the GELU variant and the qkv bias; Swin: transformers' pad-then-shift order.
Every new option defaults to the old behaviour, so the presets, the training checkpoints and the
shipped models' recorded configurations build the same modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from attnserve_export.gpt import GPT, PRESETS, GPTConfig
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_export.image_train import config_from_dict
from attnserve_export.onnx_export import export_gpt
from attnserve_export.swin import Swin, SwinConfig
from attnserve_export.swin_windows import attention_mask, padded_shift_mask
from attnserve_export.vit import ViT, ViTConfig

MODELS = Path(__file__).resolve().parents[2] / "models"


def _provenance(name: str) -> dict[str, object]:
    version = MODELS / name / "1"
    provenance: dict[str, object] = json.loads((version / "metadata.json").read_text())["provenance"]
    return provenance


def test_the_new_options_default_to_the_old_behaviour() -> None:
    assert (GPTConfig().activation, GPTConfig().ln_eps, GPTConfig().mlp_hidden_dim) == ("gelu_tanh", 1e-5, None)
    assert PRESETS["shakespeare"].hidden_dim == 4 * 192
    vit = ViTConfig()
    assert (vit.ln_eps, vit.qkv_bias, vit.activation, vit.hidden_dim) == (1e-6, True, "gelu", 3072)
    swin = SwinConfig()
    assert (swin.ln_eps, swin.qkv_bias, swin.activation, swin.pad_before_shift) == (1e-5, True, "gelu", False)


def test_the_shipped_models_configs_still_build_their_models() -> None:
    """The configurations recorded in models/*/1 (no new fields) load, with the same parameter counts."""
    text = _provenance("shakespeare-gpt")
    assert GPT(GPTConfig(**text["model_config"])).num_parameters() == text["num_parameters"]  # type: ignore[arg-type]
    for name, family in (("digits-vit", "vit"), ("digits-swin", "swin")):
        provenance = _provenance(name)
        model = ViT if family == "vit" else Swin
        config = config_from_dict(family, provenance["model_config"])  # type: ignore[arg-type]
        built = model(config)  # type: ignore[arg-type]
        assert sum(p.numel() for p in built.parameters()) == provenance["num_parameters"]


def test_shared_buffer_graph_follows_the_gelu_and_epsilon(tmp_path: Path, tiny_tokenizer: object) -> None:
    config = PRESETS["tiny"].with_(
        vocab_size=400, activation="gelu", ln_eps=1e-6, mlp_hidden_dim=40, num_heads=2, dim=32
    )
    torch.manual_seed(0)
    report = export_gpt(GPT(config), tiny_tokenizer, tmp_path / "1", kv_cache_layout="shared_buffer")  # type: ignore[arg-type]
    assert report.passed and report.max_rel_diff < 1e-5
    graph = onnx.load(str(tmp_path / "1" / "model.onnx")).graph
    attrs = {(n.op_type, a.name): onnx.helper.get_attribute_value(a) for n in graph.node for a in n.attribute}
    assert attrs[("Gelu", "approximate")] == b"none"
    assert attrs[("LayerNormalization", "epsilon")] == pytest.approx(1e-6)


def test_the_two_gelus_differ() -> None:
    """The option is not a no-op: the same weights give other logits."""
    torch.manual_seed(0)
    tanh = GPT(PRESETS["tiny"]).eval()
    exact = GPT(PRESETS["tiny"].with_(activation="gelu")).eval()
    exact.load_state_dict(tanh.state_dict())
    ids = torch.randint(0, 512, (1, 8))
    assert not torch.allclose(tanh(ids)[0], exact(ids)[0], atol=1e-7, rtol=0)


def test_a_non_square_vit_exports_with_parity(tmp_path: Path) -> None:
    # A list, as JSON gives it: the config keeps a tuple.
    config = ViTConfig(image_size=[16, 24], patch_size=8, in_channels=3, num_classes=4, dim=32, depth=1, num_heads=2)  # type: ignore[arg-type]
    assert config.image_size == (16, 24) and config.num_patches == 6 and config.grid_size == 3
    assert config_from_dict("vit", json.loads(json.dumps(config.to_dict()))) == config
    torch.manual_seed(0)
    model = ViT(config).eval()
    images = np.random.default_rng(0).standard_normal((5, 3, 16, 24)).astype(np.float32)
    spec = ImageSpec(channels=3, height=16, width=24, mean=(0.5,) * 3, std=(0.5,) * 3)
    report = export_classifier(model, spec, ["a", "b", "c", "d"], images, tmp_path / "1")
    assert report.passed


def test_a_non_square_swin_runs_with_padding_in_both_orders() -> None:
    for pad_before_shift in (False, True):
        config = SwinConfig(
            image_size=(20, 28), patch_size=2, in_channels=3, num_classes=3, embed_dim=8,
            depths=(2, 2), num_heads=(2, 2), window_size=4, drop_path=0.0, pad_before_shift=pad_before_shift,
        )  # fmt: skip
        out = Swin(config).eval()(torch.randn(2, 3, 20, 28))
        assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize(("height", "width", "window", "shift"), [(8, 8, 4, 2), (12, 8, 4, 2), (14, 7, 7, 3)])
def test_the_pad_first_mask_is_the_papers_mask_when_nothing_is_padded(
    height: int, width: int, window: int, shift: int
) -> None:
    assert torch.equal(padded_shift_mask(height, width, window, shift), attention_mask(height, width, window, shift))


def test_the_pad_first_order_lets_real_tokens_see_padding() -> None:
    """With padding, transformers' order differs from this model's own (which masks padding out)."""
    torch.manual_seed(0)
    own = Swin(SwinConfig(image_size=24, patch_size=2, in_channels=3, num_classes=3, embed_dim=8,
                          depths=(2,), num_heads=(2,), window_size=5, drop_path=0.0)).eval()  # fmt: skip
    theirs = Swin(own.config.with_(pad_before_shift=True)).eval()
    theirs.load_state_dict(own.state_dict())
    x = torch.randn(1, 3, 24, 24)
    assert not torch.allclose(own(x), theirs(x), atol=1e-5)
