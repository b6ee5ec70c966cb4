"""The window file: numpy packing identical to ``format.pack_documents``, streamed, mapped, atomic."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import pack_documents
from latent_thoughts.train.windows import open_windows, write_windows


def reference_windows(
    documents: list[list[int]], seq_len: int, pad_id: int, limit: int | None, reset: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What the trainer stored before: ``pack_documents`` window by window, the first ``limit`` kept."""
    windows = list(itertools.islice(pack_documents(documents, seq_len, pad_id, reset), limit))
    ids = np.array([w.input_ids for w in windows], dtype=np.int32).reshape(-1, seq_len)
    lengths = np.array([w.num_real_tokens for w in windows], dtype=np.int64)
    positions = np.array([w.position_ids for w in windows], dtype=np.int32).reshape(-1, seq_len)
    return ids, lengths, positions if reset else None


@settings(max_examples=150, deadline=None)
@given(
    documents=st.lists(st.lists(st.integers(0, 2**31 - 1), max_size=40), max_size=14),
    seq_len=st.sampled_from([1, 2, 3, 7, 16, 33]),
    reset=st.booleans(),
    limit=st.none() | st.integers(0, 12),
    piece_tokens=st.sampled_from([1, 5, 64, 1 << 20]),
)
def test_windows_are_byte_identical_to_pack_documents(
    tmp_path_factory: pytest.TempPathFactory,
    documents: list[list[int]],
    seq_len: int,
    reset: bool,
    limit: int | None,
    piece_tokens: int,
) -> None:
    path = tmp_path_factory.mktemp("windows") / "w.bin"
    windows = write_windows(path, documents, seq_len, -7, limit, reset, piece_tokens=piece_tokens)
    ids, lengths, positions = reference_windows(documents, seq_len, -7, limit, reset)
    assert windows.input_ids.shape == ids.shape and windows.input_ids.tobytes() == ids.tobytes()
    assert windows.lengths.tobytes() == lengths.tobytes()
    assert [windows.length(i) for i in range(len(windows))] == lengths.tolist()
    assert windows.num_tokens == int(lengths.sum())
    if positions is None:
        assert windows.position_ids is None
    else:
        assert windows.position_ids is not None and windows.position_ids.tobytes() == positions.tobytes()


def test_the_file_is_mapped_read_only_and_reopened_by_path_when_pickled(tmp_path: Path) -> None:
    documents = [np.arange(n, dtype=np.int32) for n in (5, 9, 3)]
    written = write_windows(tmp_path / "w.bin", documents, seq_len=4, pad_id=0, reset_position_ids=True)
    windows = open_windows(tmp_path / "w.bin")
    assert isinstance(windows.records, np.memmap) and not windows.records.flags.writeable
    assert windows.input_ids.tolist() == written.input_ids.tolist() == [
        [0, 1, 2, 3], [4, 0, 1, 2], [3, 4, 5, 6], [7, 8, 0, 1], [2, 0, 0, 0]
    ]  # fmt: skip
    assert windows.position_ids is not None
    assert windows.position_ids[1].tolist() == [0, 0, 1, 2]  # the first document continues, then restarts
    assert windows.position_ids[-1].tolist() == [
        0,
        1,
        2,
        3,
    ]  # a continued document counts from 0; padding goes on
    assert windows.lengths.tolist() == [4, 4, 4, 4, 1]
    # A data-loader worker gets the path, not a copy of the windows.
    assert len(pickle.dumps(windows)) < 500
    again = pickle.loads(pickle.dumps(windows))
    assert isinstance(again.records, np.memmap) and again.input_ids.tolist() == windows.input_ids.tolist()


def test_an_endless_stream_stops_at_the_limit(tmp_path: Path) -> None:
    read = 0

    def endless() -> Iterator[np.ndarray]:
        nonlocal read
        for _ in itertools.count():
            read += 1
            yield np.arange(100, dtype=np.int32)

    windows = write_windows(tmp_path / "w.bin", endless(), 64, 0, limit=50, piece_tokens=1000)
    assert len(windows) == 50 and windows.num_tokens == 50 * 64
    assert read < 50 * 64 // 100 + 20  # about the documents the windows need, one piece ahead at most


def test_a_failed_write_leaves_no_file_and_no_partial(tmp_path: Path) -> None:
    def broken() -> Iterator[list[int]]:
        yield [1, 2, 3]
        raise RuntimeError("tokenizer died")

    with pytest.raises(RuntimeError, match="tokenizer died"):
        write_windows(tmp_path / "w.bin", broken(), 2, 0, piece_tokens=1)
    assert list(tmp_path.iterdir()) == []


def test_no_documents_make_an_empty_file_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    empty = write_windows(tmp_path / "empty.bin", [], 8, 0)
    assert len(empty) == 0 and empty.num_tokens == 0 and empty.input_ids.shape == (0, 8)
    (tmp_path / "other.bin").write_bytes(b"\x93NUMPY" + b"\0" * 5000)
    with pytest.raises(LatentThoughtsError, match=r"other\.bin: not a packed-windows file"):
        open_windows(tmp_path / "other.bin")
    with pytest.raises(LatentThoughtsError, match="seq_len must be positive"):
        write_windows(tmp_path / "bad.bin", [[1]], 0, 0)
