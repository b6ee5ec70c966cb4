"""A model's fingerprint is computed once: the trainer records it beside the weights, the E-step (and
``em``) read it while the weights are the ones it was computed from, and hash them otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import latent_thoughts.fingerprint as fingerprint
from latent_thoughts.em.stage import EStepConfig, EStepRequest, model_identity, run_estep
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.fingerprint import (
    FINGERPRINT_FILE,
    hash_files,
    hashed_files,
    model_fingerprint,
    write_fingerprint,
)
from latent_thoughts.generation.outputs import read_metadata
from latent_thoughts.train import train
from tests.test_em_stage import chunks_file  # noqa: F401  (a fixture)
from tests.test_train import testbed_data, tiny_config  # noqa: F401  (a fixture)


def fake_model(folder: Path, weights: bytes = b"\x01" * 64) -> Path:
    """A model folder as far as the fingerprint looks: a config, a weight file, a tokenizer file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}")  # not hashed
    return folder


def reference_hash(folder: Path) -> str:
    """The hash as the E-step computed it before the fingerprint was recorded (the cache keys of
    existing runs hold it): sha256 over the names and bytes of config.json and the weight files."""
    digest = hashlib.sha256()
    for path in sorted(
        p for p in folder.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin", ".pt")
    ):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make hashing model files fail: whatever still returns a fingerprint read the recorded one."""

    def refuse(files: list[Path]) -> str:
        raise AssertionError(f"hashed {[path.name for path in files]}")

    monkeypatch.setattr(fingerprint, "hash_files", refuse)


def test_the_fingerprint_is_the_hash_the_e_step_always_used(tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "model")
    assert model_fingerprint(folder) == reference_hash(folder)
    assert write_fingerprint(folder) == reference_hash(folder)
    assert model_fingerprint(folder) == reference_hash(folder)  # read back, the same value
    recorded = json.loads((folder / FINGERPRINT_FILE).read_text())
    assert recorded["fingerprint"] == reference_hash(folder)
    assert [(f["name"], f["size"]) for f in recorded["files"]] == [
        ("config.json", 23),
        ("model.safetensors", 64),
    ]
    assert hashed_files(folder) == [folder / "config.json", folder / "model.safetensors"]  # the record is not


def test_a_recorded_fingerprint_is_read_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_model(tmp_path / "model")
    value = write_fingerprint(folder)
    no_hashing(monkeypatch)
    assert model_fingerprint(folder) == value


def test_without_a_record_the_weights_are_hashed_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder someone else made gets no file from reading its fingerprint."""
    folder = fake_model(tmp_path / "model")
    hashed: list[list[str]] = []

    def counting(files: list[Path]) -> str:
        hashed.append([path.name for path in files])
        return hash_files(files)

    monkeypatch.setattr(fingerprint, "hash_files", counting)
    before = sorted(folder.iterdir())
    assert model_fingerprint(folder) == reference_hash(folder)
    assert hashed == [["config.json", "model.safetensors"]]
    assert sorted(folder.iterdir()) == before


@pytest.mark.parametrize("change", ["same size, new bytes", "new size", "weight file added", "file removed"])
def test_changed_weights_make_the_record_stale(tmp_path: Path, change: str) -> None:
    folder = fake_model(tmp_path / "model")
    old = write_fingerprint(folder)
    record = (folder / FINGERPRINT_FILE).read_bytes()
    weights = folder / "model.safetensors"
    if change == "same size, new bytes":
        stat = weights.stat()
        weights.write_bytes(b"\x02" * 64)
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "new size":
        weights.write_bytes(b"\x01" * 65)
    elif change == "weight file added":
        (folder / "extra.bin").write_bytes(b"x")
    else:
        (folder / "config.json").unlink()
    assert model_fingerprint(folder) == reference_hash(folder) != old
    assert (folder / FINGERPRINT_FILE).read_bytes() == record  # read, never rewritten


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"format": 1}', '{"format": 99, "fingerprint": "x", "files": []}']
)
def test_a_damaged_or_foreign_record_is_ignored(tmp_path: Path, text: str) -> None:
    folder = fake_model(tmp_path / "model")
    (folder / FINGERPRINT_FILE).write_text(text)
    assert model_fingerprint(folder) == reference_hash(folder)


def test_a_folder_without_a_model_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentThoughtsError, match="not a model folder"):
        model_fingerprint(tmp_path / "empty")


class _Engine:
    identity = "local-model"


def test_the_e_step_identity_reads_the_record_and_hashes_no_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a valid record, naming the E-step's model computes no sha256 at all (before: one pass over
    every weight file at each E-step and in each Ray actor)."""
    folder = fake_model(tmp_path / "model")
    value = write_fingerprint(folder)
    request = EStepRequest(folder, tmp_path / "chunks.parquet", tmp_path / "out.parquet")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sha256 computed")

    monkeypatch.setattr(hashlib, "sha256", refuse)
    assert model_identity(_Engine(), request) == f"local-model:{value}"  # type: ignore[arg-type]


def test_an_e_step_on_a_model_with_a_record_hashes_no_weights(
    tiny_model_dir: Path,
    chunks_file: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    value = write_fingerprint(model)
    no_hashing(monkeypatch)
    config = EStepConfig(k=1, max_thought_tokens=4, batch_chunks=8)
    out = tmp_path / "samples.parquet"
    run_estep(EStepRequest(model, chunks_file, out, config, device="cpu", dtype="fp32", progress=False))
    assert read_metadata(out)["model"].endswith(f":{value}")
    assert pq.read_table(out).num_rows > 0


def test_training_records_the_fingerprint_of_the_saved_model(
    testbed_data: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = train(tiny_config(testbed_data, tmp_path / "run", budget={"tokens": 4 * 4 * 64}))
    assert result.model_dir is not None
    record = json.loads((result.model_dir / FINGERPRINT_FILE).read_text())
    value = reference_hash(result.model_dir)
    assert record["fingerprint"] == value
    assert {f["name"] for f in record["files"]} >= {"config.json", "model.safetensors"}
    no_hashing(monkeypatch)
    assert model_fingerprint(result.model_dir) == value
