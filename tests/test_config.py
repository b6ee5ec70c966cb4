"""Typed configuration: YAML files, key=value overrides, one-line errors with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_thoughts.config import ConfigError, load_config, parse_overrides
from latent_thoughts.corpus import ChunkStageConfig


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "chunk.yaml"
    path.write_text("chunking:\n  mean_sentences: 5\n  seed: 3\ncorpus:\n  text_field: body\n")
    config = load_config(ChunkStageConfig, path, ["chunking.seed=9", "corpus.strict=true"])
    assert config.chunking.mean_sentences == 5
    assert config.chunking.seed == 9
    assert config.corpus.text_field == "body" and config.corpus.strict is True


def test_unknown_key_suggests_the_closest_valid_key() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'chunking.mean_sentence'; did you mean 'chunking.mean_sentences'\?"
    ):
        load_config(ChunkStageConfig, overrides=["chunking.mean_sentence=4"])


def test_mistyped_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"chunking.seed: .*integer.*'abc'"):
        load_config(ChunkStageConfig, overrides=["chunking.seed=abc"])


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("chunking: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(ChunkStageConfig, bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(ChunkStageConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_overrides_parse_yaml_scalars() -> None:
    assert parse_overrides(["a.b=1e-4", "a.c=true", "d=[1, 2]", "e=text"]) == {
        "a": {"b": 1e-4, "c": True},
        "d": [1, 2],
        "e": "text",
    }
