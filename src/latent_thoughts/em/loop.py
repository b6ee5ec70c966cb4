"""The bootstrapped EM loop (METHOD section 6): ``latent-thoughts em --config EM.yaml``.

Stages, in order, each recorded in ``RUN/manifest.json`` (:mod:`latent_thoughts.em.manifest`):

- the experiment's preparation (:mod:`latent_thoughts.em.experiment`): ``data`` (the warm-start and
  bootstrap splits, the teacher's thoughts or the stage that writes them, a tokenizer), and whatever
  else it needs before training (a pretrained base, a teacher's synthesis);
- ``warm_start``: the model trained on the warm-start split with teacher thoughts;
- ``eval_0``: its evaluation, as the experiment defines it;
- for t = 1..T: ``estep_t`` (the model of t-1 writes K thoughts per bootstrap chunk, one is selected,
  :mod:`latent_thoughts.em.stage`; the experiment measures the samples where it can),
  ``mstep_t`` (the trainer on the bootstrap split with those thoughts: the samples file is the
  ``thoughts`` source, read exactly as the teacher's thoughts are; from the base model or the
  previous one; optionally with the warm-start data kept in the mixture) and ``eval_t``.

Every M-step trains on ``mstep.tokens`` tokens (or ``mstep.epochs`` passes; default: the warm start's
budget), so iterations are matched in training tokens. A killed run rerun resumes at its unfinished
stage (the trainer resumes from its checkpoints, the E-step from its cache) and redoes nothing
finished. ``RUN/summary.json`` and the printed table give the experiment's per-iteration figures.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latent_thoughts.em.config import EMConfig
from latent_thoughts.em.experiment import Experiment, RunPaths, Stage, StageResult, get_experiment
from latent_thoughts.em.manifest import Manifest, code_version, fingerprint, runtime_versions
from latent_thoughts.em.stage import EStepRequest
from latent_thoughts.errors import LatentThoughtsError

logger = logging.getLogger(__name__)

__all__ = ["RunPaths", "Stage", "StageResult", "plan_stages", "run_em", "stage_names"]


def stage_names(
    iterations: int, final_estep: bool = False, prepared: tuple[str, ...] = ("data",)
) -> list[str]:
    """The stages of a run of ``iterations`` iterations, in order: the experiment's ``prepared``
    stages, the warm start and its evaluation, three per iteration, and with ``final_estep`` one more
    E-step with the last model."""
    names = [*prepared, "warm_start", "eval_0"]
    for t in range(1, iterations + 1):
        names += [f"estep_{t}", f"mstep_{t}", f"eval_{t}"]
    if final_estep:
        names.append(f"estep_{iterations + 1}")
    return names


# --- the stages' work -------------------------------------------------------------------------------


def remove(*targets: Path) -> Callable[[], None]:
    """A stage's ``clear``: delete ``targets`` (files or folders) where they exist."""

    def clear() -> None:
        for target in targets:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    return clear


def apply_mstep(values: dict[str, Any], config: EMConfig, paths: RunPaths, t: int) -> dict[str, Any]:
    """Iteration t's TrainConfig values (a thought run on the bootstrap split's samples, or the warm
    start's at t = 0) with the M-step's options applied: its budget, its layouts, its initial weights,
    and the warm-start data kept in the mixture."""
    if t == 0:
        return values
    budget = config.mstep.budget()
    if budget is not None:
        values["budget"] = budget
    if config.mstep.redraw_layouts:
        values["data"]["format"]["redraw_layouts"] = True
        values["data"]["format"]["seed"] = config.seed + t  # other layouts in every iteration too
    if config.mstep.init == "previous":
        values["model"]["path"] = str(paths.model(t - 1))
    if config.mstep.keep_warm_start:
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
    return values


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


def estep_request(config: EMConfig, paths: RunPaths, t: int) -> EStepRequest:
    """E-step t's request: the model of t-1 over the bootstrap split's chunks into ``paths.samples(t)``,
    sampling with seed ``estep.seed + t``."""
    return EStepRequest(
        model=paths.model(t - 1),
        chunks=paths.chunks("bootstrap"),
        out=paths.samples(t),
        config=config.estep.model_copy(update={"seed": config.estep.seed + t}),
        device=config.device,
        dtype=config.dtype,
        progress=config.progress,
    )


def run_estep_stage(experiment: Experiment, config: EMConfig, paths: RunPaths, t: int) -> StageResult:
    """E-step t with the model of t-1 on the bootstrap split; the experiment's reading of its samples."""
    from latent_thoughts.em.estep_engine import run_estep_on

    request = estep_request(config, paths, t)
    summary = run_estep_on(config.estep_engine, request, config.device, config.dtype)
    metrics = {key: value for key, value in summary.items() if key not in ("result", "shard")}
    metrics.update(experiment.sample_metrics(config, request.out))
    return {"samples": str(request.out)}, metrics


# --- planning and running ------------------------------------------------------------------------------


def plan_stages(experiment: Experiment, config: EMConfig, paths: RunPaths) -> list[Stage]:
    """Every stage of the run with its configuration, upstream stages and work."""
    from latent_thoughts.fingerprint import model_fingerprint

    def model_stage(t: int) -> str:
        return "warm_start" if t == 0 else f"mstep_{t}"

    stages = experiment.prepare_stages(config, paths)

    def training_stage(t: int) -> Stage:
        train = experiment.training_config(config, paths, t)
        upstream = ["data"] if t == 0 else ["data", f"estep_{t}"]
        upstream += experiment.training_upstream(config, t)
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
            experiment.evaluation_config(config),
            {"seed": None, "inputs": experiment.evaluation_inputs(config, paths, paths.model(t))},
            lambda: experiment.evaluate(config, paths, paths.model(t), paths.evaluation(t), None),
            remove(paths.evaluation(t)),
        )

    def estep_stage(t: int) -> Stage:
        request = estep_request(config, paths, t)
        return Stage(
            f"estep_{t}",
            [model_stage(t - 1), "data"],
            stage_config_of_estep(request.config, config.dtype),
            {
                "seed": request.config.seed,
                "inputs": {
                    "model": str(request.model),
                    "model_fingerprint": lambda: model_fingerprint(request.model),
                    "chunks": str(request.chunks),
                },
            },
            lambda: run_estep_stage(experiment, config, paths, t),
            # the E-step cache stays: its keys name the model's weights and the sampling options
            remove(request.out, request.out.with_suffix(".summary.json")),
        )

    stages += [training_stage(0), eval_stage(0)]
    for t in range(1, config.iterations + 1):
        stages += [estep_stage(t), training_stage(t), eval_stage(t)]
    if config.final_estep:
        stages.append(estep_stage(config.iterations + 1))
    for name in config.baselines:
        stages += baseline_stages(experiment, config, paths, name)
    return stages


# --- the raw baselines ---------------------------------------------------------------------------------


def baseline_stages(experiment: Experiment, config: EMConfig, paths: RunPaths, name: str) -> list[Stage]:
    """A baseline's training (``baseline_NAME``) and evaluation in raw mode (``eval_NAME``); for
    ``wrap``, the rephrasings first (``rephrase_wrap``).

    It trains the warm start's model (the base) on the raw text of the documents the first M-step
    trained on, for the tokens that M-step trained (``raw_token_match``), or for those plus the first
    E-step's compute counted in training tokens (``raw_flop_match``: a forward token costs a third of a
    training token, 2N against 6N FLOPs): the paper's baselines matched in tokens and in FLOPs.
    """
    if config.iterations < 1:
        raise LatentThoughtsError(f"baselines: {name} is matched to the first M-step; set iterations >= 1")
    folder = paths.baseline(name)
    upstream = ["data", "estep_1", "mstep_1", *experiment.training_upstream(config, 0)]
    template = experiment.training_config(config, paths, 0).model_dump(mode="json")
    splits = ["bootstrap", *(["warm_start"] if config.mstep.keep_warm_start else [])]
    template["data"]["sources"] = [{"kind": "raw", "chunks": str(paths.chunks(split))} for split in splits]
    template["output_dir"] = str(folder / "train")
    stages: list[Stage] = []
    if name == "wrap":  # the rephrasings first; the rephrased text only (METHOD section 2)
        rephrased = folder / "rephrased.parquet"
        template["data"]["sources"] = [{"kind": "rephrased", "rephrased": str(rephrased)}]
        stages.append(
            Stage(
                "rephrase_wrap",
                ["data"],
                {"chunks": str(paths.chunks("bootstrap")), "mode": "rephrase", "style": "wrap"},
                {"seed": None, "inputs": {"chunks": str(paths.chunks("bootstrap"))}},
                lambda: rephrase(experiment, config, paths, rephrased),
                remove(rephrased),
            )
        )
        upstream.append("rephrase_wrap")

    def train_config() -> Any:
        from latent_thoughts.train import TrainConfig

        values = dict(template, budget={"tokens": baseline_tokens(config, paths, name)})
        return TrainConfig.model_validate(values)

    def work() -> StageResult:
        outputs, metrics = run_training(train_config())
        return outputs, {**metrics, "matched_to": name}

    evaluation = folder / "eval.json"
    return [
        *stages,
        Stage(
            f"baseline_{name}",
            upstream,
            {**{key: value for key, value in template.items() if key != "progress_bar"}, "baseline": name},
            {"seed": config.seed, "inputs": {"model": template["model"].get("path") or "base (scratch)"}},
            work,
            remove(folder / "train"),
        ),
        Stage(
            f"eval_{name}",
            [f"baseline_{name}", "data"],
            {**experiment.evaluation_config(config), "mode": "raw"},
            {"seed": None, "inputs": experiment.evaluation_inputs(config, paths, folder / "train" / "model")},
            lambda: experiment.evaluate(config, paths, folder / "train" / "model", evaluation, "raw"),
            remove(evaluation),
        ),
    ]


def rephrase(experiment: Experiment, config: EMConfig, paths: RunPaths, out: Path) -> StageResult:
    """WRAP rephrasings of the bootstrap documents (a style drawn per document) by the experiment's
    teacher: the synthesis stage in rephrase mode, cached and resumable."""
    from latent_thoughts.synthesis.stage import SynthesisRequest, run_synthesis

    teacher, overrides = experiment.rephrase_teacher(config, paths)
    request = SynthesisRequest(
        chunks=paths.chunks("bootstrap"),
        teacher=teacher,
        out=out,
        overrides=overrides,
        mode="rephrase",
        style="wrap",
        progress=config.progress,
    )
    summary = run_synthesis(request)
    return {"rephrased": str(out)}, {key: summary[key] for key in ("teacher", "output") if key in summary}


def baseline_tokens(config: EMConfig, paths: RunPaths, name: str) -> int:
    """The training tokens of baseline ``name``, from what the first E-step and M-step recorded."""
    manifest = Manifest.open(paths.root)
    mstep = int(manifest.stages["mstep_1"]["metrics"]["tokens"])
    if name in ("raw_token_match", "wrap"):
        return mstep
    return mstep + estep_forward_tokens(config, paths, manifest.stages["estep_1"]["metrics"]) // 3


def estep_forward_tokens(config: EMConfig, paths: RunPaths, metrics: dict[str, Any]) -> int:
    """Forward-pass tokens of the first E-step: per chunk and sample, the sampler reads the posterior
    prompt and writes the thought (its measured mean length), log q reads both again, log p reads the
    joint context, the thought and the chunk."""
    from latent_thoughts.corpus import read_chunks
    from latent_thoughts.em.stage import chunk_layouts, context_limit
    from latent_thoughts.tokenizer import load_tokenizer

    model = paths.model(0)
    tokenizer = load_tokenizer(model)
    chunks = read_chunks(paths.chunks("bootstrap"))
    context = context_limit(model, config.estep.context_tokens)
    thought = float(metrics.get("mean_sample_tokens") or config.estep.max_thought_tokens)
    forward = 0.0
    for _, layout in chunk_layouts(chunks, tokenizer, context, config.estep.max_thought_tokens):
        prompt = len(layout.posterior_prompt)
        joint = len(layout.joint_context) + 2 + thought + len(layout.chunk_ids)
        forward += config.estep.k * (2 * (prompt + thought) + joint)
    return int(forward)


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
    """Run, resume or extend the EM run of ``config``; returns the experiment's summary."""
    experiment = get_experiment(config.experiment)
    base = Path(config.warm_start_from) if config.warm_start_from else None
    if base is not None and (
        base.resolve() == Path(config.out).resolve() or base.resolve() in Path(config.out).resolve().parents
    ):
        raise LatentThoughtsError(
            f"out {config.out}: is (or lies inside) warm_start_from {base}; a run starts from another run's folder"
        )
    paths = RunPaths(Path(config.out), base)
    stages = plan_stages(experiment, config, paths)
    names = [stage.name for stage in stages]
    if force_from is not None and force_from not in names:
        raise LatentThoughtsError(
            f"--force-from {force_from!r}: not a stage of this run ({', '.join(names)})"
        )
    forced = set(names[names.index(force_from) :]) if force_from is not None else set()
    if base is not None and forced & set(experiment.inherited):
        raise LatentThoughtsError(
            f"--force-from {force_from}: that stage belongs to {base} (warm_start_from)"
        )
    manifest = Manifest.open(paths.root)
    prints: dict[str, str] = {}
    if base is not None:
        inherited = inherit_stages(base, manifest, experiment.inherited)
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
    now = code_version()
    manifest.data.setdefault("invocations", []).append(
        {
            "code_version": now,
            **runtime_versions(config.device),
            "force_from": force_from,
            "started": time.time(),
        }
    )
    manifest.save()
    for stage in stages:
        decision = manifest.check(stage.name, prints[stage.name], stage.name in forced)
        if decision == "skip":
            made_by = manifest.stages[stage.name].get("code_version")
            other = f" (made by code version {made_by}, this is {now})" if made_by not in (None, now) else ""
            say(f"== {stage.name}: done, skipped{other}")
            continue
        if decision == "restart":
            stage.clear()
            say(f"== {stage.name}: starting over")
        else:
            say(f"== {stage.name}: {'resuming' if stage.name in manifest.stages else 'running'}")
        manifest.start(stage.name, prints[stage.name], {"config": stage.config, **_resolved(stage.record)})
        outputs, metrics = stage.work()
        manifest.finish(stage.name, outputs, metrics)
        summary = with_baselines(config, experiment.summarize(config, manifest.stages), manifest.stages)
        write_summary(paths.root / "summary.json", summary)
    summary = with_baselines(config, experiment.summarize(config, manifest.stages), manifest.stages)
    write_summary(paths.root / "summary.json", summary)
    return summary


REQUIRED_INHERITED = ("data", "warm_start", "eval_0")
"""The stages a run with ``warm_start_from`` needs done in that run; the experiment's other inherited
stages (a pretrained base, a teacher's synthesis) are taken where that run has them."""


def inherit_stages(base: Path, manifest: Manifest, names: tuple[str, ...]) -> dict[str, str]:
    """Copy the records of stages ``names`` of the run at ``base`` (its data, warm start and warm-start
    evaluation, ...) into ``manifest`` (marked ``inherited_from``); returns their fingerprints. The
    required ones must be done there."""
    source = Manifest.open(base)
    prints = {}
    for name in names:
        record = source.stages.get(name)
        if name not in REQUIRED_INHERITED and record is None:
            continue  # e.g. that run's base is random
        if record is None or record.get("status") != "done":
            raise LatentThoughtsError(
                f"warm_start_from {base}: its stage {name} is not done (run it there first, e.g. iterations=0)"
            )
        manifest.stages[name] = {**record, "inherited_from": str(base)}
        prints[name] = str(record["fingerprint"])
    return prints


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON atomically."""
    from latent_thoughts.atomic import write_json

    write_json(path, summary)


def with_baselines(
    config: EMConfig, summary: dict[str, Any], stages: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``summary`` with each configured baseline's training tokens and evaluation figures."""
    if not config.baselines:
        return summary
    rows = {}
    for name in config.baselines:
        train = stages.get(f"baseline_{name}", {})
        evaluation = stages.get(f"eval_{name}", {})
        row = dict(evaluation.get("metrics", {})) if evaluation.get("status") == "done" else {}
        row["train_tokens"] = (
            train.get("metrics", {}).get("tokens") if train.get("status") == "done" else None
        )
        rows[name] = row
    return {**summary, "baselines": rows}
