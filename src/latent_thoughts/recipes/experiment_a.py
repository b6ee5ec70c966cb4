"""The paper's Experiment A on the testbed: every arm of its comparison at matched training tokens.

Each arm trains the testbed recipe's model (:class:`~latent_thoughts.recipes.testbed.TestbedRecipe`:
the same scratch Llama, tokenizer, optimiser and number of training tokens) on other data:

- ``raw`` (Raw-Repeat): the bootstrap split's documents, repeated as often as the budget needs;
- ``raw_fresh`` (Raw-Fresh): as many unique documents of the same world as the budget reads once;
- ``wrap_orig`` (WRAP-Orig): the bootstrap documents' WRAP rephrasings (one of the four WRAP styles
  drawn per document), the rephrased text only (METHOD section 2);
- ``wrap_cot`` (WRAP-CoT): the same with the rephrasing that writes each claim's reasoning out;
- ``thoughts`` (latent thoughts): the bootstrap documents with the oracle's thoughts.

The rephrasings come from the ``synthesize`` stage in rephrase mode with the oracle as teacher (the
oracle's rephrase modes, :func:`latent_thoughts.testbed.oracle.rephrase`), cached like any teacher.
Every arm is evaluated greedily on the held-out problems: the thought model in latent mode, every
other in raw mode, at once and with plain-text reasoning allowed (``reasoning``: a WRAP-CoT model
was trained to reason before it answers, :func:`~latent_thoughts.evaluate.testbed.evaluate_testbed`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from latent_thoughts.recipes.testbed import (
    RecipeData,
    TestbedRecipe,
    evaluate_arm,
    split_chunks,
    train_config,
)
from latent_thoughts.testbed.task import Problem

ARM_LABELS: dict[str, str] = {
    "raw": "Raw-Repeat",
    "raw_fresh": "Raw-Fresh",
    "wrap_orig": "WRAP-Orig",
    "wrap_cot": "WRAP-CoT",
    "thoughts": "Latent thoughts",
}
"""The arms in the paper's order, with the paper's names."""

REASONING_TOKENS = 96
"""Plain-text reasoning a raw-mode model may write before its answer (a thought's budget in latent mode)."""

WRAP_STYLES = {"wrap_orig": "wrap", "wrap_cot": "cot"}
"""The ``synthesize --style`` of each WRAP arm."""


def fresh_document_count(recipe: TestbedRecipe, data: RecipeData) -> int:
    """Documents of the world whose raw text holds ``recipe.tokens`` tokens of the shared tokenizer
    (5% more, so no document is read twice): the bootstrap split's tokens per document, scaled."""
    from transformers import AutoTokenizer

    from latent_thoughts.corpus import read_chunks

    tokenizer = AutoTokenizer.from_pretrained(str(data.tokenizer))
    chunks = list(read_chunks(data.chunks))
    tokens = sum(len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) for chunk in chunks)
    per_document = tokens / max(1, len({chunk.doc_id for chunk in chunks}))
    return math.ceil(1.05 * recipe.tokens / per_document)


def prepare_arm_sources(
    recipe: TestbedRecipe, data: RecipeData, arm: str, out: Path, progress: bool = False
) -> list[dict[str, Any]]:
    """The training sources of ``arm`` (as ``TrainConfig`` ``data.sources``), writing what they read
    under ``out`` when it is not there yet (fresh documents' chunks, rephrasings)."""
    from latent_thoughts.corpus import write_chunks

    raw = {"kind": "raw", "chunks": str(data.chunks)}
    if arm == "raw":
        return [raw]
    if arm == "thoughts":
        return [{"kind": "thoughts", "chunks": str(data.chunks), "thoughts": str(data.thoughts)}]
    if arm == "raw_fresh":
        path = out / "fresh_chunks.parquet"
        if not path.exists():
            world = recipe.world.model_copy(
                update={"bootstrap_documents": fresh_document_count(recipe, data)}
            )
            write_chunks(split_chunks(world, "bootstrap"), path)
        return [{"kind": "raw", "chunks": str(path)}]
    if arm in WRAP_STYLES:
        path = out / f"{arm}.parquet"
        rephrase_documents(recipe, data, WRAP_STYLES[arm], path, progress)
        return [{"kind": "rephrased", "rephrased": str(path)}]
    raise ValueError(f"unknown arm {arm!r} (valid: {', '.join(ARM_LABELS)})")


def rephrase_documents(
    recipe: TestbedRecipe, data: RecipeData, style: str, out: Path, progress: bool
) -> None:
    """The bootstrap documents rephrased in ``style`` by the oracle teacher (the ``synthesize``
    stage in rephrase mode; cached, so a finished file costs nothing)."""
    from latent_thoughts.synthesis.stage import SynthesisRequest, run_synthesis
    from latent_thoughts.synthesis.teachers import write_oracle_teacher

    world = recipe.world
    teacher = write_oracle_teacher(
        out.with_suffix(".teacher.yaml"), noise=0.0, seed=world.seed, plan_numbers=world.oracle_plan_numbers
    )
    request = SynthesisRequest(
        chunks=data.chunks, teacher=teacher, out=out, mode="rephrase", style=style, progress=progress
    )
    run_synthesis(request)


def arm_config(
    recipe: TestbedRecipe,
    arm: str,
    seed: int,
    data: RecipeData,
    sources: list[dict[str, Any]],
    output_dir: Path,
    **extra: Any,
) -> Any:
    """The ``TrainConfig`` of one arm and seed: the recipe's (``thoughts`` or ``raw``) with the arm's sources."""
    from latent_thoughts.train import TrainConfig

    base = train_config(recipe, "thoughts" if arm == "thoughts" else "raw", seed, data, output_dir, **extra)
    values = base.model_dump(mode="json")
    values["data"]["sources"] = sources
    return TrainConfig.model_validate(values)


def evaluate_arm_modes(model_dir: Path, problems: list[Problem], arm: str) -> dict[str, dict[str, Any]]:
    """The arm's evaluations by mode name: ``latent`` and ``raw`` for the thought model; ``raw`` and
    ``reasoning`` (raw mode, plain-text reasoning allowed) for every other."""
    if arm == "thoughts":
        runs = {
            "latent": evaluate_arm(model_dir, problems, "latent"),
            "raw": evaluate_arm(model_dir, problems, "raw"),
        }
    else:
        runs = {
            "raw": evaluate_arm(model_dir, problems, "raw"),
            "reasoning": evaluate_arm(model_dir, problems, "raw", reasoning_tokens=REASONING_TOKENS),
        }
    return {mode: evaluation.as_dict() for mode, evaluation in runs.items()}
