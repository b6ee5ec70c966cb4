"""Experiment A's arms: the same recipe on five kinds of data, at the same training tokens."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from latent_thoughts.corpus import read_chunks
from latent_thoughts.recipes.experiment_a import (
    ARM_LABELS,
    arm_config,
    fresh_document_count,
    prepare_arm_sources,
)
from latent_thoughts.recipes.testbed import TestbedRecipe, prepare_data, train_config
from latent_thoughts.testbed import TestbedConfig
from latent_thoughts.testbed.oracle import rephrase
from latent_thoughts.tokenizer import load_tokenizer

SMALL_WORLD = TestbedConfig(bootstrap_documents=20, eval_problems=8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("experiment_a")
    recipe = TestbedRecipe(world=SMALL_WORLD, tokens="50k")  # type: ignore[arg-type]
    data = prepare_data(recipe, out / "data")
    sources = {arm: prepare_arm_sources(recipe, data, arm, out / "data") for arm in ARM_LABELS}
    return recipe, data, sources, out


def test_the_arms_are_the_papers_five_in_its_order() -> None:
    assert list(ARM_LABELS.values()) == [
        "Raw-Repeat",
        "Raw-Fresh",
        "WRAP-Orig",
        "WRAP-CoT",
        "Latent thoughts",
    ]


def test_every_arm_trains_the_recipes_run_on_its_own_data(prepared) -> None:  # type: ignore[no-untyped-def]
    recipe, data, sources, out = prepared
    raw = train_config(recipe, "raw", 0, data, out / "run").model_dump()
    for arm, arm_sources in sources.items():
        config = arm_config(recipe, arm, 0, data, arm_sources, out / "run").model_dump()
        assert config["data"].pop("sources") == [
            dict(config_source) for config_source in config_sources(arm_sources)
        ]
        assert config["budget"] == raw["budget"] and config["optim"] == raw["optim"]
        assert config["model"] == raw["model"]
    assert [source["kind"] for source in sources["wrap_cot"]] == ["rephrased"]  # the rephrased text only
    assert [source["kind"] for source in sources["thoughts"]] == ["thoughts"]


def config_sources(sources):  # type: ignore[no-untyped-def]
    from latent_thoughts.train import SourceConfig

    return [SourceConfig.model_validate(source).model_dump() for source in sources]


def test_raw_fresh_reads_unique_documents_enough_for_the_budget(prepared) -> None:  # type: ignore[no-untyped-def]
    recipe, data, sources, _ = prepared
    fresh = list(read_chunks(sources["raw_fresh"][0]["chunks"]))
    bootstrap = list(read_chunks(data.chunks))
    fresh_documents = {chunk.doc_id for chunk in fresh}
    assert len(fresh_documents) == fresh_document_count(recipe, data) > 20
    assert {chunk.doc_id for chunk in bootstrap} <= fresh_documents  # the same world, more of it
    tokenizer = load_tokenizer(str(data.tokenizer))
    tokens = sum(len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) for chunk in fresh)
    assert tokens >= recipe.tokens  # one pass of unique text covers the budget


def test_wrap_arms_rephrase_every_document_with_the_oracles_modes(prepared) -> None:  # type: ignore[no-untyped-def]
    _, data, sources, _ = prepared
    documents: dict[str, list[str]] = {}
    for chunk in read_chunks(data.chunks):
        documents.setdefault(chunk.doc_id, []).append(chunk.text)
    for arm, styles in (("wrap_orig", {"easy", "hard", "wiki", "qa"}), ("wrap_cot", {"cot"})):
        rows = pq.read_table(sources[arm][0]["rephrased"]).to_pylist()
        assert {row["doc_id"] for row in rows} == set(documents)
        assert {row["style"] for row in rows} <= styles
        for row in rows[:3]:
            assert row["text"] == rephrase(" ".join(documents[row["doc_id"]]), row["style"])
