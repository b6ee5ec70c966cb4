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


def test_a_folder_or_a_binary_file_is_a_one_line_error(tmp_path: Path) -> None:
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    for path, reason in ((tmp_path, "is a folder"), (binary, "not a text file")):
        with pytest.raises(ConfigError, match=reason) as caught:
            load_config(ChunkStageConfig, path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_nested_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    lines = ['_a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for previous, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"_{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nchunking: {seed: *g}\n")  # 10 ** 7 values once expanded
    with pytest.raises(ConfigError, match="aliases"):
        load_config(ChunkStageConfig, bomb)
    small = tmp_path / "small.yaml"
    small.write_text("base: &b {seed: 3}\nchunking: *b\n")  # a reasonable anchor is still fine
    with pytest.raises(ConfigError, match=r"unknown key 'base'"):
        load_config(ChunkStageConfig, small)


def test_a_huge_bad_value_is_described_in_one_short_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(ChunkStageConfig, None, [f"chunking.seed=[{', '.join(['1'] * 50_000)}]"])
    assert len(str(caught.value)) < 200


def test_nan_and_infinity_are_refused() -> None:
    for value in (".nan", ".inf"):
        with pytest.raises(ConfigError, match=r"chunking\.mean_sentences"):
            load_config(ChunkStageConfig, None, [f"chunking.mean_sentences={value}"])


def test_a_partial_nested_section_keeps_what_the_fields_default_sets() -> None:
    from latent_thoughts.recipes.testbed import TestbedRecipe

    # the recipe's world has 2,000 bootstrap documents (the world's own default is 250)
    recipe = load_config(TestbedRecipe, None, ["world.eval_problems=40"])
    assert (recipe.world.bootstrap_documents, recipe.world.eval_problems) == (2000, 40)
    recipe = load_config(TestbedRecipe, None, ["world.bootstrap_documents=10"])
    assert recipe.world.bootstrap_documents == 10
