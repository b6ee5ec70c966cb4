"""Atomic writes: a reader sees the old file or the new one, never half of one, and no leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_thoughts.atomic import atomic_write


def test_a_finished_write_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "out.json"
    with atomic_write(path) as partial:
        assert partial.parent == path.parent and partial.name.startswith(".out.json.")
        partial.write_text("{}")
        assert not path.exists()  # nothing visible until the block ends
    assert path.read_text() == "{}"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as partial:
        partial.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_two_writers_of_one_path_never_share_a_partial(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_write(path) as first, atomic_write(path) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert path.read_text() == "1"  # the outer block ends last
