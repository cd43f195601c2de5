"""Client.explain and `attnserve explain`: arguments checked before sending, the typed results (and
malformed responses refused), and the CLI end to end against a real server on the shipped models."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from attnserve_client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    ModelNotFoundError,
    ServerError,
    SwinAttention,
    Text2TextAttention,
    TextAttention,
    VitAttention,
    methods,
    pictures,
)
from attnserve_client.cli_explain import summary
from attnserve_client.core import EXPLAIN_PARAMETERS, ClientCore
from attnserve_client.explain import ExplainRequest, to_explanation
from attnserve_client.pb import explain_pb2, models_pb2

MODELS = Path(__file__).resolve().parents[2] / "models"
PROMPT = "The cat sat on the mat"


def _png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size), dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _plan(**arguments: Any) -> Any:
    """explain's plan, from its arguments by name as the clients pass them (their locals())."""
    defaults: dict[str, Any] = dict.fromkeys((*EXPLAIN_PARAMETERS, "timeout"))
    return ClientCore("unused:1", timeout=5, retries=0, retry_overloaded=False)._explain_plan({**defaults, **arguments})


# --- the request, checked before anything is sent ------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "exactly one input"),
        ({"text": "a", "image": _png()}, "exactly one input"),
        ({"text": ""}, "text must be a non-empty string"),
        ({"text": b"bytes"}, "text must be a non-empty string"),
        ({"text": "a", "model": ""}, "model must be a non-empty string"),
        ({"text": "a", "layers": "0,1"}, "layers must be a list of integers"),
        ({"text": "a", "layers": [0, 1.5]}, "each of layers must be an integer"),
        ({"text": "a", "layers": [1, 1]}, "must not repeat"),
        ({"text": "a", "layers": [True]}, "each of layers must be an integer"),
        ({"text": "a", "heads": [-1]}, r"each of heads must be in \[0, "),
        ({"text": "a", "heads": [2**31]}, "each of heads must be in"),
        ({"text": "a", "stage": 1}, "take an image, not a text"),
        ({"text": "a", "query": (1, 2)}, "take an image, not a text"),
        ({"image": _png(), "query": (1,)}, r"query must be a \(row, col\) pair"),
        ({"image": _png(), "query": "12"}, r"query must be a \(row, col\) pair"),
        ({"image": _png(), "query": (-1, 0)}, "query row must be in"),
        ({"image": _png(), "stage": -1}, "stage must be in"),
        ({"image": _png(), "max_new_tokens": 4}, "not for an image"),
        ({"text": "a", "max_new_tokens": 0}, "max_new_tokens must be in"),
        ({"image": Path("no-such-file.png")}, "cannot read"),
        ({"image": 3.5}, "the image is a float"),
        ({"text": "a", "model_version": 2}, "model_version must be a string"),
    ],
)
def test_bad_arguments_raise_before_any_attempt(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        next(_plan(**{"model": "m", **arguments}))


def test_the_request_sends_only_what_was_chosen() -> None:
    plain = ExplainRequest.create(
        text="To be", image=None, model="m", layers=None, heads=None, stage=None, query=None,
        max_new_tokens=None, model_version=None,
    ).to_proto("m")  # fmt: skip
    assert plain.WhichOneof("input") == "text" and plain.text == "To be"
    assert not plain.layers and not plain.heads and plain.max_new_tokens == 0 and plain.model_version == ""
    assert not plain.HasField("stage") and not plain.HasField("query_row") and not plain.HasField("query_col")
    swin = ExplainRequest.create(
        text=None, image=_png(), model=None, layers=-1, heads=[0, 2], stage=0, query=(3, 4),
        max_new_tokens=None, model_version="2",
    ).to_proto("s")  # fmt: skip
    assert swin.WhichOneof("input") == "image" and swin.image == _png()
    assert list(swin.layers) == [-1] and list(swin.heads) == [0, 2] and swin.model_version == "2"
    assert swin.HasField("stage") and swin.stage == 0 and (swin.query_row, swin.query_col) == (3, 4)


def _listing(*models: tuple[str, str]) -> models_pb2.ListModelsResponse:
    return models_pb2.ListModelsResponse(models=[models_pb2.ModelInfo(name=n, task=t) for n, t in models])


@pytest.mark.parametrize(
    ("inputs", "listing", "chosen"),
    [
        ({"text": "a"}, [("t", "text2text-generation"), ("v", "image-classification")], "t"),
        ({"text": "a"}, [("g", "text-generation"), ("v", "image-classification")], "g"),
        ({"image": _png()}, [("g", "text-generation"), ("v", "image-classification")], "v"),
    ],
)
def test_without_a_model_the_only_one_of_the_input_s_kind_is_explained(
    inputs: dict[str, Any], listing: list[tuple[str, str]], chosen: str
) -> None:
    plan = _plan(**inputs)
    assert next(plan).method == methods.LIST_MODELS
    attempt = plan.send(_listing(*listing))
    assert attempt.method == methods.EXPLAIN and attempt.message.model == chosen


def test_without_a_model_two_text_models_are_ambiguous() -> None:
    plan = _plan(text="a")
    next(plan)
    with pytest.raises(InvalidArgumentError, match="several text-generation or text2text-generation models"):
        plan.send(_listing(("g", "text-generation"), ("t", "text2text-generation")))


# --- the typed results, and malformed responses ---------------------------------------------------


def _tensor(*shape: int, fill: float = 0.5) -> explain_pb2.Tensor:
    return explain_pb2.Tensor(shape=shape, values=[fill] * int(np.prod(shape)))


def _text(tokens: int = 3, layers: int = 2, heads: int = 4) -> explain_pb2.ExplainResponse:
    return explain_pb2.ExplainResponse(
        model="g", model_version="4", layers=range(layers), heads=range(heads),
        text=explain_pb2.TextAttention(tokens=["a", " b", "\n"][:tokens], attention=_tensor(layers, heads, 3, 3)),
    )  # fmt: skip


def _t2t() -> explain_pb2.ExplainResponse:
    return explain_pb2.ExplainResponse(
        model="t", model_version="2", layers=[2], heads=[0, 1],
        text2text=explain_pb2.Text2TextAttention(
            source_tokens=["<2en>", "zwei"], target_tokens=["<s>", "two"], generated_tokens=["two", "</s>"],
            output_text="two", encoder_attention=_tensor(1, 2, 2, 2), decoder_attention=_tensor(1, 2, 2, 2),
            cross_attention=_tensor(1, 2, 2, 2),
        ),
    )  # fmt: skip


def _vit() -> explain_pb2.ExplainResponse:
    return explain_pb2.ExplainResponse(
        model="v", model_version="4", layers=[5], heads=[0, 1, 2, 3],
        vit=explain_pb2.VitAttention(
            grid_height=4, grid_width=4, patch_size=4, class_attention=_tensor(1, 4, 4, 4), rollout=_tensor(4, 4)
        ),
    )  # fmt: skip


def _swin(windows: int = 2) -> explain_pb2.ExplainResponse:
    window = explain_pb2.SwinWindow(block=1, shift=2, window_size=4, window_row=1, window_col=0, patches=16)
    return explain_pb2.ExplainResponse(
        model="s", model_version="4", layers=[0, 1], heads=[0, 1, 2],
        swin=explain_pb2.SwinAttention(
            stage=0, query_row=4, query_col=4, grid_height=8, grid_width=8, cell_size=2,
            attention=_tensor(2, 3, 8, 8), windows=[window] * windows,
        ),
    )  # fmt: skip


def test_each_kind_of_map_becomes_its_typed_result_with_numpy_arrays() -> None:
    text = to_explanation(_text())
    assert isinstance(text, TextAttention) and text.tokens == ("a", " b", "\n")
    assert text.attention.shape == (2, 4, 3, 3) and text.attention.dtype == np.float32
    assert (text.model, text.model_version, text.layers, text.heads) == ("g", "4", (0, 1), (0, 1, 2, 3))
    t2t = to_explanation(_t2t())
    assert isinstance(t2t, Text2TextAttention) and t2t.generated_tokens == ("two", "</s>")
    assert t2t.cross_attention.shape == (1, 2, 2, 2) and t2t.output_text == "two"
    vit = to_explanation(_vit())
    assert isinstance(vit, VitAttention) and vit.grid == (4, 4) and vit.patch_size == 4
    assert vit.class_attention.shape == (1, 4, 4, 4) and vit.rollout.shape == (4, 4)
    swin = to_explanation(_swin())
    assert isinstance(swin, SwinAttention) and swin.attention.shape == (2, 3, 8, 8)
    assert swin.query == (4, 4) and swin.grid == (8, 8) and swin.cell_size == 2
    assert swin.windows[0].window == (1, 0) and swin.windows[0].shift == 2 and swin.windows[0].patches == 16


def test_without_numpy_the_maps_are_nested_lists() -> None:
    vit = to_explanation(_vit(), numpy=None)
    assert isinstance(vit, VitAttention)
    assert vit.rollout == [[0.5] * 4] * 4 and len(vit.class_attention[0]) == 4


def _broken(response: explain_pb2.ExplainResponse, change: Callable[[explain_pb2.ExplainResponse], None]) -> Any:
    change(response)
    return response


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (_broken(_text(), lambda r: r.text.attention.values.pop()), r"shape \[2, 4, 3, 3\] but 71 values"),
        (_text(tokens=2), r"expected \[2, 4, 2, 2\]"),
        (_broken(_text(), lambda r: r.heads.pop()), r"expected \[2, 3, 3, 3\]"),
        (_broken(_text(), lambda r: r.text.attention.shape.pop()), "expected 4 dimensions"),
        (_broken(_t2t(), lambda r: r.text2text.generated_tokens.pop()), "1 generated tokens for 2"),
        (_broken(_t2t(), lambda r: r.text2text.source_tokens.pop()), "encoder attention has shape"),
        (_broken(_vit(), lambda r: setattr(r.vit, "grid_width", 3)), r"class attention has shape \[1, 4, 4, 4\]"),
        (_swin(windows=1), "1 Swin windows for 2 blocks"),
        (explain_pb2.ExplainResponse(model="m"), "holds no maps"),
    ],
)
def test_a_malformed_response_raises_a_server_error(response: explain_pb2.ExplainResponse, message: str) -> None:
    with pytest.raises(ServerError, match=message):
        to_explanation(response)


@pytest.mark.parametrize("numpy", ["auto", None], ids=["numpy", "lists"])
def test_the_cli_summary_needs_no_numpy(numpy: Any) -> None:
    text = summary(to_explanation(_text(), numpy=numpy)).splitlines()
    assert text[0] == "model=g version=4 layers=0,1 heads=0,1,2,3" and len(text) == 4
    assert text[1].split() == ["'a'", "->", "'a'", "0.500"]
    t2t = summary(to_explanation(_t2t(), numpy=numpy))
    assert "output: 'two'" in t2t and "'</s>' -> '<2en>'" in t2t
    assert summary(to_explanation(_vit(), numpy=numpy)).splitlines()[2] == "  0.500 0.500 0.500 0.500"
    swin = summary(to_explanation(_swin(), numpy=numpy))
    assert "block 1: shift 2, window (1, 0) of 4x4, 16 patches" in swin and "head 2: most attended patch" in swin


# --- against the real server ---------------------------------------------------------------------


def test_the_tiny_servers_models_explain_through_both_clients(server_address: str, image_server_address: str) -> None:
    # The shared tiny-gpt and tiny-digits (a ViT) are exported with their explain graphs.
    with Client(server_address) as client:
        text = client.explain("To be, or not", layers=-1, heads=[0])  # the only text model

    async def explain_async() -> Any:
        async with AsyncClient(image_server_address) as client:
            return await client.explain(image=_png(16), model="tiny-digits")

    assert isinstance(text, TextAttention) and text.model == "tiny-gpt" and "".join(text.tokens) == "To be, or not"
    assert text.attention.shape == (1, 1, len(text.tokens), len(text.tokens))
    np.testing.assert_allclose(text.attention.sum(-1), 1.0, atol=1e-5)
    assert np.triu(text.attention[0, 0], k=1).max() == 0.0
    vit = asyncio.run(explain_async())
    assert isinstance(vit, VitAttention) and vit.rollout.shape == vit.grid
    assert vit.class_attention.shape == (len(vit.layers), len(vit.heads), *vit.grid)


def test_the_servers_refusals_are_typed_errors(server_address: str) -> None:
    with Client(server_address, retries=0) as client:
        with pytest.raises(InvalidArgumentError, match="layers must be in") as refused:
            client.explain("To be", model="tiny-gpt", layers=[99])
        assert refused.value.request_id
        with pytest.raises(ModelNotFoundError):
            client.explain("To be", model="no-such-model")


@pytest.fixture(scope="module")
def shipped_address(session_server_launcher: Callable[..., Any]) -> str:
    """A real server on the shipped models, whose newest versions have explain graphs."""
    return str(session_server_launcher(MODELS).address)


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64 grey 8, light on dark, drawn here (no scikit-learn: tests/client also runs in .venv-pb6)."""
    image = Image.new("L", (64, 64), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 6, 44, 30), outline=255, width=6)
    draw.ellipse((16, 30, 48, 58), outline=255, width=6)
    path = tmp_path_factory.mktemp("explain") / "digit.png"
    image.save(path)
    return path


def test_the_sync_and_async_clients_explain_every_shipped_kind(shipped_address: str, digit: Path) -> None:
    with Client(shipped_address) as client:
        text = client.explain(PROMPT, model="shakespeare-gpt", layers=[-1])
        vit = client.explain(image=digit, model="digits-vit")
        swin = client.explain(image=str(digit), model="digits-swin", heads=0)
        t2t = client.explain("<2en> siebenundneunzig", model="numbers-translator", layers=-1, max_new_tokens=8)

    async def explain_async() -> Any:
        async with AsyncClient(shipped_address) as client:
            return await client.explain(PROMPT, model="shakespeare-gpt", layers=[-1])

    assert isinstance(text, TextAttention) and "".join(text.tokens) == PROMPT and len(text.layers) == 1
    np.testing.assert_allclose(text.attention.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(asyncio.run(explain_async()).attention, text.attention)
    assert isinstance(vit, VitAttention) and vit.rollout.shape == vit.grid
    assert isinstance(swin, SwinAttention) and swin.heads == (0,) and len(swin.windows) == len(swin.layers)
    assert isinstance(t2t, Text2TextAttention) and 0 < len(t2t.generated_tokens) <= 8
    np.testing.assert_allclose(t2t.cross_attention.sum(-1), 1.0, atol=1e-5)
    with Client(shipped_address, retries=0) as client, pytest.raises(ServerError) as failed:
        client.explain(PROMPT, model="shakespeare-gpt", model_version="1")  # exported before explain graphs
    assert failed.value.code.name == "FAILED_PRECONDITION" and "has no explain graph" in failed.value.details


def run_cli(*args: str, target: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "ATTNSERVE_TARGET": target}
    return subprocess.run([sys.executable, "-m", "attnserve_client", "explain", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False, cwd=cwd)  # fmt: skip


def test_cli_writes_a_token_heatmap_per_head_of_the_last_layer(shipped_address: str, tmp_path: Path) -> None:
    out = tmp_path / "attn.png"
    done = run_cli(PROMPT, "--model", "shakespeare-gpt", "--out", str(out), target=shipped_address)
    assert done.returncode == 0, done.stderr
    with Client(shipped_address) as client:
        result = client.explain(PROMPT, model="shakespeare-gpt", layers=[-1])
    assert isinstance(result, TextAttention)
    expected = pictures.token_heatmaps(
        result.tokens, result.attention[0], titles=[f"layer {result.layers[0]} head {h}" for h in result.heads],
        columns=min(len(result.heads), 6),
    )  # fmt: skip
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == expected.size
        np.testing.assert_array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))
    assert f"wrote {out} ({expected.width}x{expected.height}): {len(result.heads)} token maps" in done.stdout


def test_cli_blends_the_vit_rollout_over_the_image(shipped_address: str, digit: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat.png"
    done = run_cli(str(digit), "--model", "digits-vit", "--out", str(out), target=shipped_address)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == (256, 256) and written.mode == "RGB"


def test_cli_draws_a_panel_per_swin_head_with_the_query(shipped_address: str, digit: Path, tmp_path: Path) -> None:
    out = tmp_path / "swin.png"
    args = ["--model", "digits-swin", "--layers", "0,1", "--query", "1,2", "--out", str(out), "--json"]
    done = run_cli(str(digit), *args, target=shipped_address)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "SwinAttention" and result["query"] == [1, 2] and result["layers"] == [0, 1]
    titles = [f"stage 0 block {b} head {h}" for b in result["layers"] for h in result["heads"]]
    expected = pictures.attention_panels(
        digit, result["attention"], titles=titles, columns=min(len(result["heads"]), 6), mark=(1, 2),
        resample="nearest",
    )  # fmt: skip
    with Image.open(out) as written:
        assert written.size == expected.size


def test_cli_draws_the_translator_s_cross_attention(shipped_address: str, tmp_path: Path) -> None:
    out = tmp_path / "cross.png"
    done = run_cli("<2en> siebenundneunzig", "--model", "numbers-translator", "--out", str(out), target=shipped_address)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as written:
        assert written.format == "PNG" and written.width > 100 and written.height > 100


def test_cli_summary_and_json_agree_with_the_client(shipped_address: str, digit: Path) -> None:
    text = run_cli(PROMPT, "--model", "shakespeare-gpt", "--heads", "0,1", target=shipped_address)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("model=shakespeare-gpt ") and "heads=0,1" in lines[0]
    assert len(lines) == 1 + len(json.loads(run_cli(PROMPT, "--model", "shakespeare-gpt", "--json",
                                                    target=shipped_address).stdout)["tokens"])  # fmt: skip
    vit = run_cli(str(digit), "--model", "digits-vit", target=shipped_address)
    assert vit.returncode == 0 and "attention rollout over the" in vit.stdout
    with Client(shipped_address) as client:
        expected = client.explain(image=digit, model="digits-vit")
    printed = json.loads(run_cli(str(digit), "--model", "digits-vit", "--json", target=shipped_address).stdout)
    np.testing.assert_allclose(printed["rollout"], expected.rollout, rtol=1e-6)  # type: ignore[union-attr]


def test_cli_errors_are_one_line_with_the_status(shipped_address: str, digit: Path, tmp_path: Path) -> None:
    swin_only = run_cli(PROMPT, "--model", "shakespeare-gpt", "--stage", "1", target=shipped_address)
    assert swin_only.returncode == 1 and swin_only.stdout == ""
    assert swin_only.stderr.startswith("attnserve: error: stage and query") and len(swin_only.stderr.splitlines()) == 1
    no_layer = run_cli(PROMPT, "--model", "shakespeare-gpt", "--layers", "99", target=shipped_address)
    assert (
        no_layer.returncode == 1 and "layers must be in" in no_layer.stderr and "(INVALID_ARGUMENT)" in no_layer.stderr
    )
    missing = run_cli(str(tmp_path / "none.png"), "--model", "digits-vit", target=shipped_address)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    old = run_cli(PROMPT, "--model", "shakespeare-gpt", "--model-version", "1", target=shipped_address)
    assert old.returncode == 1 and "(FAILED_PRECONDITION)" in old.stderr and "no explain graph" in old.stderr
    unknown = run_cli(PROMPT, "--model", "no-such-model", target=shipped_address)
    assert unknown.returncode == 1 and "(NOT_FOUND)" in unknown.stderr
    usage = run_cli(PROMPT, "--model", "shakespeare-gpt", "--layers", "a,b", target=shipped_address)
    assert usage.returncode == 2 and "not a comma-separated list of integers" in usage.stderr
    bad_out = run_cli(str(digit), "--model", "digits-vit", "--out", str(tmp_path / "x.unknown"), target=shipped_address)
    assert bad_out.returncode == 2 and "Pillow writes no format with the extension '.unknown'" in bad_out.stderr
