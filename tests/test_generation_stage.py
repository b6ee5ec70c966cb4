"""The generation-stage contract: both stages implement it, the executors know no stage by name, a
stage travels as a spec file that a job runs, and the E-step's cache holds a typed payload."""

from __future__ import annotations

import ast
import inspect
import json
import pkgutil
import textwrap
import typing
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import latent_thoughts.generation
from latent_thoughts.cli import main
from latent_thoughts.em.stage import LAYOUT_VERSION, MODE, ChunkSamples, EStepRequest, EStepStage
from latent_thoughts.generation import run_shard
from latent_thoughts.generation.cache import CacheRecord, ResultCache
from latent_thoughts.generation.outputs import read_metadata, with_metadata, write_table
from latent_thoughts.generation.slurm import write_spec
from latent_thoughts.generation.stage import (
    STAGE_KEY,
    GenerationStage,
    stage_class,
    stage_from_spec,
    stage_name,
    stage_spec,
)
from latent_thoughts.synthesis.pipeline import Mode
from latent_thoughts.synthesis.stage import SynthesisRequest, SynthesisStage, run_synthesis
from tests.test_synthesis import ORACLE_TEACHER, testbed_chunks  # noqa: F401  (a fixture)

STAGES: list[type[Any]] = [SynthesisStage, EStepStage]
"""Every implementation of the contract."""


def contract_members() -> dict[str, Any]:
    """The members :class:`GenerationStage` declares (methods, properties, the ``name`` attribute)."""
    declared = {name: value for name, value in vars(GenerationStage).items() if not name.startswith("_")}
    return {**dict.fromkeys(GenerationStage.__annotations__), **declared}


def example(stage: type[Any]) -> Any:
    """An instance of ``stage`` (nothing is read: the paths need not exist)."""
    if stage is EStepStage:
        return EStepStage(EStepRequest(Path("model"), Path("chunks.parquet"), Path("out.parquet")))
    return SynthesisStage(SynthesisRequest(Path("chunks.parquet"), Path("teacher.yaml"), Path("out.parquet")))


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.__name__)
def test_both_stages_implement_the_contract(stage: type[Any]) -> None:
    instance = example(stage)
    assert isinstance(instance, GenerationStage)
    for name, declared in contract_members().items():
        assert hasattr(stage, name), f"{stage.__name__} lacks {name}"
        if isinstance(declared, property):
            assert isinstance(getattr(stage, name), property), f"{stage.__name__}.{name} is not a property"
        elif callable(declared) or isinstance(declared, classmethod):
            wanted = list(inspect.signature(getattr(GenerationStage, name)).parameters)
            got = list(inspect.signature(getattr(stage, name)).parameters)
            assert got == wanted, f"{stage.__name__}.{name}{got} differs from the contract's {wanted}"
    assert isinstance(stage.name, str) and stage.name
    assert instance.with_shard((1, 3)).shard == (1, 3) and instance.with_shard((0, 1)).shard is None
    assert instance.with_shard((1, 3)).outputs().result.name == "out.shard-1-of-3.parquet"


def stage_names() -> set[str]:
    """What would name a stage in a dispatch: the stages' verbs and the modes their outputs record."""
    return {stage.name for stage in STAGES} | {MODE, *typing.get_args(Mode)}


def executor_modules() -> list[str]:
    """The executors and what they share: every module of ``latent_thoughts.generation``, and the
    command line's ``--executor`` options."""
    package = latent_thoughts.generation
    return [
        "latent_thoughts.cli.executors",
        *(f"{package.__name__}.{module.name}" for module in pkgutil.iter_modules(package.__path__)),
    ]


def code_strings(tree: ast.AST) -> list[str]:
    """The string constants of ``tree`` that are code, not documentation (docstrings and bare string
    statements left out)."""
    documentation = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation
    ]


@pytest.mark.parametrize("module", executor_modules())
def test_the_executors_know_no_stage_by_name(module: str) -> None:
    """No executor module imports a stage's package or holds a string naming a stage (what an
    ``if stage == "synthesize"`` needs)."""
    import importlib

    source = Path(str(importlib.import_module(module).__file__)).read_text()
    tree = ast.parse(source)
    packages = {stage.__module__.rsplit(".", 1)[0] for stage in STAGES}
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        )
    ]
    assert not [name for name in imported if name.startswith(tuple(packages))], f"{module} imports a stage"
    if module.startswith("latent_thoughts.generation"):  # a job runs a stage, not a command line
        assert not [name for name in imported if name.startswith("latent_thoughts.cli")], module
    named = [text for text in code_strings(tree) if text.strip().lower() in stage_names()]
    assert not named, f"{module} names a stage: {named}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.__name__)
def test_a_stage_travels_as_a_spec_with_absolute_paths(stage: type[Any], tmp_path: Path) -> None:
    instance = example(stage)
    spec = json.loads(json.dumps(stage_spec(instance)))  # through JSON, as the spec file holds it
    again = stage_from_spec(spec)
    assert type(again) is stage
    assert again.chunks == Path("chunks.parquet").resolve() and again.chunks.is_absolute()
    assert again.outputs().result == Path("out.parquet").resolve()
    request = instance.request
    paths = {
        f.name: getattr(request, f.name)
        for f in fields(request)
        if isinstance(getattr(request, f.name), Path)
    }
    assert again.request == replace(request, **{name: path.resolve() for name, path in paths.items()})


def test_a_spec_naming_no_stage_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "stage.json"
    spec.write_text(json.dumps({"format": 1, "stage": "os:system", "request": {}}))
    assert run_shard.main([str(spec), "--shard", "0/2"]) == 2
    err = capsys.readouterr().err
    assert "'os:system' is not a generation stage" in err and len(err.strip().splitlines()) == 1
    spec.write_text("{")
    assert run_shard.main([str(spec)]) == 2
    assert f"{spec}: cannot read the stage spec" in capsys.readouterr().err


def test_jobs_of_a_spec_file_write_the_single_process_output(
    testbed_chunks: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``run_shard SPEC --shard i/N`` for every i, then ``--merge N``: what a Slurm array runs."""
    single = tmp_path / "single" / "oracle.parquet"
    run_synthesis(SynthesisRequest(testbed_chunks, ORACLE_TEACHER, single, progress=False))
    out = tmp_path / "jobs" / "oracle.parquet"
    spec = write_spec(
        SynthesisStage(SynthesisRequest(testbed_chunks, ORACLE_TEACHER, out)), tmp_path / "slurm"
    )
    for index in range(3):
        assert run_shard.main([str(spec), "--shard", f"{index}/3"]) == 0
    assert not out.exists()
    assert run_shard.main([str(spec), "--merge", "3"]) == 0
    assert out.read_bytes() == single.read_bytes()
    assert (
        out.with_name("oracle.failures.parquet").read_bytes()
        == single.with_name("oracle.failures.parquet").read_bytes()
    )


# --- the merge verb: the stage named by the shards' metadata --------------------------------------------


class ToyStage:
    """A generation stage the command line has never heard of: what ``merge`` needs of one."""

    name: ClassVar[str] = "toy"

    @classmethod
    def merge(cls, out: Path, shards: Sequence[Path]) -> dict[str, Any]:
        tables = [pq.read_table(path).replace_schema_metadata(None) for path in shards]
        write_table(with_metadata(pa.concat_tables(tables), {STAGE_KEY: stage_name(cls)}), out)
        return {"merged_from": [str(path) for path in shards]}

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> Any:
        raise NotImplementedError


def toy_shards(folder: Path, metadata: dict[str, Any], count: int = 2) -> list[Path]:
    paths = [folder / f"toy.shard-{index}-of-{count}.parquet" for index in range(count)]
    for index, path in enumerate(paths):
        write_table(with_metadata(pa.table({"x": [index]}), {**metadata, "shard": f"{index}/{count}"}), path)
    return paths


def test_merge_joins_the_shards_of_whatever_stage_their_metadata_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy_shards(tmp_path, {STAGE_KEY: stage_name(ToyStage)})
    out = tmp_path / "toy.parquet"
    assert main(["merge", "--out", str(out)]) == 0
    assert pq.read_table(out).column("x").to_pylist() == [0, 1]
    assert f"merged 2 toy shards: 2 rows -> {out}" in capsys.readouterr().out


@pytest.mark.parametrize("stage", [None, "os:system", "tests.test_generation_stage:nothing"])
def test_shards_naming_no_stage_are_a_one_line_error(
    stage: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shards written before outputs named their stage (or by another program) are not guessed at."""
    first, _ = toy_shards(tmp_path, {"mode": "thoughts"} if stage is None else {STAGE_KEY: stage})
    assert main(["merge", "--out", str(tmp_path / "toy.parquet")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(first) in err
    assert ("names no generation stage" if stage is None else "is not a generation stage") in err
    assert not (tmp_path / "toy.parquet").exists()


def test_synthesis_outputs_name_their_stage(
    testbed_chunks: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "oracle.parquet"
    run_synthesis(SynthesisRequest(testbed_chunks, ORACLE_TEACHER, out, progress=False))
    assert stage_class(read_metadata(out)[STAGE_KEY], str(out)) is SynthesisStage


def test_the_merge_verb_names_no_stage() -> None:
    """``latent-thoughts merge`` neither imports a stage nor compares anything with a stage's name."""
    from latent_thoughts.cli import synthesize

    tree = ast.parse(textwrap.dedent(inspect.getsource(synthesize.run_merge)))
    packages = {stage.__module__.rsplit(".", 1)[0] for stage in STAGES}
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.startswith(tuple(packages))]
    assert not [text for text in code_strings(tree) if text.strip().lower() in stage_names()]


# --- the E-step's typed cache payload -------------------------------------------------------------------


def estep_record(key: str, **answer: Any) -> CacheRecord:
    return CacheRecord(
        key=key,
        status="ok",
        teacher="model",
        prompt_version=LAYOUT_VERSION,
        finish_reason="length",
        **{"text": "", **answer},
    )


SAMPLES = ChunkSamples(
    thought_ids=[[5, 6, 3], [7, 3]], log_q=[-1.5, -2.0], log_p=[-3.25, -0.5], finish=["stop", "length"]
)


def test_e_step_records_hold_their_samples_as_a_typed_payload_and_old_records_read_the_same(
    tmp_path: Path,
) -> None:
    """A record holds its samples as ``payload`` (its ``text`` empty); a record of an older run, the
    same object as JSON in ``text``, reads back as the same samples, so a killed run's work is kept;
    a payload of the wrong shape is reported as corrupt and its chunk sampled again."""
    legacy = json.dumps(SAMPLES.model_dump(), separators=(",", ":"))  # what the cache held before
    with ResultCache(tmp_path, "all") as cache:
        cache.append(
            [
                estep_record("new", payload=SAMPLES.model_dump()),
                estep_record("old", text=legacy),
                estep_record("short", payload={**SAMPLES.model_dump(), "log_p": [-1.0]}),
                estep_record("typed", payload={**SAMPLES.model_dump(), "thought_ids": [["5"], [7]]}),
            ]
        )
    first = json.loads((tmp_path / "all.jsonl").read_text().splitlines()[0])
    assert first["text"] == "" and first["payload"]["thought_ids"] == [[5, 6, 3], [7, 3]]
    with ResultCache(tmp_path, None, validate=ChunkSamples.from_record) as cache:
        assert [cache.status(key) for key in ("new", "old", "short", "typed")] == ["ok", "ok", None, None]
        assert len(cache.corrupt_lines) == 2
        new, old = cache.get("new"), cache.get("old")
        assert new is not None and old is not None
        assert ChunkSamples.from_record(new) == ChunkSamples.from_record(old) == SAMPLES
    # the stage's own check is that model's
    stage = EStepStage(EStepRequest(Path("m"), Path("c.parquet"), Path("o.parquet")))
    with pytest.raises(ValueError):
        stage.validate(estep_record("x", payload={"thought_ids": []}))
