"""Tokenizers: load one, or train a small byte-level BPE; add the latent tokens; resize a model.

New embedding and output rows are initialised as METHOD section 2 says: normal with standard
deviation d^-1/2 (d the hidden size), clipped at 3 standard deviations, from a fixed seed, so the
same tokenizer and seed give the same model on any machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS, SpecialIds

BPE_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load any Hugging Face tokenizer from a local folder (or a SentencePiece ``tokenizer.model``)."""
    path = Path(path)
    if not path.exists():
        raise LatentThoughtsError(f"{path}: tokenizer folder not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise LatentThoughtsError(f"{path}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    return tokenizer


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, split_digits: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most ``vocab_size`` ids on ``texts`` (seconds).

    Decoding is exact (byte-level, no added prefix space). The tokenizer has ``<s>``, ``</s>`` and
    ``<pad>``; the latent tokens are added separately by :func:`add_latent_tokens`.

    ``split_digits`` (the default) makes every digit its own token, as the Llama, Qwen and DeepSeek
    tokenizers do. Without it BPE merges frequent digit strings ("20", "767") into single ids, so
    the same number is spelled by different, arbitrary pieces depending on its neighbours: a model
    then has to memorise arithmetic per piece instead of learning it digit by digit, and copying a
    number means copying ids it may rarely have seen. With one token per digit, an operand is copied
    digit by digit and a partial product is written in a fixed place-value order.
    """
    specials = list(BPE_SPECIAL_TOKENS.values())
    if vocab_size < 256 + len(specials):
        raise LatentThoughtsError(f"vocab_size must be at least {256 + len(specials)}, got {vocab_size}")
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_digits:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **BPE_SPECIAL_TOKENS)


def add_latent_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the four latent special tokens (idempotent) and make sure a pad token exists.

    Returns how many ids were added. A tokenizer without a pad token reuses EOS for padding, so
    the vocabulary grows by exactly four (Llama-2: 32,000 -> 32,004).
    """
    added = tokenizer.add_special_tokens({"additional_special_tokens": LATENT_TOKENS.all()})
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return int(added)


LATENT_ROWS_KEY = "latent_token_rows"
"""The model-config attribute listing the embedding rows of the latent tokens that have been
initialised (saved in ``config.json``), so that a trained model's rows are never drawn again."""


@torch.no_grad()
def resize_model_embeddings(model: Any, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> int:
    """Give ``model`` a row for every id of ``tokenizer`` and the METHOD initialisation to new rows.

    New rows are drawn from N(0, d^-1/2) clipped at 3 standard deviations, with a generator seeded
    by ``seed``, in the input and (when untied) output embeddings. They are:

    - the rows appended when the tokenizer has more ids than the model has rows (Llama-2: 32,000
      rows, 32,004 ids);
    - the rows of the four latent tokens when the model already has them as spare rows of a padded
      embedding matrix (Qwen: 151,936 rows for a smaller tokenizer), unless its config records them
      as initialised (:data:`LATENT_ROWS_KEY`). A model without spare rows whose tokenizer already
      holds the latent tokens (one trained here) keeps its rows.

    Every other row is unchanged. The latent rows are recorded in ``model.config``. Returns how many
    rows were initialised.
    """
    old_size = model.get_input_embeddings().weight.shape[0]
    special = SpecialIds.from_tokenizer(tokenizer)
    latent_ids = [special.sol, special.eol, special.prior, special.post]
    known = {int(i) for i in getattr(model.config, LATENT_ROWS_KEY, None) or []}
    spare = old_size > len(tokenizer)
    rows = set(range(old_size, len(tokenizer)))
    if spare:
        rows |= {i for i in latent_ids if i < old_size and i not in known}
    if len(tokenizer) > old_size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.config.vocab_size = len(tokenizer)
    setattr(model.config, LATENT_ROWS_KEY, sorted(known | set(latent_ids)))
    if not rows:
        return 0
    index = torch.tensor(sorted(rows))
    generator = torch.Generator().manual_seed(seed)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    for weight in matrices:
        hidden = weight.shape[1]
        std = hidden**-0.5
        drawn = torch.randn(len(index), hidden, generator=generator) * std
        weight[index.to(weight.device)] = drawn.clamp(-3 * std, 3 * std).to(weight.dtype).to(weight.device)
    return len(index)
