"""The shipped training configurations: each validates, and every file it reads exists or is written by
a command its header gives; the small Llama-2-tokenizer example trains.

The check of a configuration's files is deliberately plain. What a configuration reads is what
``train``'s own ``run_paths`` declares (model, tokenizer, every source's files). Each such path must
exist (from the repository root, where the configurations say to run) or be an output of a command
in the configuration's header comment: a ``latent-thoughts VERB ...`` line, parsed by the real
command-line parser, whose outputs are what that verb's ``run_paths`` declares it writes; or an
``hf download ... --local-dir DIR`` line for a model or tokenizer fetched from the Hub. Every
``configs/...yaml`` file the header names must exist too.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from latent_thoughts.cli import build_parser, main
from latent_thoughts.train import load_train_config
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))
LLAMA2 = SHARED / "tokenizers" / "llama2"


def header_commands(path: Path) -> list[str]:
    """The shell commands of a configuration's comments: ``#`` lines, a trailing backslash joining
    the next line, each command starting with ``latent-thoughts`` or ``hf download``."""
    commands: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            pending = ""
            continue
        text = line.lstrip("#").strip()
        if pending:
            text = pending + " " + text
            pending = ""
        elif not (text.startswith("latent-thoughts ") or text.startswith("hf download ")):
            continue
        if text.endswith("\\"):
            pending = text[:-1].strip()
        else:
            commands.append(text)
    return commands


def _key(path: str | Path) -> str:
    return os.path.normpath(str(path))


def written_by_header(path: Path) -> dict[str, str]:
    """Each path the header's commands write (or download), with the command that does."""
    parser = build_parser()
    written: dict[str, str] = {}
    for command in header_commands(path):
        words = shlex.split(command)
        if words[:2] == ["hf", "download"]:
            written[_key(words[words.index("--local-dir") + 1])] = command
            continue
        args = parser.parse_args(words[1:])  # a wrong verb or option fails the test here
        declared = args.run_paths(args)
        for output in [*declared.files, *declared.folders]:
            if output is not None:
                written[_key(output)] = command
    return written


def test_the_shipped_configurations_are_all_here() -> None:
    assert {path.name for path in CONFIGS} >= {
        "testbed-scratch.yaml",
        "tinyllama-gpu.yaml",
        "llama2-tokenizer-small.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_file_a_configuration_reads_exists_or_its_header_writes_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    load_train_config(path)  # validates
    args = build_parser().parse_args(["train", "--config", str(path)])
    reads = [item for item in args.run_paths(args).inputs if item is not None and Path(item) != path]
    assert reads, "a configuration reads at least its data"
    written = written_by_header(path)
    orphans = [item for item in reads if not Path(item).exists() and _key(item) not in written]
    assert not orphans, f"{path.name} reads files that nothing writes: {orphans}"
    named = re.findall(r"configs/[\w./-]+\.yaml", "\n".join(header_commands(path)) + path.read_text())
    assert all((REPO / name).is_file() for name in named), named


def test_the_gpu_configuration_reads_what_the_e_step_writes() -> None:
    config = load_train_config(REPO / "configs" / "train" / "tinyllama-gpu.yaml")
    [source] = config.data.sources
    assert source.thoughts is not None and Path(source.thoughts).name == "samples.parquet"
    written = written_by_header(REPO / "configs" / "train" / "tinyllama-gpu.yaml")
    assert written[_key(source.thoughts)].startswith("latent-thoughts estep ")
    assert written[_key(source.chunks or "")].startswith("latent-thoughts chunk ")


@pytest.mark.skipif(not LLAMA2.is_dir(), reason="../shared/tokenizers/llama2 is not here")
def test_the_llama2_tokenizer_configuration_trains_a_few_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header's commands, run as written in an empty folder, make the inputs; then the
    configuration trains, at a tiny width and budget, with the shared copy of the tokenizer."""
    import json

    from transformers import AutoModelForCausalLM

    from latent_thoughts.tokenizer import load_tokenizer

    config = REPO / "configs" / "train" / "llama2-tokenizer-small.yaml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the oracle teacher's file, as in the repository
    for command in header_commands(config):
        if command.startswith("latent-thoughts "):
            assert main(shlex.split(command)[1:]) == 0, command
    tiny = [
        f"model.tokenizer={LLAMA2}",
        "model.scratch.hidden_size=32",
        "model.scratch.intermediate_size=64",
        "model.scratch.num_layers=2",
        "model.scratch.num_kv_heads=2",
        "model.scratch.max_position_embeddings=64",
        "data.format.seq_len=64",
        "budget.tokens=768",  # 3 steps of 4 windows of 64 tokens
        "optim.global_batch=4",
        "optim.micro_batch=2",
        "optim.warmup_steps=1",
        "precision=fp32",
        "save_steps=2",
        "eval_steps=2",
        "progress_bar=false",
    ]
    assert main(["train", "--config", str(config), *tiny]) == 0
    assert (
        "model: runs/testbed/llama2-small/model (3 steps, 768 tokens, held-out loss"
        in capsys.readouterr().out
    )
    run = tmp_path / "runs" / "testbed" / "llama2-small"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval_loss"] < metrics["eval_loss_start"] + 1.0
    tokenizer = load_tokenizer(run / "model")
    assert len(tokenizer) == 32_004 and tokenizer.convert_tokens_to_ids("▁The") == 450  # Llama-2's ids
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.get_input_embeddings().weight.shape[0] >= 32_004
