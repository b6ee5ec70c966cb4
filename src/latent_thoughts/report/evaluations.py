"""The tables of evaluation results: ``latent-thoughts evaluate``'s files and the demo's results.

``evaluate`` writes, per benchmark task, ``TASK_MODE.json`` (``task, mode, samples, n, accuracy,
stderr``, GSM8K's ``flexible``, ``pass@k``, ``timed_out``, MATH's ``by_subject`` and ``by_level``),
and for the testbed task one JSON file (``model, mode, correct, total, accuracy`` and, in latent
mode, the thoughts' ``true_claim_share`` and ``copied_operand_share``). The demo writes
``results.json`` (accuracy by label) beside its evaluations (``eval-ARM-MODE.json``).
"""

from __future__ import annotations

from typing import Any

from latent_thoughts.report.tables import Block, Table, fixed


def is_testbed_record(record: Any) -> bool:
    """Whether ``record`` is the testbed task's evaluation (``correct`` of ``total``, ``accuracy``)."""
    return isinstance(record, dict) and {"accuracy", "total", "mode"} <= set(record)


def is_benchmark_record(record: Any) -> bool:
    """Whether ``record`` is a benchmark task's aggregate (``task``, ``n``, ``accuracy``)."""
    return isinstance(record, dict) and {"task", "n", "accuracy"} <= set(record)


def demo_table(accuracies: dict[str, float]) -> Table:
    """The demo's results: accuracy per model and prompting (``results``)."""
    return Table(
        "results",
        ["model and prompting", "accuracy"],
        [[label, f"{value:.3f}"] for label, value in accuracies.items()],
    )


def sample_quality_table(quality: dict[str, Any]) -> Table:
    """The testbed checker over an E-step's sampled against its selected thoughts (``estep``; the
    demo's ``estep/quality.json``, :func:`latent_thoughts.report.thought_checks.sample_quality`)."""
    return Table(
        "estep",
        ["thoughts (testbed checker)", "true claims", "valid", "valid on chunks that state a result"],
        [
            [
                which,
                *(fixed(quality.get(f"{which}_{key}")) for key in ("true_claims", "valid", "result_valid")),
            ]
            for which in ("sampled", "selected")
        ],
    )


def testbed_table(records: dict[str, dict[str, Any]]) -> Table:
    """Testbed evaluations by file name (``testbed``): mode, correct of total, accuracy, and the
    thoughts' true claims and copied operands where the model wrote thoughts."""
    rows = [
        [
            name,
            str(record.get("mode", "-")),
            f"{record.get('correct', '-')} / {record.get('total', '-')}",
            fixed(record.get("accuracy")),
            fixed(record.get("true_claim_share")),
            fixed(record.get("copied_operand_share")),
        ]
        for name, record in records.items()
    ]
    return Table(
        "testbed",
        ["file", "mode", "correct / total", "accuracy", "true claims", "copied operand"],
        rows,
    )


def _with_error(figure: Any) -> str:
    if not isinstance(figure, dict):
        return "-"
    return f"{figure['accuracy']:.3f} ± {figure.get('stderr', 0.0):.3f}"


def benchmark_tables(records: dict[str, dict[str, Any]]) -> list[Table]:
    """Benchmark aggregates (``benchmarks``: accuracy ± standard error, GSM8K's flexible accuracy,
    pass@k, timed-out gradings) and MATH's accuracy per subject and level (``subjects``)."""
    passes = sorted({key for record in records.values() for key in record if key.startswith("pass@")})
    rows = [
        [
            str(record["task"]),
            str(record.get("mode", "-")),
            str(record.get("samples", 1)),
            f"{record['n']:,}",
            _with_error(record),
            _with_error(record.get("flexible")),
            *(fixed(record.get(key)) for key in passes),
            str(record.get("timed_out", "-")),
        ]
        for record in records.values()
    ]
    tables = [
        Table(
            "benchmarks",
            ["task", "mode", "samples", "n", "accuracy ± stderr", "flexible", *passes, "timed out"],
            rows,
        )
    ]
    groups = [
        [
            str(record["task"]),
            str(record.get("mode", "-")),
            kind,
            name,
            f"{figure['n']:,}",
            _with_error(figure),
        ]
        for record in records.values()
        for kind in ("subject", "level")
        for name, figure in (record.get(f"by_{kind}") or {}).items()
    ]
    if groups:
        tables.append(Table("subjects", ["task", "mode", "by", "group", "n", "accuracy ± stderr"], groups))
    return tables


def evaluation_blocks(records: dict[str, dict[str, Any]]) -> list[Block]:
    """The tables of a set of evaluation files by name: benchmark aggregates, then testbed results."""
    benchmarks = {name: record for name, record in records.items() if is_benchmark_record(record)}
    testbed = {name: record for name, record in records.items() if is_testbed_record(record)}
    blocks: list[Block] = []
    if benchmarks:
        blocks += benchmark_tables(benchmarks)
    if testbed:
        blocks.append(testbed_table(testbed))
    return blocks
