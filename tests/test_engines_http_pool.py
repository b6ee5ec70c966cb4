"""Several servers of one model behind one HTTP engine (one vLLM per GPU): requests go round-robin,
a dead server costs retries and not the run, and the vLLM pool configurations
(configs/teachers/vllm-8gpu.yaml, configs/engines/vllm-estep.yaml) run unchanged but for their
addresses against two real ``latent-thoughts serve`` processes standing in for vLLM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.cli import main
from latent_thoughts.corpus import read_chunks, write_chunks
from latent_thoughts.engines.http_engine import HTTPEngine, HTTPEngineConfig
from latent_thoughts.engines.spec import read_engine_spec
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.synthesis.teachers import engine_options, load_teacher
from tests.test_em_stage import OPTIONS, chunks_file, local_run
from tests.test_server import free_port, serve_subprocess

__all__ = ["chunks_file", "local_run"]  # module fixtures shared with tests/test_em_stage.py

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two ``latent-thoughts serve`` processes of the tiny model: the API roots of a two-GPU pool."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(serve_subprocess(tiny_model_dir, tmp_path_factory.mktemp(f"serve-{i}")))
            for i in range(2)
        ]


def pool_copy(config: Path, servers: list[str], folder: Path, **changes: dict | str) -> Path:
    """``config`` with ``http.base_url`` replaced by ``servers`` and ``changes`` merged in (a dict
    updates that section), written to ``folder``: every other setting is the shipped file's."""
    options = yaml.safe_load(config.read_text())
    options["http"]["base_url"] = servers
    for key, value in changes.items():
        if isinstance(value, dict):
            options[key].update(value)
        else:
            options[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / config.name
    path.write_text(yaml.safe_dump(options))
    return path


def test_requests_go_round_robin_and_score_like_one_server(servers: list[str]) -> None:
    contexts = [[1, 20 + i, 30 + i] for i in range(4)]
    continuations = [[40 + i, 50 + i] for i in range(4)]
    with HTTPEngine(HTTPEngineConfig(base_url=servers[0], prompts_per_request=1)) as one:
        expected = one.score(contexts, continuations)
    with HTTPEngine(HTTPEngineConfig(base_url=servers, prompts_per_request=1, concurrency=4)) as pool:
        got = pool.score(contexts, continuations)
        # /models of each server (they must serve one model), then 4 requests of one pair, in turn.
        assert pool.requests_per_server == [3, 3]
        assert pool.identity == f"http:{','.join(servers)}:{pool.model}"
    for a, b in zip(got, expected, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-6)


def test_a_dead_server_costs_retries_not_the_run(servers: list[str], tiny_model_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = HTTPEngineConfig(
        base_url=[servers[0], dead],
        model=tiny_model_dir.name,  # named, so that no request asks the dead server's /models
        prompts_per_request=1,
        backoff_initial_s=0.0,
        concurrency=1,
    )
    with HTTPEngine(config) as pool:
        samples = pool.sample([[1, 5, 6], [1, 7, 8]], n=2, max_new_tokens=3, seed=0)
    assert [len(group) for group in samples] == [2, 2]
    assert pool.usage.failures.get("connection", 0) >= 1 and pool.usage.retries >= 1


@pytest.mark.slow  # a third server start: about 30 s here
def test_servers_of_different_models_are_one_line_error(
    servers: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with (
        serve_subprocess(tiny_model_dir, tmp_path, extra=("--served-model-name", "other")) as other,
        HTTPEngine(HTTPEngineConfig(base_url=[servers[0], other])) as pool,
        pytest.raises(LatentThoughtsError, match="serve different models") as error,
    ):
        _ = pool.model
    assert other in str(error.value) and "\n" not in str(error.value)


def test_an_empty_server_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one server"):
        HTTPEngineConfig(base_url=[])


def test_the_vllm_pool_teacher_synthesizes_as_against_one_server(
    servers: list[str], chunks_file: Path, tmp_path: Path
) -> None:
    """The 8-GPU teacher file with two servers in place of eight: every chunk answered once, under the
    file's identity, with the same answers as through one server (sampling is seeded per request)."""
    shipped = load_teacher(CONFIGS / "teachers" / "vllm-8gpu.yaml")
    options = engine_options(shipped)
    assert isinstance(options, HTTPEngineConfig)
    assert len(options.base_urls) == 8 and options.vllm_extras and options.score_max_tokens == 1
    chunks = tmp_path / "chunks.parquet"
    write_chunks(read_chunks(chunks_file)[:6], chunks)
    outs = []
    for name, urls in (("pool", servers), ("one", servers[:1])):
        teacher = pool_copy(
            CONFIGS / "teachers" / "vllm-8gpu.yaml",
            urls,
            tmp_path / name,
            identity=name,
            http={"model": ""},  # the served name (the tiny model's folder)
            sampling={"max_new_tokens": 12, "seed": 0},
            batch_size=4,  # type: ignore[arg-type]
        )
        out = tmp_path / name / "thoughts.parquet"
        argv = ["synthesize", "--chunks", str(chunks), "--teacher", str(teacher), "--out", str(out)]
        assert main([*argv, "--no-progress"]) == 0
        outs.append(out)
    pool, one = (
        {(r["doc_id"], r["chunk_index"]): r["thought"] for r in pq.read_table(out).to_pylist()}
        for out in outs
    )
    assert pool == one
    assert {r["teacher"] for r in pq.read_table(outs[0]).to_pylist()} <= {"pool"}
    summary = json.loads(outs[0].with_name("thoughts.summary.json").read_text())
    assert summary["teacher"] == "pool"


def test_the_vllm_estep_engine_file_samples_like_the_in_process_model(
    servers: list[str], tiny_model_dir: Path, chunks_file: Path, local_run: Path, tmp_path: Path
) -> None:
    """``estep configs/engines/vllm-estep.yaml`` with two servers: the thoughts and weights of
    the in-process E-step (the shipped file's scoring settings, one generated token per scoring
    request and prompt_logprobs, read through ``latent-thoughts serve``)."""
    spec = read_engine_spec(CONFIGS / "engines" / "vllm-estep.yaml")
    assert len(spec.http["base_url"]) == 8 and spec.http["score_max_tokens"] == 1
    engine_file = pool_copy(
        CONFIGS / "engines" / "vllm-estep.yaml", servers, tmp_path, tokenizer=str(tiny_model_dir)
    )
    out = tmp_path / "samples.parquet"
    options = [f"{key}={value}" for key, value in OPTIONS.items()]
    argv = ["estep", str(engine_file), "--chunks", str(chunks_file), "--out", str(out)]
    assert main([*argv, "--set", *options, "--no-progress"]) == 0
    served, local = pq.read_table(out).to_pylist(), pq.read_table(local_run).to_pylist()
    for remote_row, local_row in zip(served, local, strict=True):
        assert remote_row["samples"] == local_row["samples"]
        assert remote_row["log_w"] == pytest.approx(local_row["log_w"], abs=1e-3)
        assert remote_row["chosen"] == local_row["chosen"]
