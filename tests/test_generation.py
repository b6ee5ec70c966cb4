"""What teacher synthesis and the E-step share (the result cache, the shards), importable by either
stage without the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from latent_thoughts.generation.cache import CacheRecord, ResultCache
from latent_thoughts.generation.shards import shard_files, shard_writer


def test_the_cache_and_the_shards_import_without_any_stage() -> None:
    code = (
        "import sys, latent_thoughts.generation.cache, latent_thoughts.generation.shards; "
        "print(sorted(m for m in sys.modules if m.startswith(('latent_thoughts.synthesis', 'latent_thoughts.em'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_shard_names_and_files(tmp_path: Path) -> None:
    assert shard_writer(None) == shard_writer((0, 1)) == "all"
    assert shard_writer((2, 4)) == "shard-2-of-4"
    for name in [
        "out.shard-10-of-12.parquet",
        "out.shard-2-of-12.parquet",
        "out.shard-x-of-2.parquet",
        "other.parquet",
    ]:
        (tmp_path / name).touch()
    assert [p.name for p in shard_files(tmp_path / "out.parquet")] == [
        "out.shard-2-of-12.parquet",
        "out.shard-10-of-12.parquet",
    ]


def _record(key: str, text: str = "a thought") -> CacheRecord:
    return CacheRecord(key=key, status="ok", text=text, teacher="t", prompt_version="v", finish_reason="stop")


def test_a_line_cut_short_but_ending_in_a_newline_is_reported_and_its_request_redone(tmp_path: Path) -> None:
    with ResultCache(tmp_path, "all") as cache:
        cache.append([_record("a"), _record("b"), _record("c")])
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    # What an editor or a disk-full write can leave: the beginning of the line, then a newline.
    lines[1] = lines[1][:60] + b"\n"
    (tmp_path / "all.jsonl").write_bytes(b"".join(lines))
    with ResultCache(tmp_path, "all") as cache:
        assert cache.status("b") is None  # not trusted: the request is sent again
        assert [cache.status("a"), cache.status("c")] == ["ok", "ok"]
        assert cache.corrupt_lines == [f"{tmp_path / 'all.jsonl'}:2"]
        cache.append([_record("b", "redone")])
    with ResultCache(tmp_path, "all") as cache:
        record = cache.get("b")
        assert record is not None and record.text == "redone"


@pytest.mark.parametrize(
    "line",
    [
        b'{"key":"k","status":"ok","text":5,"teacher":"t","prompt_version":"v","finish_reason":"stop"}\n',
        b'{"key":"k","status":"ok","teacher":"t","prompt_version":"v","finish_reason":"stop"}\n',
        b'{"key":"k","status":"ok","text":"x","teacher":"t","prompt_version":"v","finish_reason":"stop","prompt_tokens":"9"}\n',
        b'{"key":"k","status":"ok","text":"\xff","teacher":"t","prompt_version":"v","finish_reason":"stop"}\n',
        b'["key", "status"]\n',
    ],
    ids=["text not a string", "no text", "token count a string", "invalid UTF-8", "not an object"],
)
def test_a_line_of_the_wrong_shape_is_corrupt(tmp_path: Path, line: bytes) -> None:
    (tmp_path / "all.jsonl").write_bytes(line)
    with ResultCache(tmp_path, None) as cache:
        assert cache.status("k") is None and len(cache.corrupt_lines) == 1
