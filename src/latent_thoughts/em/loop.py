"""The bootstrapped EM loop on the testbed (METHOD section 6): ``latent-thoughts em --config EM.yaml``.

Stages, in order, each recorded in ``RUN/manifest.json`` (:mod:`latent_thoughts.em.manifest`):

- ``data``: the testbed's warm-start and bootstrap splits, one sentence a chunk, with the oracle
  teacher's thoughts; one tokenizer for every model; the held-out problems;
- ``warm_start``: the recipe's model trained on the warm-start split with teacher thoughts;
- ``eval_0``: its accuracy on the held-out problems (latent mode) and its thoughts' true claims;
- for t = 1..T: ``estep_t`` (the model of t-1 writes K thoughts per bootstrap chunk, one is selected,
  :mod:`latent_thoughts.em.stage`; the testbed checker reads the sampled and the selected ones),
  ``mstep_t`` (the trainer on the bootstrap split with those thoughts: the samples file is the
  ``thoughts`` source, read exactly as the teacher's thoughts are; from the base model or the
  previous one; optionally with the warm-start data kept in the mixture) and ``eval_t``.

The warm start trains on ``testbed.tokens`` tokens and every M-step on ``mstep.tokens`` (default: the
same), so iterations are matched in training tokens. A killed run rerun resumes
at its unfinished stage (the trainer resumes from its checkpoints, the E-step from its cache) and
redoes nothing finished. ``RUN/summary.json`` and the printed table give, per iteration, the mean
bound, mean ESS, mean thought length, accuracy and the validity of sampled and selected thoughts.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_thoughts.em.config import EMConfig
from latent_thoughts.em.manifest import Manifest, code_version, fingerprint
from latent_thoughts.errors import LatentThoughtsError

logger = logging.getLogger(__name__)

StageResult = tuple[dict[str, Any], dict[str, Any]]
"""What a stage returns: its outputs (artifact paths) and its metrics."""


@dataclass(frozen=True)
class RunPaths:
    """Where every artifact of a run folder lives; with ``base`` (``warm_start_from``) the data and
    iteration 0 are that run's."""

    root: Path
    base: Path | None = None

    @property
    def data(self) -> Path:
        return (self.base or self.root) / "data"

    def chunks(self, split: str) -> Path:
        """A split's chunk file (``warm_start`` or ``bootstrap``)."""
        return self.data / split / "chunks.parquet"

    def teacher_thoughts(self, split: str) -> Path:
        """The oracle teacher's thoughts of a split."""
        return self.data / split / "thoughts.parquet"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    @property
    def problems(self) -> Path:
        return self.data / "eval.jsonl"

    @property
    def pretrain_dir(self) -> Path:
        """The base model's raw pretraining (``pretrain.tokens``): its chunks and its training output."""
        return (self.base or self.root) / "pretrain"

    @property
    def pretrained_model(self) -> Path:
        return self.pretrain_dir / "train" / "model"

    def iteration(self, t: int) -> Path:
        return (self.base if t == 0 and self.base else self.root) / f"iter_{t}"

    def train_dir(self, t: int) -> Path:
        """The training output of iteration t (0: the warm start)."""
        return self.iteration(t) / "train"

    def model(self, t: int) -> Path:
        return self.train_dir(t) / "model"

    def samples(self, t: int) -> Path:
        return self.iteration(t) / "samples.parquet"

    def evaluation(self, t: int) -> Path:
        return self.iteration(t) / "eval.json"


@dataclass
class Stage:
    """One stage: its name, the stages it reads, its configuration (JSON-able), what the manifest
    records of its inputs, the work, and how to clear its outputs before starting over."""

    name: str
    upstream: list[str]
    config: Any
    record: dict[str, Any]
    work: Callable[[], StageResult]
    clear: Callable[[], None] = field(default=lambda: None)


INHERITED = ("data", "pretrain", "warm_start", "eval_0")
"""The stages a run with ``warm_start_from`` takes from that run instead of running them (``pretrain``
where that run has one)."""


def stage_names(iterations: int, pretrain: bool = False, final_estep: bool = False) -> list[str]:
    """The stages of a run of ``iterations`` iterations, in order: with ``pretrain`` the base model's
    raw pretraining, with ``final_estep`` one more E-step with the last model."""
    names = ["data", *(["pretrain"] if pretrain else []), "warm_start", "eval_0"]
    for t in range(1, iterations + 1):
        names += [f"estep_{t}", f"mstep_{t}", f"eval_{t}"]
    if final_estep:
        names.append(f"estep_{iterations + 1}")
    return names


# --- the stages' work -------------------------------------------------------------------------------


def prepare_data(config: EMConfig, paths: RunPaths) -> StageResult:
    """Write both splits with the oracle's thoughts, the shared tokenizer and the held-out problems."""
    from latent_thoughts.testbed.recipe import train_shared_tokenizer, write_split
    from latent_thoughts.testbed.task import make_eval_problems, write_problems

    world = config.testbed.world
    texts: list[str] = []
    counts: dict[str, Any] = {}
    for split in ("warm_start", "bootstrap"):
        split_texts = write_split(world, split, paths.chunks(split), paths.teacher_thoughts(split))
        texts += split_texts
        counts[f"{split}_chunks"] = len(split_texts) // 2
    train_shared_tokenizer(config.testbed, texts, paths.tokenizer)
    counts["warm_start_teacher_true_claims"] = teacher_true_claims(paths)
    counts["eval_problems"] = write_problems(make_eval_problems(world), paths.problems)
    outputs = {
        "warm_start_chunks": str(paths.chunks("warm_start")),
        "warm_start_thoughts": str(paths.teacher_thoughts("warm_start")),
        "bootstrap_chunks": str(paths.chunks("bootstrap")),
        "bootstrap_teacher_thoughts": str(paths.teacher_thoughts("bootstrap")),
        "tokenizer": str(paths.tokenizer),
        "problems": str(paths.problems),
    }
    return outputs, counts


def teacher_true_claims(paths: RunPaths) -> float:
    """Share of true arithmetic claims in the warm-start split's teacher thoughts: the quality of the
    thoughts the warm start was trained on (sigma_0 of :func:`loop_dynamics`)."""
    from latent_thoughts.report.thought_checks import check_thoughts_file

    return check_thoughts_file(paths.teacher_thoughts("warm_start"), coverage=False).claim_accuracy


def pretrain_config(config: EMConfig, paths: RunPaths) -> Any:
    """The :class:`~latent_thoughts.train.TrainConfig` of the base model's raw pretraining."""
    from latent_thoughts.testbed.recipe import RecipeData, train_config
    from latent_thoughts.train import TrainConfig

    chunks = paths.pretrain_dir / "chunks.parquet"
    data = RecipeData(chunks, chunks, paths.tokenizer)
    recipe = config.testbed.model_copy(update={"tokens": config.pretrain.tokens})
    base = train_config(
        recipe,
        "raw",
        config.seed,
        data,
        paths.pretrain_dir / "train",
        progress_bar=config.progress,
        logging_steps=100,
    )
    values = base.model_dump(mode="json")
    values["model"]["init_seed"] = config.seed
    return TrainConfig.model_validate(values)


def run_pretraining(config: EMConfig, paths: RunPaths) -> StageResult:
    """Write the pretraining split's raw chunks (the world's validation bucket) and train the base."""
    from latent_thoughts.corpus import write_chunks
    from latent_thoughts.testbed.recipe import split_chunks

    chunks_file = paths.pretrain_dir / "chunks.parquet"
    chunks = split_chunks(config.testbed.world, "validation")
    if not chunks:
        raise LatentThoughtsError("pretrain.tokens needs testbed.world.validation_documents > 0")
    chunks_file.parent.mkdir(parents=True, exist_ok=True)
    write_chunks(chunks, chunks_file)
    outputs, metrics = run_training(pretrain_config(config, paths))
    return {**outputs, "chunks": str(chunks_file)}, {**metrics, "documents": len({c.doc_id for c in chunks})}


def training_config(config: EMConfig, paths: RunPaths, t: int) -> Any:
    """The :class:`~latent_thoughts.train.TrainConfig` of iteration t's training (0: warm start)."""
    from latent_thoughts.testbed.recipe import RecipeData, train_config
    from latent_thoughts.train import TrainConfig

    if t == 0:
        data = RecipeData(paths.chunks("warm_start"), paths.teacher_thoughts("warm_start"), paths.tokenizer)
    else:
        data = RecipeData(paths.chunks("bootstrap"), paths.samples(t), paths.tokenizer)
    base = train_config(
        config.testbed,
        "thoughts",
        config.seed,
        data,
        paths.train_dir(t),
        progress_bar=config.progress,
        logging_steps=100,
    )
    values = base.model_dump(mode="json")
    values["model"]["init_seed"] = config.seed  # the same base weights for every "from base" run
    if config.pretrain.tokens is not None and (t == 0 or config.mstep.init == "base"):
        values["model"]["path"] = str(paths.pretrained_model)
    if t > 0 and config.mstep.tokens is not None:
        values["budget"]["tokens"] = config.mstep.tokens
    if t > 0 and config.mstep.redraw_layouts:
        values["data"]["format"]["redraw_layouts"] = True
        values["data"]["format"]["seed"] = config.seed + t  # other layouts in every iteration too
    if t > 0 and config.mstep.init == "previous":
        values["model"]["path"] = str(paths.model(t - 1))
    if t > 0 and config.mstep.keep_warm_start:
        warm: dict[str, Any] = {
            "kind": "thoughts",
            "chunks": str(paths.chunks("warm_start")),
            "thoughts": str(paths.teacher_thoughts("warm_start")),
            "name": "warm_start_teacher",
        }
        sources = values["data"]["sources"]
        sources[0]["name"] = "bootstrap_samples"
        share = config.mstep.warm_start_weight
        if share is not None:
            sources[0]["weight"], warm["weight"] = 1.0 - share, share
        sources.append(warm)
    return TrainConfig.model_validate(values)


def stage_config_of_training(train_config: Any) -> dict[str, Any]:
    """The part of a training config that decides the model (not its progress bar)."""
    values = dict(train_config.model_dump(mode="json"))
    values.pop("progress_bar", None)
    values.pop("logging_steps", None)
    # an option added later, at its default, leaves the fingerprints of earlier runs as they were
    if not values["data"]["format"].get("redraw_layouts", True):
        del values["data"]["format"]["redraw_layouts"]
    return values


def stage_config_of_estep(options: Any, dtype: str) -> dict[str, Any]:
    """The part of the E-step options that decides the samples: not ``batch_tokens`` (a memory
    bound), and the proposal temperature only when it is not the paper's 1 (so runs from before the
    option existed keep their fingerprints)."""
    values = dict(options.model_dump(mode="json", exclude={"batch_tokens"}))
    if values.get("temperature", 1.0) == 1.0:
        values.pop("temperature", None)
    return {**values, "dtype": dtype}


def run_training(train_config: Any) -> StageResult:
    """Train (resuming from checkpoints); outputs the model folder, metrics the tokens and loss."""
    from latent_thoughts.train import train

    result = train(train_config, resume=True)
    if result.model_dir is None:
        raise LatentThoughtsError(f"{train_config.output_dir}: training stopped before its budget")
    sources = result.metrics.get("data", {}).get("sources", [])
    metrics = {
        "tokens": result.tokens,
        "steps": result.steps,
        "train_loss": result.metrics.get("train_loss"),
        "runtime_s": result.metrics.get("runtime_s"),
        "sources": [
            {key: source.get(key) for key in ("name", "documents", "tokens", "drawn_tokens", "epochs")}
            for source in sources
        ],
    }
    return {"model": str(result.model_dir), "train_dir": str(train_config.output_dir)}, metrics


def run_estep_stage(config: EMConfig, paths: RunPaths, t: int) -> StageResult:
    """E-step t with the model of t-1 on the bootstrap split; the checker's reading of its thoughts."""
    from latent_thoughts.em.stage import EStepRequest, run_estep

    request = EStepRequest(
        model=paths.model(t - 1),
        chunks=paths.chunks("bootstrap"),
        out=paths.samples(t),
        config=estep_config(config, t),
        device=config.device,
        dtype=config.dtype,
        progress=config.progress,
    )
    summary = run_estep(request)
    metrics = {key: value for key, value in summary.items() if key not in ("result", "shard")}
    metrics.update(sample_validity(paths.samples(t)))
    return {"samples": str(paths.samples(t))}, metrics


def estep_config(config: EMConfig, t: int) -> Any:
    """The E-step options of iteration t: the configured ones with seed ``estep.seed + t``."""
    return config.estep.model_copy(update={"seed": config.estep.seed + t})


def sample_validity(samples: Path) -> dict[str, Any]:
    """The testbed checker on the K sampled thoughts and on the selected ones
    (:func:`~latent_thoughts.report.thought_checks.sample_quality`): shares of true claims, of valid
    thoughts, of valid thoughts on chunks that state a result, and of samples closed by EOL."""
    from latent_thoughts.report.thought_checks import sample_quality

    return sample_quality(samples)


def run_evaluation(config: EMConfig, paths: RunPaths, t: int) -> StageResult:
    """Latent-mode accuracy of iteration t's model on the held-out problems, and its thoughts' claims."""
    from latent_thoughts.testbed.recipe import evaluate_arm, write_json
    from latent_thoughts.testbed.task import read_problems

    problems = read_problems(paths.problems)
    result = evaluate_arm(
        paths.model(t),
        problems,
        "latent",
        progress=config.progress,
        device=config.device,
        max_thought_tokens=config.evaluation.max_thought_tokens,
        batch_size=config.evaluation.batch_size,
    )
    payload = result.as_dict()
    write_json(paths.evaluation(t), payload)
    metrics = {
        key: payload[key] for key in ("accuracy", "problems", "true_claim_share", "copied_operand_share")
    }
    return {"evaluation": str(paths.evaluation(t))}, metrics


# --- planning and running ------------------------------------------------------------------------------


def plan_stages(config: EMConfig, paths: RunPaths) -> list[Stage]:
    """Every stage of the run with its configuration, upstream stages and work."""
    from latent_thoughts.em.stage import model_fingerprint

    def remove(*targets: Path) -> Callable[[], None]:
        def clear() -> None:
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

        return clear

    def model_stage(t: int) -> str:
        return "warm_start" if t == 0 else f"mstep_{t}"

    data_config = {
        "world": config.testbed.world.model_dump(mode="json"),
        "vocab_size": config.testbed.vocab_size,
        "split_digits": config.testbed.split_digits,
    }
    stages = [
        Stage(
            "data",
            [],
            data_config,
            {"seed": config.testbed.world.seed, "inputs": {"world": "testbed (procedural)"}},
            lambda: prepare_data(config, paths),
            remove(paths.data),
        )
    ]

    pretrained = config.pretrain.tokens is not None
    if pretrained:
        pretrain = pretrain_config(config, paths)
        stages.append(
            Stage(
                "pretrain",
                ["data"],
                {**stage_config_of_training(pretrain), "split": "validation"},
                {"seed": config.seed, "inputs": {"model": "base (scratch)", "data": "raw validation split"}},
                lambda: run_pretraining(config, paths),
                remove(paths.pretrain_dir),
            )
        )

    def training_stage(t: int) -> Stage:
        train = training_config(config, paths, t)
        upstream = ["data"] if t == 0 else ["data", f"estep_{t}"]
        if pretrained and (t == 0 or config.mstep.init == "base"):
            upstream.append("pretrain")
        if t > 0 and config.mstep.init == "previous":
            upstream.append(model_stage(t - 1))
        sources = [source.model_dump(mode="json", exclude_none=True) for source in train.data.sources]
        return Stage(
            model_stage(t),
            upstream,
            stage_config_of_training(train),
            {"seed": config.seed, "inputs": {"model": train.model.path or "base (scratch)", "data": sources}},
            lambda: run_training(train),
            remove(paths.train_dir(t)),
        )

    def eval_stage(t: int) -> Stage:
        return Stage(
            f"eval_{t}",
            [model_stage(t), "data"],
            config.evaluation.model_dump(mode="json"),
            {"seed": None, "inputs": {"model": str(paths.model(t)), "problems": str(paths.problems)}},
            lambda: run_evaluation(config, paths, t),
            remove(paths.evaluation(t)),
        )

    def estep_stage(t: int) -> Stage:
        options = estep_config(config, t)
        return Stage(
            f"estep_{t}",
            [model_stage(t - 1), "data"],
            stage_config_of_estep(options, config.dtype),
            {
                "seed": options.seed,
                "inputs": {
                    "model": str(paths.model(t - 1)),
                    "model_fingerprint": lambda: model_fingerprint(paths.model(t - 1)),
                    "chunks": str(paths.chunks("bootstrap")),
                },
            },
            lambda: run_estep_stage(config, paths, t),
            # the E-step cache stays: its keys name the model's weights and the sampling options
            remove(paths.samples(t), paths.samples(t).with_suffix(".summary.json")),
        )

    stages += [training_stage(0), eval_stage(0)]
    for t in range(1, config.iterations + 1):
        stages += [estep_stage(t), training_stage(t), eval_stage(t)]
    if config.final_estep:
        stages.append(estep_stage(config.iterations + 1))
    return stages


def _resolved(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with callables (values known only once upstream stages ran) called."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out[key] = _resolved(value)
        else:
            out[key] = value() if callable(value) else value
    return out


def run_em(
    config: EMConfig, force_from: str | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run, resume or extend the EM run of ``config``; returns the summary (see :func:`summarize`)."""
    base = Path(config.warm_start_from) if config.warm_start_from else None
    paths = RunPaths(Path(config.out), base)
    names = stage_names(config.iterations, config.pretrain.tokens is not None, config.final_estep)
    if force_from is not None and force_from not in names:
        raise LatentThoughtsError(
            f"--force-from {force_from!r}: not a stage of this run ({', '.join(names)})"
        )
    forced = set(names[names.index(force_from) :]) if force_from is not None else set()
    if base is not None and forced & set(INHERITED):
        raise LatentThoughtsError(
            f"--force-from {force_from}: that stage belongs to {base} (warm_start_from)"
        )
    manifest = Manifest.open(paths.root)
    prints: dict[str, str] = {}
    stages = plan_stages(config, paths)
    if base is not None:
        inherited = inherit_stages(base, manifest)
        prints.update(inherited)
        stages = [stage for stage in stages if stage.name not in inherited]
    # A finished stage whose recorded output is gone is redone, and every later stage with it.
    for index, stage in enumerate(stages):
        missing = manifest.missing_output(stage.name) if stage.name not in forced else None
        if missing is not None:
            say(
                f"== {stage.name}: its output {missing} is missing or empty; redoing it and every later stage"
            )
            forced |= {later.name for later in stages[index:]}
            break
    # Check every stage before doing anything: a changed finished stage fails the run at once.
    for stage in stages:
        prints[stage.name] = fingerprint(stage.config, [prints[name] for name in stage.upstream])
        manifest.check(stage.name, prints[stage.name], stage.name in forced)
    manifest.data["config"] = config.model_dump(mode="json")
    manifest.data.setdefault("invocations", []).append(
        {"code_version": code_version(), "force_from": force_from, "started": time.time()}
    )
    manifest.save()
    for stage in stages:
        decision = manifest.check(stage.name, prints[stage.name], stage.name in forced)
        if decision == "skip":
            say(f"== {stage.name}: done, skipped")
            continue
        if decision == "restart":
            stage.clear()
            say(f"== {stage.name}: starting over")
        else:
            say(f"== {stage.name}: {'resuming' if stage.name in manifest.stages else 'running'}")
        manifest.start(stage.name, prints[stage.name], {"config": stage.config, **_resolved(stage.record)})
        outputs, metrics = stage.work()
        manifest.finish(stage.name, outputs, metrics)
        summary = summarize(config, manifest)
        write_summary(paths.root / "summary.json", summary)
    summary = summarize(config, manifest)
    write_summary(paths.root / "summary.json", summary)
    return summary


def inherit_stages(base: Path, manifest: Manifest) -> dict[str, str]:
    """Copy the data, warm-start and warm-start evaluation records of the run at ``base`` into
    ``manifest`` (marked ``inherited_from``); returns their fingerprints. They must be done there."""
    source = Manifest.open(base)
    prints = {}
    for name in INHERITED:
        record = source.stages.get(name)
        if name == "pretrain" and record is None:
            continue  # that run's base is random
        if record is None or record.get("status") != "done":
            raise LatentThoughtsError(
                f"warm_start_from {base}: its stage {name} is not done (run it there first, e.g. iterations=0)"
            )
        manifest.stages[name] = {**record, "inherited_from": str(base)}
        prints[name] = str(record["fingerprint"])
    return prints


# --- the summary ---------------------------------------------------------------------------------------


def summarize(config: EMConfig, manifest: Manifest) -> dict[str, Any]:
    """One row per iteration (0 = the warm start) from the finished stages' metrics, with the loop's
    dynamics (:func:`loop_dynamics`)."""
    data = manifest.stages.get("data", {})
    teacher = data.get("metrics", {}).get("warm_start_teacher_true_claims")
    rows = []
    for t in range(config.iterations + 1 + config.final_estep):
        train = manifest.stages.get("warm_start" if t == 0 else f"mstep_{t}", {})
        estep = manifest.stages.get(f"estep_{t}", {}) if t > 0 else {}
        evaluation = manifest.stages.get(f"eval_{t}", {})
        e = estep.get("metrics", {}) if estep.get("status") == "done" else {}
        m = train.get("metrics", {}) if train.get("status") == "done" else {}
        v = evaluation.get("metrics", {}) if evaluation.get("status") == "done" else {}
        rows.append(
            {
                "iteration": t,
                "train_tokens": m.get("tokens"),
                "mean_bound": e.get("mean_bound"),
                "mean_ess": e.get("mean_ess"),
                "k": e.get("k"),
                "mean_thought_tokens": e.get("mean_thought_tokens"),
                "accuracy": v.get("accuracy"),
                "eval_true_claims": v.get("true_claim_share"),
                "closed_by_eol": e.get("closed_by_eol"),
                **{
                    f"{role}_{measure}": e.get(f"{role}_{measure}")
                    for role in ("sampled", "selected")
                    for measure in ("true_claims", "valid", "result_valid", "question_valid")
                },
            }
        )
    return {
        "run": config.out,
        "policy": config.estep.policy,
        "mstep": config.mstep.model_dump(mode="json"),
        "teacher_true_claims": teacher,
        "iterations": loop_dynamics(rows, teacher),
    }


def loop_dynamics(rows: list[dict[str, Any]], teacher_true_claims: float | None) -> list[dict[str, Any]]:
    """Add to each iteration row t >= 1 the three numbers that say whether the loop can climb.

    sigma_t is the share of true claims in the thoughts model t was trained on (sigma_0: the teacher's;
    sigma_t: the thoughts E-step t selected). Model t-1 proposes thoughts with true-claim share
    ``sampled_t``; selection lifts it to ``selected_t`` = sigma_t. So

    - ``fidelity`` f = sampled_t / sigma_{t-1}: how much of its training thoughts' quality model t-1
      keeps when it writes thoughts of its own (at the E-step's temperature);
    - ``selection_gain`` g = selected_t / sampled_t;
    - ``growth`` g * f = sigma_t / sigma_{t-1}: quality rises over iterations only while it is above 1.

    A figure is None where one of its parts is missing (0 thoughts kept, a stage not run).
    """
    sigma = teacher_true_claims
    out = []
    for row in rows:
        row = dict(row)
        if row["iteration"] > 0:
            sampled, selected = row.get("sampled_true_claims"), row.get("selected_true_claims")
            row["fidelity"] = sampled / sigma if sampled is not None and sigma else None
            row["selection_gain"] = selected / sampled if selected is not None and sampled else None
            row["growth"] = selected / sigma if selected is not None and sigma else None
            sigma = selected
        out.append(row)
    return out


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON atomically."""
    from latent_thoughts.synthesis.pipeline import write_json

    write_json(summary, path)


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The per-iteration table as Markdown lines (``-`` where a figure does not exist)."""

    def cell(value: Any, digits: int = 3) -> str:
        if value is None:
            return "-"
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value:.{digits}f}"

    lines = [
        "| iter | train tokens | mean bound | mean ESS | thought tokens | accuracy | eval true claims "
        "| true claims sampled / selected | valid sampled / selected |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["iterations"]:
        lines.append(
            f"| {row['iteration']} | {cell(row['train_tokens'])} | {cell(row['mean_bound'], 2)} | "
            f"{cell(row['mean_ess'], 2)} | {cell(row['mean_thought_tokens'], 1)} | {cell(row['accuracy'])} | "
            f"{cell(row['eval_true_claims'])} | {cell(row['sampled_true_claims'])} / "
            f"{cell(row['selected_true_claims'])} | {cell(row['sampled_valid'])} / {cell(row['selected_valid'])} |"
        )
    lines += [
        "",
        "| iter | result-chunk valid sampled / selected | closed by EOL | fidelity f | selection gain g "
        "| growth g·f |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["iterations"][1:]:
        lines.append(
            f"| {row['iteration']} | {cell(row.get('sampled_result_valid'))} / "
            f"{cell(row.get('selected_result_valid'))} | {cell(row.get('closed_by_eol'))} | "
            f"{cell(row.get('fidelity'))} | {cell(row.get('selection_gain'))} | {cell(row.get('growth'))} |"
        )
    return lines
