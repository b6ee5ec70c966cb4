"""Atomic writes: a reader sees the old file or the new one, never half of one, and no leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from latent_thoughts.atomic import atomic_write, remove_stale_partials, write_text

# A writer that stops mid-write: it prints its partial file's name, then waits to be killed.
WRITER = """
import sys, time
from latent_thoughts.atomic import atomic_write
with atomic_write(sys.argv[1]) as partial:
    partial.write_text("half of it")
    print(partial, flush=True)
    time.sleep(120)
"""


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


@contextmanager
def writer_mid_write(path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real process stopped in the middle of ``atomic_write(path)``, and its partial file."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert process.stdout is not None
        yield process, Path(process.stdout.readline().strip())
    finally:
        process.kill()
        process.wait()


def test_the_partial_of_a_writer_killed_mid_write_is_removed_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with writer_mid_write(path) as (process, partial):
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert partial.read_text() == "half of it" and not path.exists()  # what a SIGKILL leaves
    assert partial.name.startswith(".out.parquet.") and partial.name.endswith(".partial")
    write_text(tmp_path / "other.txt", "x")  # another output's write leaves it alone
    assert partial.exists()
    write_text(path, "whole")
    assert path.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", "out.parquet"]


def test_a_live_writers_partial_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with writer_mid_write(path) as (_, partial):
        write_text(path, "mine")
        assert remove_stale_partials(path) == []
        assert partial.read_text() == "half of it"  # the other writer may still finish
    assert path.read_text() == "mine"
    assert remove_stale_partials(path) == [partial]  # now its writer is gone
