"""The testbed as an ``em`` experiment (``experiment: testbed``, the default; ``configs/em/testbed-small.yaml``).

What it adds to the loop (:mod:`latent_thoughts.em.loop`):

- ``data``: the world's warm-start and bootstrap splits, one sentence a chunk, with the oracle
  teacher's thoughts; one BPE tokenizer for every model; the held-out problems;
- ``pretrain`` (with ``pretrain.tokens``): a base pretrained on raw documents of the world's
  validation split;
- training configurations from the testbed recipe (:mod:`latent_thoughts.recipes.testbed`);
- the checker's reading of every E-step's sampled and selected thoughts, and the ``checker``
  selection policy (STaR-style);
- evaluation: latent-mode accuracy on the held-out problems and the thoughts' true claims;
- the summary's loop dynamics: fidelity f, selection gain g and growth g·f.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from latent_thoughts.config import StageConfig, deep_merge
from latent_thoughts.em.config import EMConfig
from latent_thoughts.em.experiment import RunPaths, Stage, StageResult, register_experiment
from latent_thoughts.em.loop import apply_mstep, remove, run_training, stage_config_of_training
from latent_thoughts.em.selection import Candidates, register_policy
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.recipes.testbed import TestbedRecipe
from latent_thoughts.testbed.world import TestbedConfig
from latent_thoughts.train.config import parse_token_count


def _small_world() -> TestbedRecipe:
    """The testbed recipe at the small default's size: 200 warm-start and 100 bootstrap documents,
    1.5 M tokens per training run."""
    return TestbedRecipe(
        world=TestbedConfig(warm_start_documents=200, bootstrap_documents=100, eval_problems=200),
        tokens=1_500_000,
    )


class PretrainConfig(StageConfig):
    """An optional base model that is not random: pretrained on raw documents of a split that neither
    the warm start nor the E-step sees (the testbed world's validation bucket,
    ``testbed.world.validation_documents`` documents). The warm start and every M-step from the base
    continue from it, as the paper continues pretraining TinyLlama."""

    tokens: int | None = Field(
        None, gt=0, description="raw pretraining tokens of the base model (unset: a random base, the default)"
    )

    _parse = field_validator("tokens", mode="before")(parse_token_count)


class EvaluationConfig(StageConfig):
    """Evaluation of every model (warm start and each M-step) on the testbed's held-out problems."""

    max_thought_tokens: int = Field(96, gt=0, description="longest thought when answering")
    batch_size: int = Field(64, gt=0, description="problems per engine call")


class TestbedEMConfig(EMConfig):
    """The EM run on the testbed. ``testbed`` is the recipe (world, tokenizer, model shape,
    optimiser) shared by every training stage; its ``tokens`` is the warm start's budget, and every
    M-step's unless ``mstep.tokens`` sets another (the M-steps are matched across iterations). The
    bootstrap split's size, relative to the warm-start split, is ``testbed.world.bootstrap_documents``
    against ``warm_start_documents``."""

    __test__ = False  # not a pytest test class despite its name

    testbed: TestbedRecipe = Field(default_factory=_small_world)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator("testbed", mode="before")
    @classmethod
    def _testbed_over_small_default(cls, value: Any, info: ValidationInfo) -> Any:
        # A partial ``testbed:`` section overrides the small default, not the recipe's own defaults.
        if isinstance(value, dict):
            return deep_merge(_small_world().model_dump(mode="json"), value)
        return value


# --- paths of this experiment ----------------------------------------------------------------------


def problems_file(paths: RunPaths) -> Path:
    """The held-out problems."""
    return paths.data / "eval.jsonl"


def pretrain_dir(paths: RunPaths) -> Path:
    """The base model's raw pretraining (``pretrain.tokens``): its chunks and its training output."""
    return (paths.base or paths.root) / "pretrain"


def pretrained_model(paths: RunPaths) -> Path:
    return pretrain_dir(paths) / "train" / "model"


# --- stages ----------------------------------------------------------------------------------------


def prepare_data(config: TestbedEMConfig, paths: RunPaths) -> StageResult:
    """Write both splits with the oracle's thoughts, the shared tokenizer and the held-out problems."""
    from latent_thoughts.recipes.testbed import train_shared_tokenizer, write_split
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
    counts["eval_problems"] = write_problems(make_eval_problems(world), problems_file(paths))
    outputs = {
        "warm_start_chunks": str(paths.chunks("warm_start")),
        "warm_start_thoughts": str(paths.teacher_thoughts("warm_start")),
        "bootstrap_chunks": str(paths.chunks("bootstrap")),
        "bootstrap_teacher_thoughts": str(paths.teacher_thoughts("bootstrap")),
        "tokenizer": str(paths.tokenizer),
        "problems": str(problems_file(paths)),
    }
    return outputs, counts


def teacher_true_claims(paths: RunPaths) -> float:
    """Share of true arithmetic claims in the warm-start split's teacher thoughts: the quality of the
    thoughts the warm start was trained on (sigma_0 of :func:`loop_dynamics`)."""
    from latent_thoughts.report.thought_checks import check_thoughts_file

    return check_thoughts_file(paths.teacher_thoughts("warm_start"), coverage=False).claim_accuracy


def pretrain_config(config: TestbedEMConfig, paths: RunPaths) -> Any:
    """The :class:`~latent_thoughts.train.TrainConfig` of the base model's raw pretraining."""
    from latent_thoughts.recipes.testbed import RecipeData, train_config
    from latent_thoughts.train import TrainConfig

    chunks = pretrain_dir(paths) / "chunks.parquet"
    data = RecipeData(chunks, chunks, paths.tokenizer)
    recipe = config.testbed.model_copy(update={"tokens": config.pretrain.tokens})
    base = train_config(
        recipe,
        "raw",
        config.seed,
        data,
        pretrain_dir(paths) / "train",
        progress_bar=config.progress,
        logging_steps=100,
    )
    values = base.model_dump(mode="json")
    values["model"]["init_seed"] = config.seed
    return TrainConfig.model_validate(values)


def run_pretraining(config: TestbedEMConfig, paths: RunPaths) -> StageResult:
    """Write the pretraining split's raw chunks (the world's validation bucket) and train the base."""
    from latent_thoughts.corpus import write_chunks
    from latent_thoughts.recipes.testbed import split_chunks

    chunks_file = pretrain_dir(paths) / "chunks.parquet"
    chunks = split_chunks(config.testbed.world, "validation")
    if not chunks:
        raise LatentThoughtsError("pretrain.tokens needs testbed.world.validation_documents > 0")
    chunks_file.parent.mkdir(parents=True, exist_ok=True)
    write_chunks(chunks, chunks_file)
    outputs, metrics = run_training(pretrain_config(config, paths))
    return {**outputs, "chunks": str(chunks_file)}, {**metrics, "documents": len({c.doc_id for c in chunks})}


def run_evaluation(
    config: TestbedEMConfig, paths: RunPaths, model: Path, out: Path, mode: str
) -> StageResult:
    """Accuracy of ``model`` in ``mode`` on the held-out problems, and (latent mode) its thoughts' claims."""
    from latent_thoughts.atomic import write_json
    from latent_thoughts.recipes.testbed import evaluate_arm
    from latent_thoughts.testbed.task import read_problems

    problems = read_problems(problems_file(paths))
    result = evaluate_arm(
        model,
        problems,
        mode,
        progress=config.progress,
        device=config.device,
        max_thought_tokens=config.evaluation.max_thought_tokens,
        batch_size=config.evaluation.batch_size,
    )
    payload = result.as_dict()
    write_json(out, payload)
    metrics = {
        key: payload[key] for key in ("accuracy", "problems", "true_claim_share", "copied_operand_share")
    }
    return {"evaluation": str(out)}, metrics


# --- the summary -----------------------------------------------------------------------------------


def summarize(config: TestbedEMConfig, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per iteration (0 = the warm start) from the finished stages' metrics, with the loop's
    dynamics (:func:`loop_dynamics`)."""
    data = stages.get("data", {})
    teacher = data.get("metrics", {}).get("warm_start_teacher_true_claims")
    rows = []
    for t in range(config.iterations + 1 + config.final_estep):
        train = stages.get("warm_start" if t == 0 else f"mstep_{t}", {})
        estep = stages.get(f"estep_{t}", {}) if t > 0 else {}
        evaluation = stages.get(f"eval_{t}", {})
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


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The per-iteration tables as Markdown lines (``-`` where a figure does not exist;
    :func:`latent_thoughts.report.em_run.testbed_summary_tables`, which ``latent-thoughts report``
    shows too)."""
    from latent_thoughts.report.em_run import testbed_summary_tables
    from latent_thoughts.report.tables import markdown_lines

    return markdown_lines(testbed_summary_tables(summary))


# --- the experiment --------------------------------------------------------------------------------


class TestbedExperiment:
    """The testbed's part of an EM run (see the module docstring)."""

    __test__ = False  # not a pytest test class despite its name

    name = "testbed"
    config_class = TestbedEMConfig
    inherited = ("data", "pretrain", "warm_start", "eval_0")

    def prepare_stages(self, config: TestbedEMConfig, paths: RunPaths) -> list[Stage]:
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
        if config.pretrain.tokens is not None:
            pretrain = pretrain_config(config, paths)
            stages.append(
                Stage(
                    "pretrain",
                    ["data"],
                    {**stage_config_of_training(pretrain), "split": "validation"},
                    {
                        "seed": config.seed,
                        "inputs": {"model": "base (scratch)", "data": "raw validation split"},
                    },
                    lambda: run_pretraining(config, paths),
                    remove(pretrain_dir(paths)),
                )
            )
        return stages

    def training_config(self, config: TestbedEMConfig, paths: RunPaths, t: int) -> Any:
        from latent_thoughts.recipes.testbed import RecipeData, train_config
        from latent_thoughts.train import TrainConfig

        if t == 0:
            data = RecipeData(
                paths.chunks("warm_start"), paths.teacher_thoughts("warm_start"), paths.tokenizer
            )
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
            values["model"]["path"] = str(pretrained_model(paths))
        return TrainConfig.model_validate(apply_mstep(values, config, paths, t))

    def training_upstream(self, config: TestbedEMConfig, t: int) -> list[str]:
        pretrained = config.pretrain.tokens is not None
        return ["pretrain"] if pretrained and (t == 0 or config.mstep.init == "base") else []

    def rephrase_teacher(self, config: TestbedEMConfig, paths: RunPaths) -> tuple[Path, list[str]]:
        """The world's oracle (its noise settings and seed) as a teacher file."""
        from latent_thoughts.synthesis.teachers import write_oracle_teacher

        world = config.testbed.world
        path = write_oracle_teacher(
            paths.baseline("wrap") / "oracle_teacher.yaml",  # this run's folder, never a base run's
            noise=world.oracle_noise,
            irrelevant_share=world.oracle_irrelevant_share,
            seed=world.seed,
            plan_numbers=world.oracle_plan_numbers,
        )
        return path, []

    def sample_metrics(self, config: TestbedEMConfig, samples: Path) -> dict[str, Any]:
        """The testbed checker on the K sampled thoughts and on the selected ones
        (:func:`~latent_thoughts.report.thought_checks.sample_quality`): shares of true claims, of
        valid thoughts, of valid thoughts on chunks that state a result, and of samples closed by EOL."""
        from latent_thoughts.report.thought_checks import sample_quality

        return sample_quality(samples)

    def evaluation_config(self, config: TestbedEMConfig) -> dict[str, Any]:
        return config.evaluation.model_dump(mode="json")

    def evaluation_inputs(self, config: TestbedEMConfig, paths: RunPaths, model: Path) -> dict[str, Any]:
        return {"model": str(model), "problems": str(problems_file(paths))}

    def evaluate(
        self, config: TestbedEMConfig, paths: RunPaths, model: Path, out: Path, mode: str | None
    ) -> StageResult:
        return run_evaluation(config, paths, model, out, mode or "latent")

    def summarize(self, config: TestbedEMConfig, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return summarize(config, stages)

    def summary_table(self, summary: dict[str, Any]) -> list[str]:
        return summary_table(summary)

    def plan_sizes(self, config: TestbedEMConfig) -> dict[str, Any]:
        from latent_thoughts.em.plan import scratch_shape, split_sizes
        from latent_thoughts.format import LATENT_TOKENS
        from latent_thoughts.recipes.testbed import split_chunks
        from latent_thoughts.tokenizer import train_bpe_tokenizer
        from latent_thoughts.train.budget import steps_for_tokens, tokens_for_steps

        recipe, world = config.testbed, config.testbed.world
        chunks = {split: split_chunks(world, split) for split in ("warm_start", "bootstrap")}
        # the run's own tokenizer, trained in memory as the data stage trains it (without the thoughts)
        texts = [chunk.text for split in chunks.values() for chunk in split]
        tokenizer = train_bpe_tokenizer(texts, recipe.vocab_size, split_digits=recipe.split_digits)

        def count_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        def rounded(tokens: int) -> int:  # budgets are whole optimizer steps
            steps = steps_for_tokens(tokens, recipe.seq_len, recipe.batch)
            return tokens_for_steps(steps, recipe.seq_len, recipe.batch)

        sizes = {name: split_sizes(split, count_tokens) for name, split in chunks.items()}
        extra = []
        if config.pretrain.tokens is not None:
            extra.append(
                ("pretrain", "a base on raw validation documents", f"{config.pretrain.tokens:,} tokens")
            )
        shape = scratch_shape(scratch_spec(recipe), recipe.vocab_size + len(LATENT_TOKENS.all()))
        return {
            "corpus": f"testbed world (procedural, seed {world.seed})",
            "model_name": f"scratch Llama ({recipe.width} wide, {recipe.layers} layers)",
            "model": {**shape, "seq_len": recipe.seq_len},
            "teacher": "the testbed oracle (exact thoughts, no cost)",
            "teacher_size": f"{sizes['warm_start']['chunks']:,} thoughts from the oracle",
            "token_counter": f"the run's BPE ({recipe.vocab_size} ids, trained here on the chunks)",
            "split_rule": "the world's warm-start and bootstrap documents",
            "splits": sizes,
            "extra_stages": extra,
            "warm_start_tokens": rounded(recipe.tokens),
            "mstep_tokens": rounded(config.mstep.tokens or recipe.tokens),
            "evaluation": f"{world.eval_problems:,} held-out problems, latent mode",
        }


def scratch_spec(recipe: TestbedRecipe) -> Any:
    """The recipe's scratch model shape, as its training configuration builds it."""
    from latent_thoughts.modeling import ScratchModelConfig

    return ScratchModelConfig(
        hidden_size=recipe.width,
        num_layers=recipe.layers,
        num_heads=recipe.heads,
        num_kv_heads=recipe.heads,
        intermediate_size=recipe.width * 8 // 3,
        max_position_embeddings=recipe.seq_len,
    )


def checker_pass(candidates: Candidates, u: float) -> int | None:
    """A thought the testbed checker passes (every claim true and every result of the chunk derived),
    uniformly among those that do; None when none does (STaR-style selection, ``policy: checker``).
    A chunk that is not testbed text is an error naming the chunk (the checker cannot read it)."""
    from latent_thoughts.testbed.checker import check_thought

    try:
        passing = [
            index
            for index, thought in enumerate(candidates.thoughts)
            if check_thought(thought, candidates.chunk_text).valid
        ]
    except LatentThoughtsError as exc:
        raise LatentThoughtsError(
            f"selection policy 'checker' works on testbed chunks only: chunk {candidates.chunk_index} "
            f"of {candidates.doc_id!r}: {exc}"
        ) from None
    if not passing:
        return None
    return passing[min(int(u * len(passing)), len(passing) - 1)]


EXPERIMENT = TestbedExperiment()
register_experiment(EXPERIMENT)
register_policy("checker", checker_pass)
