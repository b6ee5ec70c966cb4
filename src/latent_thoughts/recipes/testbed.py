"""The testbed recipe: the paper's first experiment (raw documents vs the same documents with thoughts).

One :class:`TestbedRecipe` fixes everything both arms share: the world, the tokenizer, the model
shape, the optimiser and the training tokens. The arms differ only in their data source:

- ``raw``: the bootstrap split's documents as plain text;
- ``thoughts``: the same documents, one sentence a chunk (:func:`testbed_chunk_config`), with the
  oracle teacher's thought for every chunk in the prior/posterior layouts of METHOD section 2.

Functions, in the order a run uses them: :func:`prepare_data` (chunks, thoughts and one shared
tokenizer, written once), :func:`train_config` (the ``TrainConfig`` of one arm and seed) and
:func:`evaluate_arm` (accuracy on held-out problems, and the share of true arithmetic claims in the
thoughts the model writes). ``latent-thoughts demo``, ``bench/thoughts_vs_raw.py`` and
``bench/testbed_recipe.py`` all run this recipe; ``docs/testbed.md`` records how its defaults were
chosen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from latent_thoughts.atomic import atomic_write
from latent_thoughts.config import StageConfig
from latent_thoughts.testbed.checker import check_thought
from latent_thoughts.testbed.task import Problem
from latent_thoughts.testbed.world import (
    DocumentSplit,
    TestbedConfig,
    generate_documents,
    testbed_chunk_config,
)

_CLAIM = re.compile(r"(\d+) ([x+-]) (\d+) = (\d+)")
"""An arithmetic claim of a testbed thought: ``a op b = c``."""

Arm = Literal["raw", "thoughts"]
ARMS: tuple[Arm, ...] = ("raw", "thoughts")
EVAL_MODE: dict[Arm, str] = {"raw": "raw", "thoughts": "latent"}
"""How each arm is evaluated: the raw model with the latent tokens banned, the thought model thinking."""


class TestbedRecipe(StageConfig):
    """Everything the two arms share. Defaults: see ``docs/testbed.md`` for how they were chosen."""

    __test__ = False  # not a pytest test class despite its name

    world: TestbedConfig = Field(
        default_factory=lambda: TestbedConfig(bootstrap_documents=2000),
        description="2,000 documents: at 250 the thought arm's 21 passes replaced copying by memory; see docs/testbed.md",
    )
    vocab_size: int = Field(512, ge=262, description="byte-level BPE shared by both arms (digits split)")
    split_digits: bool = True
    width: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    seq_len: int = Field(256, gt=0)
    tokens: int = Field(4_000_000, gt=0, description="training tokens per arm")
    lr: float = Field(1e-3, gt=0, description="2e-3 never learned to copy the question's operands")
    optimizer: Literal["adamw", "muon"] = Field(
        "muon", description="Muon for the hidden matrices: every seed answers at 4M tokens (finding 15)"
    )
    muon_lr_scale: float = Field(1.0, gt=0, description="optimizer muon: the hidden matrices' lr / lr")
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "wsd"] = Field(
        "wsd",
        description="hold the peak lr, decay over the last decay_fraction (docs/testbed.md, finding 14)",
    )
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final lr as a fraction of lr")
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="schedule wsd: share of steps decaying")
    batch: int = Field(8, gt=0, description="windows per optimizer step")
    weight_decay: float = Field(0.01, ge=0)
    posterior_probability: float = Field(0.5, ge=0.0, le=1.0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    @field_validator("tokens", mode="before")
    @classmethod
    def _token_count(cls, value: Any) -> Any:
        from latent_thoughts.train.config import parse_token_count

        return parse_token_count(value)


@dataclass
class RecipeData:
    """Files :func:`prepare_data` wrote: the bootstrap chunks, the oracle's thoughts, the tokenizer."""

    chunks: Path
    thoughts: Path
    tokenizer: Path


def prepare_data(recipe: TestbedRecipe, out: str | Path) -> RecipeData:
    """Write the bootstrap split's chunks, the oracle's thought for each chunk and the shared tokenizer
    under ``out`` (skipped when already there). The tokenizer is trained on the raw texts and the
    thoughts, so both arms count their token budgets in the same units."""
    out = Path(out)
    files = RecipeData(out / "chunks.parquet", out / "thoughts.parquet", out / "tokenizer")
    if (files.tokenizer / "tokenizer_config.json").exists() and files.thoughts.exists():
        return files
    texts = write_split(recipe.world, "bootstrap", files.chunks, files.thoughts)
    train_shared_tokenizer(recipe, texts, files.tokenizer)
    return files


def split_chunks(world: TestbedConfig, split: DocumentSplit) -> list[Any]:
    """The chunks of one document split of ``world``, one sentence a chunk (:func:`testbed_chunk_config`)."""
    from latent_thoughts.corpus import chunk_document

    chunking = testbed_chunk_config(world)
    return [
        chunk
        for document in generate_documents(world, split)
        for chunk in chunk_document(document.doc_id, document.text, chunking)
    ]


def write_split(
    world: TestbedConfig, split: DocumentSplit, chunks_path: Path, thoughts_path: Path
) -> list[str]:
    """Write one document split of ``world``, one sentence a chunk (:func:`testbed_chunk_config`), and
    the oracle teacher's thought for each chunk (a thoughts file the trainer reads); returns the chunk
    texts and the thoughts (for tokenizer training)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latent_thoughts.corpus import write_chunks
    from latent_thoughts.testbed.oracle import TestbedOracle

    oracle = TestbedOracle.from_config(world)
    chunks = split_chunks(world, split)
    chunks_path.parent.mkdir(parents=True, exist_ok=True)
    write_chunks(chunks, chunks_path)
    thoughts = [oracle.thought(chunk.prefix, chunk.text) for chunk in chunks]
    table = {
        "doc_id": [chunk.doc_id for chunk in chunks],
        "chunk_index": [chunk.chunk_index for chunk in chunks],
        "thought": thoughts,
        "teacher": [oracle.identity] * len(chunks),
    }
    with atomic_write(thoughts_path) as partial:
        pq.write_table(pa.table(table), partial)
    return [*(chunk.text for chunk in chunks), *thoughts]


def train_shared_tokenizer(recipe: TestbedRecipe, texts: Sequence[str], folder: str | Path) -> Path:
    """Train the recipe's BPE (``vocab_size``, ``split_digits``) on ``texts`` (raw chunks and thoughts,
    so both arms count tokens in the same units), add the latent tokens and save it to ``folder``."""
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, recipe.vocab_size, split_digits=recipe.split_digits)
    add_latent_tokens(tokenizer)
    tokenizer.save_pretrained(str(folder))
    return Path(folder)


def train_config(
    recipe: TestbedRecipe, arm: Arm, seed: int, data: RecipeData, output_dir: str | Path, **extra: Any
) -> Any:
    """The :class:`~latent_thoughts.train.TrainConfig` of one arm and seed; ``extra`` sets further
    top-level options (``progress_bar``, ``logging_steps``...)."""
    from latent_thoughts.train import TrainConfig

    source: dict[str, Any] = {"kind": "raw", "chunks": str(data.chunks)}
    if arm == "thoughts":
        source = {"kind": "thoughts", "chunks": str(data.chunks), "thoughts": str(data.thoughts)}
    return TrainConfig.model_validate(
        {
            "output_dir": str(output_dir),
            "seed": seed,
            "model": {
                "tokenizer": str(data.tokenizer),
                "scratch": {
                    "hidden_size": recipe.width,
                    "num_layers": recipe.layers,
                    "num_heads": recipe.heads,
                    "num_kv_heads": recipe.heads,
                    "intermediate_size": recipe.width * 8 // 3,
                    "max_position_embeddings": recipe.seq_len,
                },
            },
            "data": {
                "sources": [source],
                "format": {
                    "seq_len": recipe.seq_len,
                    "seed": seed,
                    "posterior_probability": recipe.posterior_probability,
                },
            },
            "budget": {"tokens": recipe.tokens},
            "optim": {
                "lr": recipe.lr,
                "optimizer": recipe.optimizer,
                "muon_lr_scale": recipe.muon_lr_scale,
                "warmup_steps": recipe.warmup_steps,
                "schedule": recipe.schedule,
                "min_lr_ratio": recipe.min_lr_ratio,
                "decay_fraction": recipe.decay_fraction,
                "global_batch": recipe.batch,
                "micro_batch": recipe.batch,
                "weight_decay": recipe.weight_decay,
                "betas": [0.9, 0.95],
            },
            "precision": recipe.precision,
            "save_steps": 1_000_000,
            "save_total_limit": 1,
            **extra,
        }
    )


@dataclass
class ArmEvaluation:
    """One model in one mode: accuracy on the held-out problems, and for latent mode the thoughts'
    arithmetic (claims made, claims true) as the testbed checker reads them."""

    mode: str
    accuracy: float
    problems: int
    claims: int
    true_claims: int
    copied_operands: int
    example: str

    @property
    def true_claim_share(self) -> float:
        """Share of the thoughts' arithmetic claims that are true (0 when none were made)."""
        return self.true_claims / self.claims if self.claims else 0.0

    @property
    def copied_operand_share(self) -> float:
        """Share of thoughts whose first claim starts from the question's first factor (copying)."""
        return self.copied_operands / self.problems if self.problems else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        shares = {
            "true_claim_share": self.true_claim_share,
            "copied_operand_share": self.copied_operand_share,
        }
        return {**self.__dict__, **shares}


def thought_arithmetic(problems: Sequence[Problem], generations: Sequence[str]) -> tuple[int, int, int]:
    """Read the thoughts of latent-mode ``generations`` (the text before EOL) with the testbed checker.

    Returns (arithmetic claims made, claims true, thoughts whose first claim starts from the
    question's first factor): the last one says whether the model copies the question's operands
    into its thought at all, the second whether its arithmetic is right.
    """
    from latent_thoughts.format import LATENT_TOKENS

    claims = true_claims = copied = 0
    for problem, text in zip(problems, generations, strict=True):
        thought = text.partition(LATENT_TOKENS.eol)[0]
        checked = check_thought(thought)
        claims += checked.claims
        true_claims += checked.valid_claims
        copied += thought.lstrip().startswith(problem.expression.split()[0] + " x ")
    return claims, true_claims, copied


def thought_steps(problems: Sequence[Problem], generations: Sequence[str]) -> tuple[int, int]:
    """How many latent-mode thoughts reach the question's product (a claim whose value is the product
    of its two factors), and how many end with the question's last step applied to the right number
    (the last claim's operator and second operand are the question's last ones, as written there).

    Together they locate a failure: a right product with a wrong last operand means the model
    computes but does not copy the addend from the question.
    """
    from latent_thoughts.format import LATENT_TOKENS

    right_products = right_last_operands = 0
    for problem, text in zip(problems, generations, strict=True):
        terms = problem.expression.split()
        product = int(terms[0]) * int(terms[2])
        claims = _CLAIM.findall(text.partition(LATENT_TOKENS.eol)[0])
        right_products += any(int(value) == product for *_, value in claims)
        if len(terms) > 3 and claims:
            right_last_operands += claims[-1][1:3] == (terms[-2], terms[-1])
    return right_products, right_last_operands


def evaluate_arm(
    model_dir: str | Path,
    problems: list[Problem],
    mode: str,
    progress: bool = False,
    device: str | None = None,
    **options: Any,
) -> ArmEvaluation:
    """Greedy accuracy of a saved model on ``problems`` in ``mode``; in latent mode also the checker's
    verdict on the arithmetic claims of every thought the model wrote. ``options`` go to
    :func:`~latent_thoughts.evaluate.testbed.evaluate_testbed` (``max_thought_tokens``, ``batch_size``)."""
    from latent_thoughts.evaluate.testbed import evaluate_model_dir

    engine_options = {"device": device} if device is not None else None
    result = evaluate_model_dir(
        model_dir,
        problems,
        mode,  # type: ignore[arg-type]
        engine_options=engine_options,
        progress=progress,
        **options,
    )
    claims = true_claims = copied = 0
    if mode == "latent" or options.get("reasoning_tokens"):  # a thought, or plain-text reasoning
        claims, true_claims, copied = thought_arithmetic(problems, result.generations)
    example = result.generations[0] if result.generations else ""
    return ArmEvaluation(mode, result.accuracy, result.total, claims, true_claims, copied, example)
