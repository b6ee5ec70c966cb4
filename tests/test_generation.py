"""What teacher synthesis and the E-step share (the result cache, the shards), importable by either
stage without the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
