"""``latent-thoughts demo`` end to end, at a tiny budget (slow: run with ``pytest -m slow``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.cli import main


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--tokens", "16k"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"raw model, raw mode", "thought model, latent mode", "thought model, raw mode"}
    assert (out / "accuracy.png").stat().st_size > 0
    for arm in ("raw", "thoughts"):
        assert (out / arm / "model" / "config.json").exists()
        assert (out / arm / "train.log").exists()  # the two arms trained side by side, each in a process
        progress = json.loads((out / arm / "progress.json").read_text())
        assert progress["step"] == progress["max_steps"]
    # the miniature E-step: K samples per chunk, one selected, the checker on both
    quality = json.loads((out / "estep" / "quality.json").read_text())
    assert {"sampled_valid", "selected_valid"} <= set(quality)
    report = (out / "report.html").read_text()
    assert "estep: E-step samples" in report and f"{results['thought model, latent mode']:.3f}" in report
