"""The testbed world: deterministic disjoint splits, an oracle whose thoughts check, exact-match grading."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from nltk.tokenize.punkt import PunktSentenceTokenizer

from latent_thoughts.cli import main
from latent_thoughts.config import ConfigError, load_config, validate_config
from latent_thoughts.corpus import ChunkStageConfig, chunk_document, read_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS, DocumentBuilder, FormatConfig
from latent_thoughts.prompts import LatentThoughtPrompt, RephrasePrompt
from latent_thoughts.testbed import (
    TestbedConfig,
    TestbedOracle,
    check_thought,
    extract_answer,
    generate_documents,
    generate_world,
    grade,
    make_eval_problems,
    prompt_ids,
    testbed_chunk_config,
    validity_rate,
)
from latent_thoughts.testbed.checker import evaluate, find_claims
from latent_thoughts.testbed.world import (
    Statement,
    derive_statement,
    parse_sentence,
    parse_text,
    split_of,
)

ORACLE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "teachers" / "oracle.yaml"
SMALL = TestbedConfig(
    warm_start_documents=20, bootstrap_documents=60, validation_documents=10, eval_problems=50
)


def chunks_of(sentences: list[str], sizes: list[int]) -> list[tuple[str, str]]:
    """(prefix, chunk) pairs cutting ``sentences`` into chunks of ``sizes`` (repeated until every
    sentence is in a chunk); the prefix is the previous chunk."""
    pairs, start, previous = [], 0, ""
    for size in itertools.cycle(sizes):
        if start >= len(sentences):
            return pairs
        chunk = " ".join(sentences[start : start + size])
        pairs.append((previous, chunk))
        previous = chunk
        start += size
    raise AssertionError("unreachable")


def all_chunks(config: TestbedConfig, sizes: list[int]) -> list[tuple[str, str]]:
    return [
        pair
        for document in generate_documents(config, "bootstrap")
        for pair in chunks_of([s.text for s in document.sentences], sizes)
    ]


# --- the world -----------------------------------------------------------------------------------


def test_ground_truth_derivation_is_partial_products_then_sums():
    assert derive_statement(37, 24, [("+", 129)]) == [
        "37 x 4 = 148.",
        "37 x 20 = 740.",
        "148 + 740 = 888.",
        "888 + 129 = 1017.",
    ]
    # A zero place is skipped; a single-place factor needs no sum.
    assert derive_statement(37, 40, [("-", 500)]) == ["37 x 40 = 1480.", "1480 - 500 = 980."]
    assert Statement(37, 24, (("+", 129),)).result == 1017
    assert Statement(37, 24, (("+", 129), ("-", 56))).plan() == (
        "Multiply 37 by 24 place by place, then add 129, then subtract 56."
    )


def test_plan_without_numbers_leaves_the_operands_to_the_question():
    statement = Statement(37, 24, (("+", 129), ("-", 56)))
    assert statement.plan(numbers=False) == (
        "Multiply the two factors place by place, then add the next number, then subtract the next number."
    )
    # The world's ground-truth plans and the oracle's agree, and the derivations are unchanged.
    config = SMALL.model_copy(update={"oracle_plan_numbers": False})
    oracle = TestbedOracle.from_config(config)
    document = generate_documents(config, "bootstrap")[0]
    pose, resolve = document.sentences[0], document.sentences[1]
    assert pose.thought == oracle.thought("", pose.text) and not any(c.isdigit() for c in pose.thought)
    assert (
        resolve.thought
        == oracle.thought(pose.text, resolve.text)
        == generate_documents(SMALL, "bootstrap")[0].sentences[1].thought
    )


def test_documents_pose_then_resolve_in_separate_sentences():
    for document in generate_documents(SMALL, "bootstrap"):
        kinds = [s.kind for s in document.sentences]
        assert (
            kinds[0] == "pose"
            and kinds.count("pose") + kinds.count("continuation") == SMALL.results_per_document
        )
        for before, sentence in zip(document.sentences, document.sentences[1:], strict=False):
            # Every posed statement is resolved by the very next sentence, and only there.
            assert (before.kind == "pose") == (sentence.kind == "resolve")
            if sentence.kind == "resolve":
                assert sentence.statement == before.statement and sentence.result == before.statement.result
                assert not check_thought(before.thought).claims  # the plan claims nothing
        assert [r.kind for r in parse_text(document.text)] == kinds


def test_generation_is_deterministic_in_the_seed():
    first = generate_world(SMALL)
    again = generate_world(SMALL)
    assert {s: [d.to_record() for d in docs] for s, docs in first.items()} == {
        s: [d.to_record() for d in docs] for s, docs in again.items()
    }
    other = generate_world(SMALL.model_copy(update={"seed": 1}))
    assert first["bootstrap"][0].text != other["bootstrap"][0].text
    assert make_eval_problems(SMALL) == make_eval_problems(SMALL)


def test_splits_are_disjoint_and_stable_when_another_split_grows():
    world = generate_world(SMALL)
    keys = {
        split: {s.statement.key() for d in docs for s in d.sentences if s.statement is not None}
        for split, docs in world.items()
    }
    eval_keys = set()
    for problem in make_eval_problems(SMALL):
        reading = parse_sentence(problem.question)
        assert reading is not None and reading.kind == "pose" and reading.statement is not None
        assert split_of(SMALL.seed, reading.statement) == "eval"
        eval_keys.add(reading.statement.key())
    keys["eval"] = eval_keys
    names = list(keys)
    for i, left in enumerate(names):
        for right in names[i + 1 :]:
            assert not keys[left] & keys[right], (left, right)
    assert len(eval_keys) == SMALL.eval_problems
    ids = [d.doc_id for docs in world.values() for d in docs]
    assert len(ids) == len(set(ids))
    # Growing the bootstrap split changes neither the warm-start split nor the evaluation problems.
    bigger = SMALL.model_copy(update={"bootstrap_documents": 80})
    assert [d.text for d in generate_documents(bigger, "warm_start")] == [d.text for d in world["warm_start"]]
    assert make_eval_problems(bigger) == make_eval_problems(SMALL)
    assert [d.text for d in generate_documents(bigger, "bootstrap")[:60]] == [
        d.text for d in world["bootstrap"]
    ]


def test_sentences_split_cleanly_with_punkt_and_chunk_one_a_chunk():
    splitter = PunktSentenceTokenizer()
    chunking = testbed_chunk_config(SMALL)
    for document in generate_documents(SMALL, "bootstrap"):
        sentences = [s.text for s in document.sentences]
        assert splitter.tokenize(document.text) == sentences
        # The recommended chunking gives one sentence per chunk, so each resolving sentence opens
        # a chunk whose prefix ends with the expression it resolves.
        chunks = chunk_document(document.doc_id, document.text, chunking)
        assert [c.text.strip() for c in chunks] == sentences
        assert "".join(c.text for c in chunks) == document.text


def test_recommended_chunking_is_config_values():
    assert testbed_chunk_config(SMALL).model_dump(
        include={"mean_sentences", "min_sentences", "max_sentences"}
    ) == {
        "mean_sentences": 1.0,
        "min_sentences": 1,
        "max_sentences": 1,
    }
    wider = testbed_chunk_config(
        SMALL.model_copy(update={"chunk_mean_sentences": 2.0, "chunk_max_sentences": 4})
    )
    assert (wider.mean_sentences, wider.max_sentences) == (2.0, 4)
    with pytest.raises(ConfigError, match="chunk_min_sentences <= chunk_mean_sentences"):
        validate_config(TestbedConfig, {"chunk_mean_sentences": 3, "chunk_max_sentences": 2})


def test_ground_truth_thoughts_are_valid_and_cover_their_sentences():
    for document in generate_documents(SMALL, "warm_start"):
        for sentence in document.sentences:
            result = check_thought(sentence.thought, sentence.text)
            assert result.valid and result.covered, (sentence.text, sentence.thought)


def test_difficulty_knobs_and_impossible_sizes():
    hard = TestbedConfig(digits=3, steps=3, addend_digits=4, operations=["+", "-"], eval_problems=5)
    statement = make_eval_problems(hard)[0]
    a, b = statement.expression.split(" ")[0], statement.expression.split(" ")[2]
    assert len(a) == len(b) == 3 and statement.expression.count(" ") == 6
    with pytest.raises(ConfigError, match="raise digits or steps"):
        validate_config(TestbedConfig, {"digits": 1, "steps": 1})
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        validate_config(TestbedConfig, {"digit": 3})


# --- the checker ---------------------------------------------------------------------------------


def test_checker_parses_every_operation_with_precedence():
    claims = find_claims("First 12 + 30 = 42. Then 42 x 2 = 84, and 84 / 4 = 21, 7 * 3 - 1 = 20, 5 - 9 = -4.")
    assert [(c.stated, c.true) for c in claims] == [
        (42, True),
        (84, True),
        (21, True),
        (20, True),
        (-4, True),
    ]
    assert evaluate("2 + 3 x 4") == 14
    assert evaluate("7 / 2") is None
    assert not find_claims("1.5 + 2 = 3.5 and x = 3 and 2x + 1 = 7")
    result = check_thought("37 x 4 = 148. 37 x 20 = 750.")
    assert (result.claims, result.valid_claims, result.valid) == (2, 1, False)
    assert result.false_claims == ("37 x 20 = 750",)
    assert not check_thought("No arithmetic here.").valid


def test_checker_coverage_needs_every_result_of_the_chunk():
    chunk = "It equals 1017. Adding 129 gives 1146."
    full = "37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017. 1017 + 129 = 1146."
    assert check_thought(full, chunk).valid
    partial = check_thought("37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017.", chunk)
    assert partial.covered is False and not partial.valid
    assert check_thought("3 x 4 = 12.", chunk).covered is False
    assert validity_rate([full, "nothing"], [chunk, chunk]) == 0.5
    with pytest.raises(LatentThoughtsError, match="not a testbed sentence"):
        check_thought(full, "The cat sat on the mat.")


def test_checker_asks_nothing_of_a_chunk_that_states_no_result():
    pose = "Consider 37 x 24 + 129. "
    plan = "Multiply 37 by 24 place by place, then add 129."
    result = check_thought(plan, pose)
    assert (result.claims, result.results, result.covered, result.valid) == (0, 0, True, True)
    assert check_thought("Order does not matter in a product.", pose).valid
    assert check_thought("37 x 4 = 148.", pose).valid  # working ahead is fine when it is true
    assert not check_thought("37 x 4 = 149.", pose).valid  # a false claim never is
    assert not check_thought(plan).valid  # without its chunk a plan cannot be judged
    # A pose followed by its resolution in one chunk needs the derivation.
    both = pose + "It equals 1017."
    assert not check_thought(plan, both).valid
    assert check_thought(
        f"{plan} 37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017.", both
    ).valid


# --- the oracle ----------------------------------------------------------------------------------


def test_noiseless_oracle_thoughts_check_100_percent_on_any_chunking():
    oracle = TestbedOracle()
    prompt = LatentThoughtPrompt()
    for sizes in ([1], [3, 2, 3], [8], [5, 3]):
        pairs = all_chunks(SMALL, sizes)
        replies = oracle.chat([prompt.messages(p, c) for p, c in pairs])
        thoughts = [group[0].text for group in replies]
        assert validity_rate(thoughts, [c for _, c in pairs]) == 1.0
    # A resolving sentence is derived from the expression posed at the end of the prefix ...
    assert oracle.thought("Consider 37 x 24 + 129. ", "It equals 1017.") == (
        "37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017."
    )
    # ... or earlier in the chunk, after that sentence's plan.
    assert oracle.thought("", "Take 37 x 40 - 500. The result is 980.") == (
        "Multiply 37 by 40 place by place, then subtract 500. 37 x 40 = 1480. 1480 - 500 = 980."
    )
    with pytest.raises(LatentThoughtsError, match="poses none"):
        oracle.thought("Adding 1 gives 2. ", "It equals 1017.")
    # Without the prefix a continuation's previous value is recovered from its stated result.
    assert check_thought(oracle.thought("", "Adding 129 gives 1146."), "Adding 129 gives 1146.").valid
    assert oracle.thought("It equals 1017. ", "Adding 129 gives 1146.") == "1017 + 129 = 1146."


def test_noisy_oracle_validity_is_about_one_minus_noise_and_reproducible():
    pairs = all_chunks(SMALL.model_copy(update={"bootstrap_documents": 100}), [2, 1, 3, 2])
    # Noise is measurable where the chunk states a result; a chunk of posing sentences asks for
    # nothing, so its (always irrelevant) noisy thought checks as valid, as its plan does.
    pairs = [(p, c) for p, c in pairs if any(s.result is not None for s in parse_text(c))][:500]
    assert len(pairs) == 500
    noisy = TestbedOracle(noise=0.3, seed=5)
    conversations = [LatentThoughtPrompt().messages(p, c) for p, c in pairs]
    thoughts = [g[0].text for g in noisy.chat(conversations)]
    chunks = [c for _, c in pairs]
    assert abs(validity_rate(thoughts, chunks) - 0.7) <= 0.06
    assert abs(validity_rate(thoughts) - 0.7) <= 0.06  # irrelevant thoughts have no claims at all
    assert [g[0].text for g in TestbedOracle(noise=0.3, seed=5).chat(conversations)] == thoughts
    # Both kinds of noise occur: a false claim, and a thought with no claims.
    results = [check_thought(t, c) for t, c in zip(thoughts, chunks, strict=True)]
    assert any(r.claims == 0 for r in results) and any(r.claims and r.false_claims for r in results)
    # Samples of one chunk differ in their noise draw; the usage is counted.
    group = noisy.chat(conversations[:1], n=20)[0]
    assert len({r.text for r in group}) > 1
    assert noisy.usage.requests == len(conversations) + 20
    assert group[0].prompt_tokens > 0 and group[0].completion_tokens > 0


def test_oracle_rephrases_and_refuses_what_it_cannot_do():
    oracle = TestbedOracle()
    document = "Consider 37 x 24 + 129. It equals 1017. Adding 129 gives 1146."
    cot = oracle.chat([RephrasePrompt("cot").messages(document)])[0][0].text
    assert cot.startswith(
        "Multiply 37 by 24 place by place, then add 129. Consider 37 x 24 + 129. 37 x 4 = 148."
    )
    assert "888 + 129 = 1017. It equals 1017. 1017 + 129 = 1146. Adding 129 gives 1146." in cot
    assert oracle.chat([RephrasePrompt("qa").messages(document)])[0][0].text == (
        "What is 37 x 24 + 129? It is 1017. What does adding 129 give? It gives 1146."
    )
    with pytest.raises(LatentThoughtsError, match="only chats"):
        oracle.sample(["x"])
    with pytest.raises(LatentThoughtsError, match="only chats"):
        oracle.score(["x"], ["y"])
    with pytest.raises(LatentThoughtsError, match="latent-thought and rephrasing"):
        oracle.chat([[{"role": "user", "content": "hello"}]])
    with pytest.raises(LatentThoughtsError, match="not a testbed sentence"):
        oracle.chat([LatentThoughtPrompt().messages("", "The cat sat on the mat.")])
    cut = oracle.chat([LatentThoughtPrompt().messages("", document)], max_new_tokens=3)[0][0]
    assert cut.finish_reason == "length" and cut.text == "Multiply 37 by"


# --- the evaluation task -------------------------------------------------------------------------


def test_eval_problems_and_grading():
    problems = make_eval_problems(SMALL)
    assert len(problems) == SMALL.eval_problems
    problem = problems[0]
    assert problem.question == f"Consider {problem.expression}." and problem.answer == str(
        eval(problem.expression.replace("x", "*"))
    )
    # The ground-truth thought is what the oracle writes for the resolving sentence after the question.
    resolution = f"It equals {problem.answer}."
    assert TestbedOracle().thought(problem.question + " ", resolution) == problem.thought
    assert check_thought(problem.thought, resolution).valid
    right, wrong = problem.answer, str(int(problem.answer) + 1)
    # Raw mode: the model continues the question with the resolving sentence.
    assert grade(problem, f" It equals {right}.")
    assert grade(problem, f" The result is {right}. Take 12 x 13 + 100.")
    assert grade(problem, f" {right}.")
    assert not grade(problem, f" It equals {wrong}.")
    assert not grade(problem, f" Take 12 x 13 + {right}.")  # a new question is no answer
    assert not grade(problem, f" Adding 1 gives {right}.")  # nor a continuation
    # Latent mode: a thought, EOL, then the resolving sentence.
    eol = LATENT_TOKENS.eol
    assert grade(problem, f"{problem.thought}{eol}It equals {right}.")
    assert not grade(problem, f"{problem.thought}{eol}That gives {wrong}.")
    assert not grade(problem, problem.thought)  # a thought that never closed answers nothing
    assert extract_answer(" 42.") == "42" and extract_answer(f"1 x 2 = 2{eol} Its value is 25.") == "25"
    assert extract_answer("no number") is None and extract_answer("37 x 4 = 148.") is None
    statements = make_eval_problems(SMALL, "warm_start")
    assert statements[0].problem_id.startswith("testbed-0-warm_start-")
    assert all(p.question.startswith("Consider ") for p in statements)
    with pytest.raises(LatentThoughtsError, match="unknown testbed split"):
        make_eval_problems(SMALL, "test")


def test_prompt_ids_end_with_the_thinking_tokens(tiny_tokenizer):
    problem = make_eval_problems(SMALL)[0]
    raw = prompt_ids(problem, tiny_tokenizer, thinking=False)
    latent = prompt_ids(problem, tiny_tokenizer, thinking=True)
    assert raw[0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.decode(raw[1:]) == problem.question
    # The thinking prompt is the question's tokens as training cuts them from a document (the space
    # after it goes with the next chunk's first word), then SOL PRIOR: the same ids the training
    # format puts before the next chunk's thought.
    assert tiny_tokenizer.convert_ids_to_tokens(latent[-2:]) == [LATENT_TOKENS.sol, LATENT_TOKENS.prior]
    assert tiny_tokenizer.decode(latent[1:-2]).rstrip() == problem.question
    document = [problem.question + " ", "It equals 1017. "]
    built = DocumentBuilder(tiny_tokenizer, FormatConfig(posterior_probability=0.0)).build(
        "d", document, [None, "z"]
    )
    assert built.input_ids[: len(latent)] == latent


# --- the command line ----------------------------------------------------------------------------


def test_cli_generate_then_check(tmp_path: Path, capsys):
    out = tmp_path / "world"
    args = ["testbed", "generate", "--out", str(out), "bootstrap_documents=30", "warm_start_documents=5"]
    assert main([*args, "validation_documents=4", "eval_problems=12", "seed=3"]) == 0
    rows = [json.loads(line) for line in (out / "bootstrap.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {"id", "text", "sentences", "thoughts"} <= set(rows[0])
    assert rows[0]["text"] == " ".join(rows[0]["sentences"])
    assert len((out / "eval.jsonl").read_text().splitlines()) == 12
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert "chunk_mean_sentences: 1.0" in (out / "config.yaml").read_text()
    printed = capsys.readouterr().out
    assert "--set chunking.mean_sentences=1 chunking.min_sentences=1 chunking.max_sentences=1" in printed
    # chunk.yaml is a chunk-stage config giving the recommended chunking.
    stage = load_config(ChunkStageConfig, out / "chunk.yaml", [])
    assert stage.chunking == testbed_chunk_config(TestbedConfig())

    oracle = TestbedOracle(noise=0.5, seed=1)
    pairs = [pair for row in rows for pair in chunks_of(row["sentences"], [3, 3, 2])]
    thoughts = [oracle.thought(p, c) for p, c in pairs]
    table = pa.table({"prefix": [p for p, _ in pairs], "text": [c for _, c in pairs], "thought": thoughts})
    pq.write_table(table, tmp_path / "thoughts.parquet")
    capsys.readouterr()
    assert main(["testbed", "check", str(tmp_path / "thoughts.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["thoughts"] == len(pairs)
    assert summary["validity_rate"] == validity_rate(thoughts, [c for _, c in pairs])
    assert main(["testbed", "check", str(tmp_path / "thoughts.parquet")]) == 0
    assert "valid:" in capsys.readouterr().out

    assert main(["testbed", "generate", "--out", str(out), "digitz=3"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err
    assert main(["testbed", "check", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet: file not found" in capsys.readouterr().err


def test_cli_check_joins_a_chunk_file_for_coverage(tmp_path: Path, capsys):
    out = tmp_path / "world"
    assert main(["testbed", "generate", "--out", str(out), "bootstrap_documents=6", "eval_problems=2"]) == 0
    chunks_path = tmp_path / "chunks.parquet"
    assert (
        main(
            [
                "chunk",
                str(out / "bootstrap.jsonl"),
                "--out",
                str(chunks_path),
                "--config",
                str(out / "chunk.yaml"),
            ]
        )
        == 0
    )
    chunks = read_chunks(chunks_path)
    oracle = TestbedOracle()
    table = pa.table(
        {
            "doc_id": [c.doc_id for c in chunks],
            "chunk_index": [c.chunk_index for c in chunks],
            "thought": [oracle.thought(c.prefix, c.text) for c in chunks],
        }
    )
    pq.write_table(table, tmp_path / "thoughts.parquet")
    capsys.readouterr()
    assert (
        main(["testbed", "check", str(tmp_path / "thoughts.parquet"), "--chunks", str(chunks_path), "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    # Posing-only chunks have plan thoughts without claims: valid once the chunk is known.
    assert summary["validity_rate"] == 1.0 and summary["coverage_rate"] == 1.0


def test_the_oracle_teacher_refuses_chunks_of_another_corpus_at_once(tmp_path: Path, capsys):
    from latent_thoughts.corpus import write_chunks

    chunks = tmp_path / "news_chunks.parquet"
    texts = [f"The council met on day {i}. It voted to fix the bridge." for i in range(40)]
    write_chunks([c for i, t in enumerate(texts) for c in chunk_document(f"n{i}", t)], chunks)
    out = tmp_path / "thoughts.parquet"
    argv = ["synthesize", "--chunks", str(chunks), "--teacher", str(ORACLE_CONFIG), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-thoughts: error:") and "\n" not in err
    assert "only knows testbed chunks" in err and str(chunks) in err and "not a testbed sentence" in err
    assert "rerun" not in err and not out.exists()


def test_problems_with_a_byte_order_mark_or_invalid_utf8(tmp_path: Path):
    from latent_thoughts.testbed.task import read_problems, write_problems

    problems = make_eval_problems(TestbedConfig(eval_problems=3))
    path = tmp_path / "eval.jsonl"
    write_problems(problems, path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_problems(path) == problems
    path.write_bytes(path.read_bytes() + b'{"id": "\xff"}\n')
    with pytest.raises(LatentThoughtsError, match=rf"{path}:4: invalid UTF-8"):
        read_problems(path)
