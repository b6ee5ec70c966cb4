"""Fuzzing the parts that read what users and clients send: every failure is a one-line error that
names the culprit, never another exception.

Targets: every reader of a file the product reads (JSONL corpora, Parquet chunk and thoughts files,
the YAML configs of train, em, teachers and engines, Batch API result files, generation cache lines,
em manifests, evaluation files, ``.safetensors`` headers), the chunker, the answer extractors (GSM8K,
testbed, claims), the configuration loader (YAML text and ``key=value`` overrides) and the server's
request models. The default run tries 1,000 inputs per reader (``LATENT_THOUGHTS_FUZZ_EXAMPLES``
changes it) and a few dozen per other target; ``pytest -m slow`` tries 10,000 each.
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
READER_EXAMPLES = int(os.environ.get("LATENT_THOUGHTS_FUZZ_EXAMPLES", "1000"))
FUZZ_COUNTS: Counter[str] = Counter()

BUDGETS = [
    pytest.param(DEFAULT_EXAMPLES, id="default"),
    pytest.param(SLOW_EXAMPLES, id="10k", marks=pytest.mark.slow),
]
READER_BUDGETS = [
    pytest.param(READER_EXAMPLES, id="default"),
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


@pytest.mark.parametrize("budget", READER_BUDGETS)
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


# --- every other reader of a file: one-line error or a counted skip, never another exception --------


def refused(read: Callable[[], Any], *culprits: str) -> None:
    """Call ``read``: a result, or a one-line :class:`LatentThoughtsError` naming ``culprits``."""
    try:
        read()
    except LatentThoughtsError as error:
        one_line(error, *culprits)


def mutated(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` cut short, with bytes overwritten, or with bytes inserted; or arbitrary bytes."""
    position = st.integers(0, len(base))
    cut = st.builds(lambda n: base[:n], position)
    flipped = st.builds(
        lambda edits: bytes(dict(edits).get(i, b) for i, b in enumerate(base)),
        st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=4),
    )
    inserted = st.builds(lambda n, extra: base[:n] + extra + base[n:], position, st.binary(max_size=8))
    return cut | flipped | inserted | st.binary(max_size=64)


PARQUET_COLUMNS = ["doc_id", "chunk_index", "prefix", "text", "start", "end", "thought", "thought_ids"]
ARROW_VALUES = st.sampled_from(["int", "str", "float", "null", "list"])


def _column(kind: str, rows: int) -> Any:
    import pyarrow as pa

    values: dict[str, list[Any]] = {
        "int": [i % 3 - 1 for i in range(rows)],
        "str": ["a", "", "\u00e9", "b"][:rows] + ["a"] * max(0, rows - 4),
        "float": [float("nan"), 1.5, -0.0, 1e308][:rows] + [0.0] * max(0, rows - 4),
        "null": [None] * rows,
        "list": [[1, 2], [], None, [-1]][:rows] + [[0]] * max(0, rows - 4),
    }
    return pa.array(values[kind])


@pytest.fixture(scope="module")
def good_parquet(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid chunk file with a thought column (a chunk file and a thoughts file at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("parquet") / "good.parquet"
    rows = {"doc_id": ["d", "d"], "chunk_index": [0, 1], "prefix": ["", "A. "], "text": ["A. ", "B."]}
    pq.write_table(pa.table({**rows, "start": [0, 3], "end": [3, 5], "thought": ["t", None]}), path)
    return path.read_bytes()


@pytest.mark.parametrize("budget", READER_BUDGETS)
def test_parquet_chunk_and_thoughts_readers_on_damaged_and_mistyped_files(
    budget: int, good_parquet: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latent_thoughts.corpus import read_chunks
    from latent_thoughts.train.data import read_thoughts

    path = tmp_path_factory.mktemp("fuzz_parquet") / "f.parquet"

    def check(value: bytes | tuple[dict[str, str], int]) -> None:
        if isinstance(value, bytes):
            path.write_bytes(value)
        else:
            kinds, rows = value
            pq.write_table(pa.table({name: _column(kind, rows) for name, kind in kinds.items()}), path)
        refused(lambda: read_chunks(path), str(path))
        refused(lambda: read_thoughts(path), str(path))

    tables = st.tuples(
        st.dictionaries(st.sampled_from(PARQUET_COLUMNS), ARROW_VALUES, min_size=1), st.integers(0, 4)
    )
    run("Parquet chunk and thoughts files", budget, mutated(good_parquet) | tables, check)


def _yaml_of(keys: list[str]) -> st.SearchStrategy[str]:
    """YAML text: a mapping of known (dotted) keys to arbitrary values, or arbitrary YAML-ish text."""

    def nest(items: list[tuple[str, Any]]) -> str:
        data: dict[str, Any] = {}
        for key, value in items:
            *parents, leaf = key.split(".")
            node = data
            for parent in parents:
                child = node.get(parent)
                node = node.setdefault(parent, {}) if not isinstance(child, dict) else child
                if not isinstance(node, dict):
                    break
            else:
                node[leaf] = value
        return json.dumps(data)

    structured = st.lists(st.tuples(st.sampled_from(keys), JSON), max_size=4).map(nest)
    text = st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\" \n0123.#%@`,?")), max_size=60)
    return structured | text


def _config_readers() -> dict[str, tuple[Callable[[Path], Any], list[str]]]:
    from latent_thoughts.em.config import load_em_config
    from latent_thoughts.engines.spec import read_engine_spec
    from latent_thoughts.synthesis.teachers import load_teacher
    from latent_thoughts.train.config import load_train_config

    return {
        "train": (
            lambda path: load_train_config(path),
            ["model.tokenizer", "model.arch", "data", "budget.tokens", "optim.lr", "optim.betas", "seed"],
        ),
        "em": (
            lambda path: load_em_config(path),
            ["iterations", "seed", "testbed.width", "estep.k", "estep.temperature", "out", "device"],
        ),
        "teacher": (
            lambda path: load_teacher(path),
            ["kind", "http.base_url", "http.model", "sampling.temperature", "batch_size", "prices"],
        ),
        "engine": (
            lambda path: read_engine_spec(path),
            ["kind", "model", "device", "dtype", "http.base_url", "http.timeout_s", "batch_tokens"],
        ),
    }


@pytest.mark.parametrize("budget", READER_BUDGETS)
@pytest.mark.parametrize("kind", ["train", "em", "teacher", "engine"])
def test_yaml_config_files_on_arbitrary_text(
    kind: str, budget: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    read, keys = _config_readers()[kind]
    path = tmp_path_factory.mktemp(f"fuzz_{kind}") / "c.yaml"

    def check(text: str) -> None:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        refused(lambda: read(path))

    run(f"YAML config files ({kind})", budget, _yaml_of(keys), check)


@pytest.mark.parametrize("budget", READER_BUDGETS)
def test_batch_api_result_files_on_arbitrary_lines(budget: int) -> None:
    from latent_thoughts.synthesis.batch import records_from_output
    from latent_thoughts.synthesis.pipeline import WorkItem

    item = WorkItem(doc_id="d", chunk_index=0, key="k1", prefix="", text="A chunk.", prompt=None)
    response = st.fixed_dictionaries(
        {}, optional={"status_code": JSON | st.just(200), "body": JSON | st.fixed_dictionaries(
            {}, optional={"choices": JSON | st.lists(st.dictionaries(
                st.sampled_from(["message", "finish_reason", "index"]), JSON), max_size=2),
                "usage": JSON, "error": JSON})}
    )  # fmt: skip
    entry = st.fixed_dictionaries(
        {"custom_id": st.sampled_from(["k1", "other"]) | JSON}, optional={"response": response | JSON, "error": JSON}
    )  # fmt: skip
    line = st.builds(json.dumps, entry) | st.text(max_size=30)

    def check(lines: list[str]) -> None:
        records = records_from_output("\n".join(lines), {"k1": item}, "teacher", ["I cannot"])
        assert all(record.key == "k1" for record in records)

    run("Batch API result files", budget, st.lists(line, max_size=4), check)


@pytest.mark.parametrize("budget", READER_BUDGETS)
def test_generation_cache_on_arbitrary_lines(budget: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    from latent_thoughts.generation.cache import ResultCache

    folder = tmp_path_factory.mktemp("fuzz_cache")
    record = {"key": "k", "status": "ok", "text": "t", "prompt_tokens": 1, "completion_tokens": 1}
    fields = st.dictionaries(st.sampled_from([*record, "reason", "teacher", "finish_reason"]), JSON)
    line = (
        st.builds(lambda extra: json.dumps({**record, **extra}).encode(), fields)
        | st.builds(lambda v: json.dumps(v).encode(), JSON)
        | st.binary(max_size=30)
    )

    def check(lines: list[bytes]) -> None:
        (folder / "all.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        try:
            with ResultCache(folder, writer=None) as cache:
                for cached in cache:
                    assert isinstance(cached.key, str)
        except LatentThoughtsError as error:
            one_line(error)

    run("generation cache lines", budget, st.lists(line, max_size=4), check)


@pytest.mark.parametrize("budget", READER_BUDGETS)
def test_em_manifest_on_arbitrary_json(budget: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    from latent_thoughts.em.manifest import Manifest

    folder = tmp_path_factory.mktemp("fuzz_manifest")
    names = ["data", "warm_start", "eval_0"]
    stage = st.dictionaries(st.sampled_from(["status", "fingerprint", "outputs", "metrics"]), JSON) | JSON
    manifest = st.builds(
        lambda stages, extra: json.dumps({"format": 1, "stages": stages, **extra}).encode(),
        st.dictionaries(st.sampled_from(names), stage, max_size=3) | JSON,
        st.dictionaries(st.sampled_from(["config", "invocations"]), JSON, max_size=2),
    )

    def check(data: bytes) -> None:
        (folder / "manifest.json").write_bytes(data)
        try:
            opened = Manifest.open(folder)
            for name in names:
                opened.missing_output(name)
                opened.check(name, "0123456789abcdef", forced=False)
        except LatentThoughtsError as error:
            one_line(error)

    run("em manifests", budget, manifest | st.binary(max_size=40), check)


@pytest.mark.parametrize("budget", READER_BUDGETS)
def test_evaluation_files_on_arbitrary_jsonl(budget: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    from latent_thoughts.evaluate.tasks import read_task
    from latent_thoughts.testbed.task import read_problems

    path = tmp_path_factory.mktemp("fuzz_eval") / "problems.jsonl"
    keys = ["question", "answer", "problem", "solution", "level", "type", "prompt", "id", "subject"]
    pieces = st.sampled_from([*"0123456789 #$\\{}-./", "####", "\\boxed{", "Level "])
    value = JSON | st.lists(pieces, max_size=8).map("".join)
    row = st.builds(lambda v: json.dumps(v).encode(), st.dictionaries(st.sampled_from(keys), value))
    line = row | st.binary(max_size=20) | st.builds(lambda v: json.dumps(v).encode(), JSON)  # fmt: skip

    def check(lines: list[bytes]) -> None:
        path.write_bytes(b"\n".join(lines) + b"\n")
        for task in ("gsm8k", "math"):
            refused(lambda task=task: read_task(task, path), str(path))  # type: ignore[misc]
        refused(lambda: read_problems(path), str(path))

    run("evaluation files (GSM8K, MATH, testbed)", budget, st.lists(line, max_size=3), check)


@pytest.mark.parametrize("budget", READER_BUDGETS)
def test_safetensors_headers_on_arbitrary_bytes(
    budget: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import struct

    from latent_thoughts.train.trainer import check_checkpoint

    folder = tmp_path_factory.mktemp("fuzz_safetensors")
    weights = folder / "model.safetensors"
    tensor = st.fixed_dictionaries(
        {}, optional={"dtype": st.sampled_from(["F32", "I64", "BF16", "X"]) | JSON,
                      "shape": st.lists(st.integers(-2, 2**40), max_size=3) | JSON,
                      "data_offsets": st.lists(st.integers(-1, 2**62), max_size=3) | JSON}
    )  # fmt: skip
    header = st.dictionaries(st.sampled_from(["w", "__metadata__", ""]), tensor | JSON, max_size=2)

    def build(value: tuple[dict[str, Any], bytes, int]) -> bytes:
        head, data, skew = value
        text = json.dumps(head).encode()
        return struct.pack("<Q", max(0, len(text) + skew)) + text + data

    files = st.builds(build, st.tuples(header, st.binary(max_size=16), st.integers(-3, 3))) | st.binary(
        max_size=40
    )

    def check(data: bytes) -> None:
        weights.write_bytes(data)
        refused(lambda: check_checkpoint(folder), str(weights))

    run(".safetensors headers", budget, files, check)
