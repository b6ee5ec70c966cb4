"""The HTML thought viewer's data (``latent_thoughts.report.viewer``) over small real runs: an ``em``
run, a demo-style folder with a ``synthesize`` output, a moved run folder and one without thoughts.

The data the page embeds must hold every chunk, each E-step chunk's K samples with weights that sum
to 1 and the sample the run selected, the checker's verdict on every thought and claim, and the
layout each thought trains in (METHOD section 2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.cli import main
from latent_thoughts.corpus import Chunk, read_chunks, write_chunks
from latent_thoughts.em.config import load_em_config
from latent_thoughts.em.loop import run_em
from latent_thoughts.em.selection import Candidates, policy_names, select, softmax
from latent_thoughts.format import FormatConfig, Layout, choose_layout
from latent_thoughts.report.viewer import VIEWER_ID, embed_json, section_html, viewer_data, viewer_section
from latent_thoughts.testbed.checker import check_thought, find_claims
from tests.test_em_loop import TINY

TINY_EM = {
    **TINY,
    "iterations": 1,
    "testbed": {
        **TINY["testbed"],
        "world": {"warm_start_documents": 2, "bootstrap_documents": 4, "eval_problems": 2},
    },
    "estep": {"k": 3, "max_thought_tokens": 16},
}
"""An ``em`` run of one iteration on the testbed at the smallest size (seconds on a CPU)."""


def make_tiny_em_run(folder: Path, iterations: int = 1) -> Path:
    """A finished ``em`` run in ``folder / "run"`` (the testbed, K = 3); returns the run folder."""
    run = folder / "run"
    config = folder / "em.yaml"
    config.write_text(yaml.safe_dump({**TINY_EM, "iterations": iterations, "out": str(run)}))
    run_em(load_em_config(config), say=lambda line: None)
    return run


@pytest.fixture(scope="module")
def em_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_em_run(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def em_data(em_run: Path) -> dict[str, Any]:
    data = viewer_data(em_run)
    assert data is not None
    return data


def manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())  # type: ignore[no-any-return]


def source_named(data: dict[str, Any], file: str) -> dict[str, Any]:
    found = [source for source in data["sources"] if source["file"] == file]
    assert len(found) == 1, [source["file"] for source in data["sources"]]
    return found[0]


def chunk_keys(data: dict[str, Any], source: dict[str, Any]) -> list[tuple[str, int]]:
    chunks = data["files"][source["f"]]
    return [(chunks["docs"][d], i) for d, i in zip(chunks["d"], chunks["i"], strict=True)]


def claims_of(thought: str) -> list[int]:
    """The checker's claims of ``thought`` as the viewer stores them: flat [start, end, true, ...]."""
    return [value for claim in find_claims(thought) for value in (claim.start, claim.end, int(claim.true))]


def test_the_em_run_shows_the_warm_start_thoughts_and_every_e_step(
    em_run: Path, em_data: dict[str, Any]
) -> None:
    stages = manifest(em_run)["stages"]
    assert [(source["it"], source["kind"], source["file"]) for source in em_data["sources"]] == [
        (0, "teacher", "data/warm_start/thoughts.parquet"),
        (1, "estep", "iter_1/samples.parquet"),
    ]
    for source, chunk_file in zip(
        em_data["sources"],
        [stages["data"]["outputs"]["warm_start_chunks"], stages["estep_1"]["inputs"]["chunks"]],
        strict=True,
    ):
        chunks = read_chunks(chunk_file)
        assert chunk_keys(em_data, source) == [(chunk.doc_id, chunk.chunk_index) for chunk in chunks]
        assert em_data["files"][source["f"]]["x"] == [chunk.text for chunk in chunks]
        assert source["checker"] is True  # testbed text


def test_every_e_step_chunk_has_its_k_samples_with_weights_summing_to_one_and_the_runs_choice(
    em_run: Path, em_data: dict[str, Any]
) -> None:
    source = source_named(em_data, "iter_1/samples.parquet")
    rows = {
        (row["doc_id"], row["chunk_index"]): row
        for row in pq.read_table(em_run / "iter_1" / "samples.parquet").to_pylist()
    }
    keys = chunk_keys(em_data, source)
    assert set(rows) == set(keys)
    assert source["k"] == TINY_EM["estep"]["k"]  # type: ignore[index]
    assert source["run"] == "importance" and source["pols"][0] == "importance"
    for index, key in enumerate(keys):
        row = rows[key]
        assert source["s"][index] == row["samples"] and len(row["samples"]) == 3
        assert sum(source["nw"][index]) == pytest.approx(1.0, abs=1e-5)
        assert source["nw"][index] == pytest.approx(softmax(row["log_w"]), abs=1e-6)
        for name, column in (("q", "log_q"), ("p", "log_p"), ("w", "log_w")):
            assert source[name][index] == pytest.approx(row[column], abs=1e-4)
        assert source["ess"][index] == pytest.approx(row["ess"], abs=1e-4)
        assert source["b"][index] == pytest.approx(row["log_mean_w"], abs=1e-4)
        assert source["sel"][0][index] == row["chosen"]
        assert row["samples"][row["chosen"]] == row["thought"]
    summary = json.loads((em_run / "iter_1" / "samples.summary.json").read_text())
    assert source["stats"]["ess"] == pytest.approx(summary["mean_ess"])
    assert source["stats"]["bound"] == pytest.approx(summary["mean_bound"])


def test_other_policies_are_the_selection_functions_and_recompute_the_runs_own_choice(
    em_run: Path, em_data: dict[str, Any]
) -> None:
    source = source_named(em_data, "iter_1/samples.parquet")
    assert set(source["pols"]) == set(policy_names())  # every registered policy reads testbed chunks
    assert {"importance", "highest", "uniform", "checker"} <= set(source["pols"])
    seed = manifest(em_run)["stages"]["estep_1"]["config"]["seed"]
    texts = em_data["files"][source["f"]]["x"]
    for policy, picks in zip(source["pols"], source["sel"], strict=True):
        for index, (doc, chunk) in enumerate(chunk_keys(em_data, source)):
            raw_log_w = pq.read_table(em_run / "iter_1" / "samples.parquet").to_pylist()[index]["log_w"]
            chosen = select(policy, Candidates(doc, chunk, texts[index], source["s"][index], raw_log_w), seed)
            assert picks[index] == (-1 if chosen is None else chosen), (policy, index)
    checker = source["sel"][source["pols"].index("checker")]
    assert all(pick == -1 or source["sv"][index][pick] == 1 for index, pick in enumerate(checker))


def test_every_verdict_and_claim_is_the_checkers(em_data: dict[str, Any]) -> None:
    for source in em_data["sources"]:
        texts = em_data["files"][source["f"]]["x"]
        for index, text in enumerate(texts):
            if source["kind"] == "teacher":
                thought = source["t"][index]
                assert source["v"][index] == int(check_thought(thought, text).valid)
                assert source["cl"][index] == claims_of(thought)
            else:
                for k, sample in enumerate(source["s"][index]):
                    assert source["sv"][index][k] == int(check_thought(sample, text).valid)
                    assert source["scl"][index][k] == claims_of(sample)
    teacher = source_named(em_data, "data/warm_start/thoughts.parquet")
    assert any(teacher["cl"]), "the oracle's thoughts make claims"


def test_each_thought_is_placed_in_the_layout_its_training_run_draws(
    em_run: Path, em_data: dict[str, Any]
) -> None:
    stages = manifest(em_run)["stages"]
    for file, trainer in (
        ("data/warm_start/thoughts.parquet", "warm_start"),
        ("iter_1/samples.parquet", "mstep_1"),
    ):
        source = source_named(em_data, file)
        fmt = FormatConfig.model_validate(stages[trainer]["config"]["data"]["format"])
        assert source["lay"]["by"] == trainer and source["lay"]["mode"] == "fixed"
        assert source["lay"]["seed"] == fmt.seed == TINY_EM["seed"]
        expected = [
            "q" if choose_layout(fmt.seed, doc, chunk, fmt.posterior_probability) is Layout.POSTERIOR else "p"
            for doc, chunk in chunk_keys(em_data, source)
        ]
        assert list(source["lay"]["c"]) == expected
        assert {"p", "q"} <= set(expected)


def test_a_demo_folder_shows_its_synthesis_output_and_its_training_configs_layouts(
    em_run: Path, tmp_path: Path
) -> None:
    """A demo's layout (``chunks.parquet``, ``thoughts/oracle.parquet`` from ``synthesize`` with a noisy
    oracle, the training YAML the demo writes): thoughts with false claims, and layouts drawn anew per
    pass when the training format says so."""
    from latent_thoughts.cli.demo import write_train_config

    demo = tmp_path / "demo"
    (demo / "thoughts").mkdir(parents=True)
    shutil.copy(em_run / "data" / "bootstrap" / "chunks.parquet", demo / "chunks.parquet")
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"kind": "oracle", "oracle": {"noise": 0.5, "seed": 1}}))
    thoughts = demo / "thoughts" / "oracle.parquet"
    argv = ["synthesize", "--chunks", str(demo / "chunks.parquet"), "--teacher", str(teacher)]
    assert main([*argv, "--out", str(thoughts), "--no-progress"]) == 0
    data = viewer_data(demo)  # no training configuration yet: the default format
    assert data is not None
    (source,) = data["sources"]
    assert (source["kind"], source["file"], source["lay"]["by"]) == (
        "teacher",
        "thoughts/oracle.parquet",
        None,
    )
    assert source["lay"]["seed"] == FormatConfig().seed
    rows = {
        (row["doc_id"], row["chunk_index"]): row["thought"] for row in pq.read_table(thoughts).to_pylist()
    }
    assert source["t"] == [rows.get(key) for key in chunk_keys(data, source)]
    assert 0 in source["v"] and 1 in source["v"]
    assert any(flag == 0 for claims in source["cl"] for flag in claims[2::3]), "a false claim is marked"

    config = write_train_config(demo, "thoughts", "16k", 5)
    data = viewer_data(demo)
    assert data is not None
    lay = data["sources"][0]["lay"]
    trained = yaml.safe_load(config.read_text())["data"]["format"]
    assert (lay["by"], lay["mode"], lay["seed"]) == ("train-thoughts.yaml", "fixed", trained["seed"])

    trained["redraw_layouts"] = True
    values = yaml.safe_load(config.read_text())
    values["data"]["format"] = trained
    config.write_text(yaml.safe_dump(values))
    data = viewer_data(demo)
    assert data is not None
    assert data["sources"][0]["lay"]["mode"] == "redrawn" and "c" not in data["sources"][0]["lay"]


def test_a_chunk_the_teacher_failed_says_why_and_text_the_checker_cannot_read_turns_it_off(
    em_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    (folder / "thoughts").mkdir(parents=True)
    chunks = read_chunks(em_run / "data" / "bootstrap" / "chunks.parquet")[:3]
    foreign = Chunk("textbook-1", 0, "", "The derivative of x^2 is 2x. ", 0, 29)
    write_chunks([*chunks, foreign], folder / "chunks.parquet")
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"kind": "oracle"}))
    argv = ["synthesize", "--chunks", str(folder / "chunks.parquet"), "--teacher", str(teacher)]
    assert main([*argv, "--out", str(folder / "thoughts" / "oracle.parquet"), "--no-progress"]) == 0
    data = viewer_data(folder)
    assert data is not None
    (source,) = data["sources"]
    assert source["checker"] is False and source["v"] == [None] * 4 and source["cl"] == [None] * 4
    assert source["t"][3] is None and source["note"][3].startswith("✗ no thought: error: LatentThoughtsError")
    assert all(thought for thought in source["t"][:3]) and source["note"][:3] == [None] * 3
    assert source["stats"] == {"chunks": 4, "thoughts": 3, "valid": None}


def test_a_moved_run_folder_is_read_where_it_now_is(
    em_run: Path, em_data: dict[str, Any], tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    for part in ("manifest.json", "data/warm_start", "data/bootstrap", "iter_1/samples.parquet"):
        target = moved / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (em_run / part).is_dir() else shutil.copy)(em_run / part, target)
    data = viewer_data(moved)
    assert data is not None
    assert [source["file"] for source in data["sources"]] == [source["file"] for source in em_data["sources"]]
    assert data["files"] == em_data["files"]


def test_a_folder_without_thoughts_has_no_viewer(tmp_path: Path) -> None:
    assert viewer_section(tmp_path) is None


def test_the_section_is_self_contained_and_no_thought_can_close_its_script(em_run: Path) -> None:
    section = viewer_section(em_run)
    assert section is not None
    assert not re.search(r"<\w+[^>]*\s(src|href)\s*=|https?://|@import|fetch\(|XMLHttpRequest", section)
    data = re.search(rf'<script type="application/json" id="{VIEWER_ID}-data">(.*?)</script>', section, re.S)
    assert data is not None and json.loads(data.group(1)) == viewer_data(em_run)

    hostile = {"sources": [{"t": ["</script><script>alert(1)</script> <!-- \u2028"]}]}
    fragment = section_html(hostile)  # type: ignore[arg-type]
    assert fragment.count("</script>") == 2  # the data's and the code's own
    assert json.loads(embed_json(hostile)) == hostile
