"""Fuzzing the parts that read what users and clients send: every failure is a one-line error that
names the culprit, never another exception.

Targets: the corpus readers (JSONL bytes), the chunker, the answer extractors (GSM8K, testbed,
claims), the configuration loader (YAML text and ``key=value`` overrides) and the server's request
models. The default run tries a few dozen inputs per target; ``pytest -m slow`` tries 10,000 each.
``FUZZ_COUNTS`` records how many inputs each target saw (``bench/reliability.py`` reports them).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_thoughts.config import ConfigError, load_config
from latent_thoughts.corpus import (
    ChunkConfig,
    ChunkStageConfig,
    CorpusConfig,
    SkipReport,
    read_documents,
    split_document,
)
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.grading import extract_gsm8k, parse_number
from latent_thoughts.server.wire import (
    APIError,
    banned_ids,
    logprobs_field,
    messages_of,
    parse_json,
    prompts_of,
    sampling_params,
)
from latent_thoughts.testbed.checker import check_thought
from latent_thoughts.testbed.task import extract_answer

SLOW_EXAMPLES = 10_000
DEFAULT_EXAMPLES = 40
FUZZ_COUNTS: Counter[str] = Counter()

BUDGETS = [
    pytest.param(DEFAULT_EXAMPLES, id="default"),
    pytest.param(SLOW_EXAMPLES, id="10k", marks=pytest.mark.slow),
]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["prompt", "messages", "n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
     "stop_token_ids", "seed", "logprobs", "prompt_logprobs", "echo", "logit_bias", "ignore_eos", "model"]
)  # fmt: skip
REQUESTS = st.dictionaries(KEYS, JSON, max_size=6)


@pytest.fixture(scope="module", autouse=True)
def _save_counts() -> Iterator[None]:
    """With ``LATENT_THOUGHTS_FUZZ_COUNTS=FILE`` set, save the inputs tried per target to FILE (JSON)."""
    yield
    target = os.environ.get("LATENT_THOUGHTS_FUZZ_COUNTS")
    if target:
        Path(target).write_text(json.dumps(dict(FUZZ_COUNTS), indent=2) + "\n")


def run(name: str, budget: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> None:
    """Run ``check`` on ``budget`` inputs drawn from ``strategy``, counting them under ``name``."""

    @settings(
        max_examples=budget,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def fuzz(value: Any) -> None:
        FUZZ_COUNTS[name] += 1
        check(value)

    fuzz()


def one_line(error: Exception, *culprits: str) -> None:
    message = str(error)
    assert message and "\n" not in message
    for culprit in culprits:
        assert culprit in message, message


@pytest.mark.parametrize("budget", BUDGETS)
def test_corpus_reader_on_arbitrary_jsonl(budget: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("fuzz_corpus")

    def check(lines: list[bytes]) -> None:
        path = folder / "c.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        report = SkipReport()
        documents = list(read_documents([path], CorpusConfig(), report))
        for document in documents:
            document.text.encode("utf-8")  # whatever is kept can be written
            document.doc_id.encode("utf-8")
        try:
            list(read_documents([path], CorpusConfig(strict=True)))
        except LatentThoughtsError as error:
            one_line(error, str(path))

    record = st.builds(
        lambda text, doc_id: json.dumps({"id": doc_id, "text": text}).encode(),
        st.text(max_size=40),
        JSON,
    )
    line = st.binary(max_size=40) | record | st.builds(lambda v: json.dumps(v).encode(), JSON)
    run("corpus readers (JSONL lines)", budget, st.lists(line, max_size=5), check)


@pytest.mark.parametrize("budget", BUDGETS)
def test_chunker_on_arbitrary_text(budget: int) -> None:
    def check(value: tuple[str, float, int]) -> None:
        text, mean, seed = value
        chunks, lengths = split_document(
            "d", text, ChunkConfig(mean_sentences=mean, max_sentences=20, seed=seed)
        )
        assert "".join(chunk.text for chunk in chunks) == text
        assert len(chunks) == len(lengths)

    alphabet = st.sampled_from([*"ab Z09.!?\n\t,;\"')(é—\u00a0\u2028", "\ud800"])
    run(
        "chunker (text)",
        budget,
        st.tuples(st.text(alphabet=alphabet, max_size=300), st.floats(1, 20), st.integers(0, 2**31)),
        check,
    )


@pytest.mark.parametrize("budget", BUDGETS)
def test_answer_extractors_on_arbitrary_generations(budget: int) -> None:
    def check(text: str) -> None:
        for strict in (True, False):
            answer = extract_gsm8k(text, strict=strict)
            assert answer is None or isinstance(answer, str)
        parse_number(text)
        answer = extract_answer(text)
        assert answer is None or isinstance(answer, str)
        assert 0 <= check_thought(text).valid_claims <= check_thought(text).claims
        try:
            check_thought(text, text)  # the text as its own chunk: a testbed sentence or a clear error
        except LatentThoughtsError as error:
            one_line(error)

    pieces = st.sampled_from([*"0123456789 +-x*/=.,$#\n", "The answer is ", "<|EOL|>", "####", "1e999"])
    run("answer extractors (generations)", budget, st.lists(pieces, max_size=40).map("".join), check)


@pytest.mark.parametrize("budget", BUDGETS)
def test_config_loader_on_arbitrary_yaml_and_overrides(
    budget: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("fuzz_config")

    def check(value: tuple[str, list[str]]) -> None:
        text, overrides = value
        path = folder / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(ChunkStageConfig, path, overrides)
        except ConfigError as error:
            one_line(error)

    keys = st.sampled_from(
        ["chunking.seed", "chunking.mean_sentences", "corpus.strict", "chunking", "x.y", "", "a=b"]
    )
    override = st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=20)) | st.text(max_size=15)
    yaml_text = st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\" \n0123.#%@`,?")), max_size=80)
    structured = st.builds(lambda v: json.dumps({"chunking": v}), JSON)
    run(
        "config loader (YAML, overrides)",
        budget,
        st.tuples(yaml_text | structured, st.lists(override, max_size=3)),
        check,
    )


@pytest.mark.parametrize("budget", BUDGETS)
def test_server_request_models_on_arbitrary_bodies(budget: int) -> None:
    def check(body: dict[str, Any]) -> None:
        for parse in (
            lambda: sampling_params(body, 16),
            lambda: prompts_of(body),
            lambda: messages_of(body),
            lambda: banned_ids(body),
            lambda: logprobs_field(body, "logprobs"),
        ):
            try:
                parse()
            except APIError as error:
                one_line(error)
                assert 400 <= error.status < 500
        try:
            parse_json(json.dumps(body, allow_nan=True).encode())
        except APIError as error:
            one_line(error)

    run("server request models (JSON bodies)", budget, REQUESTS, check)
