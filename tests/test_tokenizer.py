"""Tokenizers, the four latent tokens and resizing a model's embeddings."""

from __future__ import annotations

import pytest
import torch

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS
from latent_thoughts.modeling import ScratchModelConfig, create_llama, load_causal_lm
from latent_thoughts.tokenizer import (
    add_latent_tokens,
    load_tokenizer,
    resize_model_embeddings,
    train_bpe_tokenizer,
)
from tests.conftest import SHARED, TRAINING_TEXTS

LLAMA2 = SHARED / "tokenizers" / "llama2"


@pytest.mark.skipif(not (LLAMA2 / "tokenizer.model").exists(), reason="shared Llama-2 tokenizer not present")
def test_llama2_tokenizer_gets_32004_ids_and_resizing_keeps_old_rows() -> None:
    tokenizer = load_tokenizer(LLAMA2)
    assert len(tokenizer) == 32_000
    assert add_latent_tokens(tokenizer) == 4
    assert len(tokenizer) == 32_004
    assert add_latent_tokens(tokenizer) == 0  # idempotent
    assert tokenizer.convert_tokens_to_ids(LATENT_TOKENS.all()) == [32_000, 32_001, 32_002, 32_003]

    spec = ScratchModelConfig(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
    model = create_llama(spec, vocab_size=32_000, seed=0)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = model.get_output_embeddings().weight.detach().clone()
    assert resize_model_embeddings(model, tokenizer, seed=3) == 4
    new_input = model.get_input_embeddings().weight.detach()
    new_output = model.get_output_embeddings().weight.detach()
    assert new_input.shape == (32_004, 64) and new_output.shape == (32_004, 64)
    assert torch.equal(new_input[:32_000], old_input)
    assert torch.equal(new_output[:32_000], old_output)
    std = 64**-0.5
    assert new_input[32_000:].abs().max() <= 3 * std + 1e-6
    assert not torch.equal(new_input[32_000:], new_output[32_000:])


def test_new_rows_are_seeded_and_scaled_by_width(tiny_tokenizer) -> None:
    spec = ScratchModelConfig(
        hidden_size=256, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=64
    )
    rows = []
    for _ in range(2):
        model = create_llama(spec, vocab_size=len(tiny_tokenizer) - 4, seed=0)
        resize_model_embeddings(model, tiny_tokenizer, seed=11)
        rows.append(model.get_input_embeddings().weight.detach()[-4:].clone())
    assert torch.equal(rows[0], rows[1])
    assert abs(rows[0].std().item() - 256**-0.5) < 0.01


def test_trained_bpe_round_trips_text_exactly() -> None:
    texts = ["Let x = 3. Then x^2 = 9.\n\n  Indented $\\alpha$ line.", "é and — too."] * 10
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    add_latent_tokens(tokenizer)
    for text in [*texts, "unseen words 12345"]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert len(tokenizer) <= 304


def test_bad_tokenizer_inputs_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(LatentThoughtsError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(LatentThoughtsError, match="vocab_size"):
        train_bpe_tokenizer(["x"], vocab_size=10)


def test_latent_rows_inside_a_padded_embedding_matrix_get_the_method_initialisation(tmp_path) -> None:
    # Like Qwen (151,936 rows for a smaller tokenizer): the model has spare rows past the tokenizer's
    # ids, so the four latent tokens land on existing rows and nothing is appended.
    tokenizer = train_bpe_tokenizer(TRAINING_TEXTS, vocab_size=400)
    base = len(tokenizer)
    spec = ScratchModelConfig(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
    model = create_llama(spec, vocab_size=base + 60, seed=0)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    add_latent_tokens(tokenizer)
    latent = tokenizer.convert_tokens_to_ids(LATENT_TOKENS.all())
    assert latent == list(range(base, base + 4))

    assert resize_model_embeddings(model, tokenizer, seed=5) == 4
    after_in = model.get_input_embeddings().weight.detach()
    after_out = model.get_output_embeddings().weight.detach()
    assert after_in.shape == (base + 60, 64)  # no rows appended
    others = [i for i in range(base + 60) if i not in latent]
    assert torch.equal(after_in[others], before_in[others]) and torch.equal(
        after_out[others], before_out[others]
    )
    std = 64**-0.5
    for after, before in ((after_in, before_in), (after_out, before_out)):
        rows = after[latent]
        assert not torch.equal(rows, before[latent])
        assert rows.abs().max() <= 3 * std + 1e-6 and 0.7 * std < rows.std() < 1.3 * std

    # the rows are recorded as initialised: resizing again (or after save and load) draws nothing
    assert resize_model_embeddings(model, tokenizer, seed=9) == 0
    assert torch.equal(model.get_input_embeddings().weight.detach()[latent], after_in[latent])
    model.save_pretrained(tmp_path)
    reloaded = load_causal_lm(tmp_path)
    assert resize_model_embeddings(reloaded, tokenizer, seed=9) == 0


def test_a_model_trained_with_the_latent_tokens_keeps_its_rows(tiny_tokenizer) -> None:
    spec = ScratchModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32)
    model = create_llama(spec, vocab_size=len(tiny_tokenizer), seed=0)
    before = model.get_input_embeddings().weight.detach().clone()
    assert resize_model_embeddings(model, tiny_tokenizer) == 0
    assert torch.equal(model.get_input_embeddings().weight.detach(), before)
