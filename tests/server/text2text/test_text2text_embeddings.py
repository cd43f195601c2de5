"""The encoder–decoder's embeddings: the encoder's hidden states, through the real server's Embed RPC."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from attnserve_client import Client, InvalidArgumentError

MODEL = "tiny-translator"
TEXTS = ["<2en> vierhundert", "<2de> three thousand and twelve", "<2fr> zeven"]


@torch.no_grad()
def encoder_states(translator: Any, text: str) -> list[np.ndarray]:
    ids = torch.tensor([translator.tokenizer.encode(text).ids])
    return [s[0].numpy() for s in translator.model.hidden_states(ids, torch.ones_like(ids))]


def test_the_default_is_the_mean_of_the_encoders_output(translator: Any) -> None:
    with Client(translator.address) as client:
        result = client.embed(TEXTS, model=MODEL)
    assert result.pooling == "mean"
    for text, vector in zip(TEXTS, result.vectors, strict=True):
        np.testing.assert_allclose(vector, encoder_states(translator, text)[-1].mean(axis=0), rtol=0, atol=1e-4)


def test_token_wise_vectors_of_a_chosen_layer_match_the_encoder(translator: Any) -> None:
    with Client(translator.address) as client:
        result = client.embed(TEXTS[:2], model=MODEL, pooling="none", layer=1)
    assert result.layer == 1 and result.token_texts is not None
    for text, tokens, pieces in zip(TEXTS[:2], result.tokens, result.token_texts, strict=True):
        expected = encoder_states(translator, text)[1]
        np.testing.assert_allclose(tokens, expected, rtol=0, atol=1e-4)
        assert pieces[0] == text.split()[0]  # the tag is one token


def test_a_pooling_the_encoder_has_no_token_for_is_refused(translator: Any) -> None:
    with Client(translator.address) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.embed(TEXTS, model=MODEL, pooling="cls")
        assert "mean" in str(info.value)
        assert client.health(MODEL)
