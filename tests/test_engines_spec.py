"""``MODEL`` as a model folder or an engine file: kinds, options validated by each engine, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_thoughts.engines import HTTPEngine, TransformersEngine
from latent_thoughts.engines.spec import (
    EngineSpec,
    http_spec,
    is_engine_file,
    local_model_dir,
    open_engine,
    read_engine_spec,
)
from latent_thoughts.errors import LatentThoughtsError


def test_a_model_folder_is_a_local_transformers_engine(tiny_model_dir: Path) -> None:
    spec = read_engine_spec(tiny_model_dir, {"device": "cpu", "dtype": None})
    assert spec.kind == "transformers"
    assert spec.transformers == {"model": str(tiny_model_dir), "device": "cpu"}
    assert local_model_dir(spec, "fine-tuning") == tiny_model_dir
    with open_engine(spec) as (engine, tokenizer):
        assert isinstance(engine, TransformersEngine) and engine.device == "cpu"
        assert tokenizer is engine.tokenizer


def test_an_engine_file_of_kind_transformers_takes_engine_options(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(f"kind: transformers\ntransformers: {{model: {tiny_model_dir}, dtype: fp32}}\n")
    assert is_engine_file(path) and not is_engine_file(tiny_model_dir)
    spec = read_engine_spec(path, {"device": "cpu"})  # the command line adds to the file's options
    assert spec.transformers == {"model": str(tiny_model_dir), "dtype": "fp32", "device": "cpu"}
    with open_engine(spec) as (engine, _):
        assert isinstance(engine, TransformersEngine) and engine.config.dtype == "fp32"


def test_an_engine_file_of_kind_http_names_the_server_and_the_tokenizer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "served.yml"
    path.write_text(
        f"kind: http\nhttp: {{base_url: 'http://127.0.0.1:9/v1', model: tiny}}\ntokenizer: {tiny_model_dir}\n"
    )
    spec = read_engine_spec(path)
    assert spec == EngineSpec(
        kind="http",
        http={"base_url": "http://127.0.0.1:9/v1", "model": "tiny"},
        tokenizer=str(tiny_model_dir),
    )
    assert http_spec("http://127.0.0.1:9/v1", tiny_model_dir).tokenizer == str(tiny_model_dir)
    with open_engine(spec) as (engine, tokenizer):  # no request is made until the engine is used
        assert isinstance(engine, HTTPEngine) and engine.base_url == "http://127.0.0.1:9/v1"
        assert tokenizer.convert_tokens_to_ids("<|END_OF_LATENT|>") is not None
    with pytest.raises(LatentThoughtsError, match="needs a local model"):
        local_model_dir(spec, "fine-tuning")


@pytest.mark.parametrize(
    ("text", "local", "culprit"),
    [
        ("kind: http\nhttp: {base_url: 'http://x/v1'}\n", {}, "needs 'tokenizer'"),
        ("kind: http\nhttp: {base_ur: 'http://x/v1'}\ntokenizer: t\n", {}, "did you mean 'base_url'"),
        ("kind: transformers\ntransformers: {model: m, dtyp: fp32}\n", {}, "did you mean 'dtype'"),
        ("kind: vllm\n", {}, "kind"),
        ("kind: http\nhttp: {base_url: 'http://x/v1'}\ntokenizer: t\n", {"device": "cpu"}, "--device"),
    ],
)
def test_a_bad_engine_file_is_a_one_line_error(tmp_path: Path, text: str, local: dict, culprit: str) -> None:  # type: ignore[type-arg]
    path = tmp_path / "engine.yaml"
    path.write_text(text)
    with pytest.raises(LatentThoughtsError, match=culprit) as caught:
        read_engine_spec(path, local)
    assert "\n" not in str(caught.value)


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(LatentThoughtsError, match="nope"):
        read_engine_spec(tmp_path / "nope")
    with pytest.raises(LatentThoughtsError, match=r"missing\.yaml"):
        read_engine_spec(tmp_path / "missing.yaml")
