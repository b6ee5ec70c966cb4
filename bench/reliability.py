"""Run the reliability suite and write ``docs/reliability.md``: every fault and bad input tried, the
stage it hit, the result, and the counts (inputs fuzzed, kills survived, faults injected), then the
cost of faults: synthesis and the E-step over HTTP, without faults and through the fault proxy.

    .venv/bin/python bench/reliability.py [--slow] [--rate 0.1] [--out docs/reliability.md]

``--slow`` adds the tests marked slow (``pytest -m slow``): the 10,000-inputs-per-target fuzzing and
more kill points. The tests themselves are the specification; this script only runs them (pytest,
JUnit XML) and tabulates what they did. The overhead is measured here, in one run: a real
``latent-thoughts serve`` on a tiny random model, each stage run once through ``tests/fault_proxy.py``
injecting nothing and once through it at ``--rate`` (every fault kind, seeded), with a 2 s request
timeout (a slow answer, 3 s, costs that) and a 0.05 s first backoff (a 429 with Retry-After, 1 s). The last lines printed are the summary lines quoted in the closing note.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

SUITE = {
    "tests/test_cli_errors.py": "command line (every verb)",
    "tests/test_outputs.py": "output checks",
    "tests/test_cli_outputs.py": "inputs and outputs (every verb)",
    "tests/test_atomic.py": "atomic writes",
    "tests/test_generation.py": "result cache",
    "tests/test_corpus.py": "chunk",
    "tests/test_config.py": "configuration",
    "tests/test_engines_sampling.py": "sampling",
    "tests/test_server_app.py": "serve",
    "tests/test_synthesis.py": "synthesize",
    "tests/test_em_loop.py": "em",
    "tests/test_reliability_kill.py": "kill and resume (chunk, train, estep, em)",
    "tests/test_reliability_http_faults.py": "HTTP faults (synthesize, estep)",
    "tests/test_reliability_fuzz.py": "fuzzing",
}


def run_suite(slow: bool, junit: Path, counts: Path, faults: Path) -> None:
    """Run the suite's tests (JUnit XML to ``junit``); the fuzz tests save their input counts to
    ``counts`` and the fault proxies the faults they injected to ``faults``."""
    marker = "slow or not slow" if slow else "not slow"
    # The slow fuzz tests each take minutes on a busy machine: no per-test limit for them.
    timeout = ["--timeout=3600"] if slow else []
    command = [sys.executable, "-m", "pytest", "-q", "-m", marker, *timeout, f"--junitxml={junit}", *SUITE]
    env = {
        **os.environ,
        "LATENT_THOUGHTS_FUZZ_COUNTS": str(counts),
        "LATENT_THOUGHTS_FAULT_COUNTS": str(faults),
        "PYTHONPATH": str(REPO / "src"),
    }
    subprocess.run(command, cwd=REPO, env=env, check=False)


def fuzz_seconds(junit: Path) -> float:
    """Seconds the fuzz tests took, from the JUnit file."""
    return sum(
        float(case.get("time", 0))
        for case in ElementTree.parse(junit).getroot().iter("testcase")
        if case.get("classname", "").endswith("test_reliability_fuzz")
    )


def cases(junit: Path) -> list[tuple[str, str, str]]:
    """(stage, case, result) of every test case in the JUnit file."""
    rows = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        stage = SUITE.get(module, module)
        if case.find("failure") is not None or case.find("error") is not None:
            result = "FAILED"
        elif case.find("skipped") is not None:
            result = "skipped"
        else:
            result = "one-line error / handled, nothing lost"
        name = case.get("name", "").removeprefix("test_").replace("_", " ")
        rows.append((stage, name, result))
    return rows


# --- the overhead of faults ------------------------------------------------------------------------

HTTP_OPTIONS = {"timeout_s": 2.0, "max_attempts": 12, "backoff_initial_s": 0.05, "concurrency": 2}
"""The retry policy of both stages under faults: a slow answer costs the 2 s timeout."""


def overhead(rate: float, seed: int, chunks: int, repeats: int, folder: Path) -> list[str]:
    """Synthesis of ``chunks`` textbook chunks and the E-step of ``chunks`` testbed chunks over HTTP,
    each run straight to a real server and then through the fault proxy at ``rate``; one line per
    stage: both times, the faults injected, the retries and whether the outputs are equal."""
    sys.path.insert(0, str(REPO))
    import pyarrow.parquet as pq
    import yaml
    from tests.conftest import TRAINING_TEXTS, save_tiny_llama
    from tests.fault_proxy import FaultProxy
    from tests.test_server import serve_subprocess

    from latent_thoughts.cli import main as cli_main
    from latent_thoughts.corpus import chunk_document, read_documents, write_chunks
    from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(TRAINING_TEXTS, vocab_size=400)
    add_latent_tokens(tokenizer)
    model = save_tiny_llama(folder / "model", tokenizer, positions=512)
    textbook = []
    for document in read_documents([SHARED / "corpus" / "math_textbooks.jsonl"]):
        textbook += chunk_document(document.doc_id, document.text)
        if len(textbook) >= chunks:
            break
    write_chunks(textbook[:chunks], folder / "textbook.parquet")
    world = TestbedConfig(bootstrap_documents=chunks // 5 + 1, results_per_document=2)
    testbed = [
        chunk
        for document in generate_documents(world, "bootstrap")
        for chunk in chunk_document(document.doc_id, document.text, testbed_chunk_config(world))
    ]
    write_chunks(testbed[:chunks], folder / "testbed.parquet")

    def synthesize(base_url: str, out: Path) -> Any:
        teacher = out.with_suffix(".teacher.yaml")
        sampling = {"temperature": 0.7, "max_new_tokens": 16, "seed": 0}
        config = {"kind": "http", "http": {"base_url": base_url, "model": "", **HTTP_OPTIONS}}
        teacher.write_text(yaml.safe_dump({**config, "sampling": sampling, "batch_size": 2}))
        argv = ["synthesize", "--chunks", str(folder / "textbook.parquet"), "--teacher", str(teacher)]
        assert cli_main([*argv, "--out", str(out), "--no-progress"]) == 0
        summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
        columns = ["doc_id", "chunk_index", "thought", "finish_reason"]
        return pq.read_table(out).select(columns), summary["run"]["retries"]

    def estep(base_url: str, out: Path) -> Any:
        argv = ["estep", str(model), "--chunks", str(folder / "testbed.parquet")]
        argv += ["--out", str(out), "--k", "2", "--max-thought-tokens", "8", "--base-url", base_url]
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in HTTP_OPTIONS.items()]
        assert cli_main([*argv, *flags, "--no-progress"]) == 0
        summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
        return pq.read_table(out).drop(["key"]), summary["retries"]  # the key names the proxy's address

    def measure(stage: Any, rate: float, out: Path) -> tuple[Any, int, float, FaultProxy]:
        """(output, retries, seconds, proxy) of one run through a proxy injecting faults at ``rate``."""
        quiet = contextlib.redirect_stdout(io.StringIO())  # the stages' own summaries
        with FaultProxy(server, rate=rate, seed=seed, slow_s=3.0) as proxy, quiet:
            started = time.monotonic()
            output, retries = stage(proxy.url, out)
            return output, retries, time.monotonic() - started, proxy

    lines = []
    (folder / "serve").mkdir()
    with serve_subprocess(model, folder / "serve") as server:
        for name, stage in (("synthesize", synthesize), ("estep", estep)):
            # Both kinds of run go through a proxy (the difference is the faults' cost, not the hop's),
            # alternately, ``repeats`` times each, fresh outputs every time; medians are reported.
            plain_s, faulty_s, same = [], [], True
            for repeat in range(repeats):
                clean, _, seconds, _ = measure(stage, 0.0, folder / f"{name}-clean-{repeat}.parquet")
                plain_s.append(seconds)
                faulty, retries, seconds, proxy = measure(
                    stage, rate, folder / f"{name}-faults-{repeat}.parquet"
                )
                faulty_s.append(seconds)
                same = same and faulty.equals(clean)
            plain, faults = statistics.median(plain_s), statistics.median(faulty_s)
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(proxy.injected.items()))
            total = sum(proxy.injected.values())
            lines.append(
                f"overhead at a {rate:.0%} fault rate, {name} ({chunks} chunks, median of {repeats}): "
                f"{plain:.1f} s without faults, {faults:.1f} s with {total} of {total + proxy.passed} requests "
                f"faulted ({kinds or 'none'}; {retries} retries) = {faults - plain:+.1f} s "
                f"({(faults - plain) / plain:+.0%}); same output: {'yes' if same else 'NO'}"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slow", action="store_true", help="also the tests marked slow (10,000-input fuzzing)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.1, help="fault rate of the overhead runs (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the proxy's faults (default 0)")
    parser.add_argument("--chunks", type=int, default=120, help="chunks per overhead run (default 120)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3; medians)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = parser.parse_args()
    if not 0.0 < args.rate <= 1.0 or args.chunks < 1 or args.repeats < 1:
        parser.error(f"--rate {args.rate} must be in (0, 1], --chunks and --repeats at least 1")
    with tempfile.TemporaryDirectory() as folder:
        junit, counts_path = Path(folder) / "junit.xml", Path(folder) / "counts.json"
        faults_path = Path(folder) / "faults.json"
        run_suite(args.slow, junit, counts_path, faults_path)
        rows, fuzz_s = cases(junit), fuzz_seconds(junit)
        fuzzed = json.loads(counts_path.read_text()) if counts_path.exists() else {}
        proxied = json.loads(faults_path.read_text()) if faults_path.exists() else {}
        costs = overhead(args.rate, args.seed, args.chunks, args.repeats, Path(folder))
    outcome = Counter(result for _, _, result in rows)
    relevant = [row for row in rows if row[0] != "fuzzing"]
    kills = sum(1 for _, name, result in relevant if "kill" in name and result != "FAILED")
    faults = sum(1 for _, name, result in relevant if result != "skipped")
    lines = [
        "# Reliability: faults and bad inputs tried",
        "",
        "Generated by `bench/reliability.py`"
        + (" --slow" if args.slow else "")
        + " from the tests named below; "
        "each row is one test case (parametrized cases separately).",
        "",
        "| stage | fault or bad input | result |",
        "| --- | --- | --- |",
        *(f"| {stage} | {name} | {result} |" for stage, name, result in rows),
        "",
        "## Inputs fuzzed",
        "",
        "| target | inputs |",
        "| --- | --- |",
        *(f"| {target} | {count:,} |" for target, count in sorted(fuzzed.items())),
        "",
        f"The fuzz tests took {fuzz_s:,.0f} s (JUnit times; at `nice 19` on a shared 2-core machine).",
        "",
        "## Faults injected by the proxy",
        "",
        "In the HTTP fault tests, `tests/fault_proxy.py` in front of a real `latent-thoughts serve`:",
        "",
        "| fault | injected |",
        "| --- | --- |",
        *(f"| {kind} | {count:,} |" for kind, count in sorted(proxied.items())),
        "",
        "## Overhead of faults",
        "",
        f"Synthesis and the E-step over HTTP ({args.chunks} chunks, a tiny random model behind a real "
        f"`latent-thoughts serve`), each run {args.repeats} times through the fault proxy injecting nothing "
        f"and {args.repeats} times at a {args.rate:.0%} fault rate (every kind, seed {args.seed}), alternately "
        "in one run of this script; medians. The retry policy is a 2 s request timeout and a 0.05 s first "
        "backoff, so a slow answer (3 s) costs 2 s and a 429 with Retry-After 1 s; the E-step waits for "
        "every request of a batch before the next batch, so its delays add up, while synthesis keeps "
        "other chunks in flight.",
        "",
        *(f"- {line}" for line in costs),
        "",
        "## Summary",
        "",
    ]
    summary = [
        f"faults and bad inputs injected: {faults} cases, {outcome['FAILED']} failed, {outcome['skipped']} skipped",
        f"inputs fuzzed: {sum(fuzzed.values()):,} over {len(fuzzed)} targets",
        f"faults injected by the proxy: {sum(proxied.values()):,} over {len(proxied)} kinds",
        f"kills survived: {kills} (SIGKILL and resume tests)",
        f"nothing lost: {'yes' if outcome['FAILED'] == 0 else 'NO'}",
        *costs,
    ]
    lines.extend(f"- {line}" for line in summary)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in summary:
        print(line)
    same = all(line.endswith("same output: yes") for line in costs)
    return 0 if outcome["FAILED"] == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
