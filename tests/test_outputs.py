"""``check_outputs``: an output is never an input, and is known to be writable before the work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.outputs import check_outputs


def test_an_output_that_resolves_to_an_input_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "corpus.jsonl"
    source.write_text("{}\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    for spelling in (source, tmp_path / "." / "corpus.jsonl", link, Path(os.path.relpath(source))):
        with pytest.raises(LatentThoughtsError, match="is also an input"):
            check_outputs(inputs=[source], files=[spelling])
    check_outputs(inputs=[source], files=[tmp_path / "chunks.parquet"])


def test_a_file_read_from_an_input_folder_is_an_input(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("A.")
    with pytest.raises(LatentThoughtsError, match="is also an input"):
        check_outputs(inputs=[tmp_path / "docs"], files=[tmp_path / "docs" / "a.txt"])
    check_outputs(inputs=[tmp_path / "docs"], files=[tmp_path / "docs" / "new.parquet"])


def test_folders_files_and_missing_parents(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(LatentThoughtsError, match="is a folder"):
        check_outputs(files=[tmp_path])
    with pytest.raises(LatentThoughtsError, match="is a file"):
        check_outputs(folders=[afile])
    with pytest.raises(LatentThoughtsError, match="afile is a file, not a folder"):
        check_outputs(files=[afile / "deeper" / "out.parquet"])
    check_outputs(files=[tmp_path / "new" / "deeper" / "out.parquet"], folders=[tmp_path / "new2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # the check creates nothing


def test_a_place_where_nothing_can_be_created_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = locked / "out.parquet"
    try:
        (locked / "probe").write_text("")
        (locked / "probe").unlink()
        target = Path("/sys/latent-thoughts/out.parquet")  # root ignores modes; /sys refuses new files
        if not Path("/sys").is_dir() or (os.access("/sys", os.W_OK) and _creatable(Path("/sys"))):
            pytest.skip("no folder here refuses new files")
    finally:
        locked.chmod(0o700)
        locked.chmod(0o500)
    with pytest.raises(LatentThoughtsError, match="cannot write in"):
        check_outputs(files=[target], flag="--out")


def _creatable(folder: Path) -> bool:
    try:
        (folder / ".latent-thoughts-probe").write_text("")
    except OSError:
        return False
    (folder / ".latent-thoughts-probe").unlink()
    return True


def test_an_output_in_an_input_model_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    for output in (model, model / "eval.json", model / "sub" / "x.json"):
        with pytest.raises(LatentThoughtsError, match="is \\(or is inside\\) the input model folder"):
            check_outputs(models=[model], files=[output])
    with pytest.raises(LatentThoughtsError, match="input model folder"):
        check_outputs(models=[model], folders=[tmp_path / "run"], replaced=[tmp_path / "run" / "model"])
    # beside the model is fine, and a model named by a hub id (no such folder) guards nothing
    check_outputs(
        models=[model, "org/hub-model"], files=[tmp_path / "run" / "eval.json"], folders=[tmp_path / "run"]
    )


def test_an_input_inside_a_replaced_folder_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    with pytest.raises(LatentThoughtsError, match=r"writes model files into .*checkpoints, where its input"):
        check_outputs(models=[checkpoint], replaced=[tmp_path / "run" / "checkpoints"])
    with pytest.raises(LatentThoughtsError, match="where its input"):
        check_outputs(
            inputs=[tmp_path / "run" / "model" / "tokenizer.json"], replaced=[tmp_path / "run" / "model"]
        )
    check_outputs(inputs=[tmp_path / "run" / "data.parquet"], replaced=[tmp_path / "run" / "model"])


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LatentThoughtsError, match="two outputs of this run"):
        check_outputs(files=[tmp_path / "a" / "x.parquet", tmp_path / "a" / "." / "x.parquet"])
    with pytest.raises(LatentThoughtsError, match="two outputs of this run"):
        check_outputs(files=[tmp_path / "x"], folders=[tmp_path / "x"])


def test_a_device_fifo_or_link_to_one_is_refused_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "null"
    link.symlink_to(os.devnull)
    for target, kind in ((fifo, "FIFO"), (link, "device"), (Path(os.devnull), "device")):
        with pytest.raises(LatentThoughtsError, match=f"is a {kind}.*not a regular file"):
            check_outputs(files=[target])
        with pytest.raises(LatentThoughtsError, match=f"is a {kind}.*not a folder"):
            check_outputs(folders=[target])
    assert fifo.exists() and link.is_symlink()


def test_a_folder_lock_refuses_a_second_holder_at_once(tmp_path: Path) -> None:
    from latent_thoughts.outputs import folder_lock

    with (
        folder_lock(tmp_path / "out", "evaluate"),
        pytest.raises(LatentThoughtsError, match="another evaluate is writing there"),
        folder_lock(tmp_path / "out", "evaluate"),
    ):
        pass
    with folder_lock(tmp_path / "out", "evaluate"):  # released with the block
        pass
