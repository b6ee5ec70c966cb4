"""What `em` measures to explain its loop: the M-step's own budget, fidelity, selection gain and
growth per iteration, validity split by the kind of chunk, a base pretrained on raw text, and the
E-step of the last model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.em.config import load_em_config
from latent_thoughts.em.loop import RunPaths, run_em, stage_names
from latent_thoughts.recipes.testbed_em import EXPERIMENT, loop_dynamics, pretrained_model
from latent_thoughts.report.thought_checks import sample_quality

from .test_em_loop import TINY


def test_mstep_tokens_set_the_m_steps_budget_and_leave_the_warm_starts(tmp_path: Path) -> None:
    config = load_em_config(None, ["testbed.tokens=2M", "mstep.tokens=4M", f"out={tmp_path}"])
    paths = RunPaths(tmp_path)
    assert EXPERIMENT.training_config(config, paths, 0).budget.tokens == 2_000_000
    assert EXPERIMENT.training_config(config, paths, 1).budget.tokens == 4_000_000
    assert EXPERIMENT.training_config(config, paths, 2).budget.tokens == 4_000_000
    unset = load_em_config(None, ["testbed.tokens=2M", f"out={tmp_path}"])
    assert EXPERIMENT.training_config(unset, paths, 1).budget.tokens == 2_000_000


def test_loop_dynamics_multiply_to_the_growth_of_the_training_thoughts_quality() -> None:
    rows: list[dict[str, Any]] = [
        {"iteration": 0},
        {"iteration": 1, "sampled_true_claims": 0.5, "selected_true_claims": 0.6},
        {"iteration": 2, "sampled_true_claims": 0.45, "selected_true_claims": 0.72},
        {"iteration": 3, "sampled_true_claims": None, "selected_true_claims": None},
    ]
    one, two, three = loop_dynamics(rows, teacher_true_claims=0.8)[1:]
    assert one["fidelity"] == pytest.approx(0.5 / 0.8)  # the warm start keeps 62.5% of its teacher's quality
    assert one["selection_gain"] == pytest.approx(1.2)
    assert one["growth"] == pytest.approx(0.6 / 0.8)
    assert one["growth"] == pytest.approx(one["fidelity"] * one["selection_gain"])
    assert two["fidelity"] == pytest.approx(0.45 / 0.6)  # against what model 1 was trained on
    assert two["growth"] == pytest.approx(0.72 / 0.6)
    assert three["fidelity"] is None and three["growth"] is None


def test_sample_quality_counts_result_chunks_apart_from_chunks_that_pose_a_question(tmp_path: Path) -> None:
    posing, result = "Consider 73 x 68 + 740.", "It equals 5704."
    right, wrong, plan = (
        "73 x 68 = 4964. 4964 + 740 = 5704.",
        "73 x 68 = 4960. 4960 + 740 = 5800.",
        "Multiply first.",
    )
    table = pa.table(
        {
            "text": [posing, result, result],
            "samples": [[plan, plan], [right, wrong], [wrong, wrong]],
            "thought": [plan, right, None],
            "finish_reasons": [["stop", "stop"], ["stop", "length"], ["stop", "stop"]],
        }
    )
    pq.write_table(table, tmp_path / "samples.parquet")
    quality = sample_quality(tmp_path / "samples.parquet")
    assert quality["sampled_question_valid"] == 1.0  # a bare plan passes where nothing is stated
    assert quality["sampled_result_valid"] == pytest.approx(1 / 4)
    assert quality["sampled_valid"] == pytest.approx(3 / 6)
    assert quality["sampled_true_claims"] == pytest.approx(2 / 8)
    assert quality["selected_result_valid"] == 1.0 and quality["selected_thoughts"] == 2
    assert quality["kept_share"] == pytest.approx(2 / 3)
    assert quality["closed_by_eol"] == pytest.approx(5 / 6)


def test_a_pretrained_base_feeds_the_warm_start_and_the_last_model_gets_an_estep(tmp_path: Path) -> None:
    values = {**TINY, "iterations": 1, "out": str(tmp_path / "run"), "final_estep": True}
    values["testbed"] = {**TINY["testbed"], "world": {**TINY["testbed"]["world"], "validation_documents": 2}}
    values["pretrain"] = {"tokens": "1k"}
    (tmp_path / "em.yaml").write_text(yaml.safe_dump(values))
    config = load_em_config(tmp_path / "em.yaml")
    summary = run_em(config, say=lambda line: None)
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    paths = RunPaths(tmp_path / "run")
    assert list(_stages(tmp_path / "run")) == stage_names(1, final_estep=True, prepared=("data", "pretrain"))
    assert str(pretrained_model(paths)) in manifest
    assert EXPERIMENT.training_config(config, paths, 0).model.path == str(pretrained_model(paths))
    assert EXPERIMENT.training_config(config, paths, 1).model.path == str(pretrained_model(paths))
    last = summary["iterations"][-1]
    assert last["iteration"] == 2 and last["accuracy"] is None and last["mean_bound"] is not None


def _stages(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "manifest.json").read_text())["stages"])


def test_redrawn_layouts_change_with_the_iteration_and_leave_the_warm_start_alone(tmp_path: Path) -> None:
    config = load_em_config(None, ["mstep.redraw_layouts=true", "seed=5", f"out={tmp_path}"])
    paths = RunPaths(tmp_path)
    warm, one, two = (EXPERIMENT.training_config(config, paths, t).data.format for t in (0, 1, 2))
    assert not warm.redraw_layouts and warm.seed == 5
    assert one.redraw_layouts and two.redraw_layouts
    assert one.seed != two.seed != warm.seed


def test_the_shipped_bolt_design_gives_the_m_step_twice_the_warm_starts_tokens_and_data() -> None:
    shipped = Path(__file__).resolve().parents[1] / "configs" / "em" / "testbed-bolt-cpu.yaml"
    config = load_em_config(shipped)
    world = config.testbed.world
    assert config.mstep.tokens == 2 * config.testbed.tokens
    assert world.bootstrap_documents == 2 * world.warm_start_documents
    assert config.mstep.init == "base" and config.estep.k == 4 and config.iterations == 3
