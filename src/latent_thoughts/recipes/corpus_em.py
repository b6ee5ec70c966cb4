"""A real corpus as an ``em`` experiment (``experiment: corpus``): the paper's whole pipeline in one command.

``latent-thoughts em --config configs/em/textbooks-tiny.yaml`` (the bundled sample corpus, a tiny
model, minutes on a CPU) or ``configs/em/paper-tinyllama-finemath.yaml`` (the paper's Experiment B).
The stages before the warm start:

- ``data``: the documents cut into chunks (as ``latent-thoughts chunk`` does; or a chunks file it
  wrote), and split by a stable rule on the documents' order: document i goes to the warm-start split
  when ``i mod data.split.modulus`` is in ``data.split.warm_start`` (the reference: i mod 20 = 0), to
  the bootstrap split when it is in ``bootstrap`` (13-16), and to the held-out documents when it is in
  ``held_out`` (likelihood evaluation); or the two splits given as chunk files;
- ``base``: the base model with the four latent tokens added and its embeddings resized (METHOD
  section 2), saved once: a Hugging Face model (``model.path``) or a scratch Llama (``model.scratch``,
  with ``model.tokenizer`` or a BPE trained on the two splits' text). The warm start and every M-step
  from the base start from it, so they share its weights exactly;
- ``teacher``: the warm-start split's thoughts, written by ``teacher.file`` (any teacher file of
  ``synthesize``: an OpenAI-compatible API, vLLM, a local ``serve``, in-process transformers; the
  Batch API with ``teacher.batch_api``) or by the base model itself (``teacher.base_model``, for tiny
  runs). It is the ``synthesize`` stage, cached and resumable: a killed run asks for nothing twice.

Evaluation (``evaluation.tasks``): GSM8K, MATH, MATH-500 (few-shot, latent-aware prompting, as
``latent-thoughts evaluate``) and ``likelihood`` (held-out NLL per token and ELBO(K), as
``latent-thoughts likelihood``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from latent_thoughts.config import StageConfig
from latent_thoughts.corpus import ChunkConfig
from latent_thoughts.em.config import EMConfig
from latent_thoughts.em.experiment import RunPaths, Stage, StageResult, register_experiment
from latent_thoughts.em.loop import apply_mstep, remove
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import FormatConfig
from latent_thoughts.train.config import BudgetConfig, ModelConfig, OptimConfig, Precision, parse_token_count

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "data" / "sample_corpus.jsonl"
"""The corpus bundled with the package (a few short math documents): the default ``data.documents``."""

Task = Literal["gsm8k", "math", "math500", "likelihood", "finetune-gsm8k", "finetune-math"]
TASKS: tuple[Task, ...] = ("gsm8k", "math", "math500", "likelihood", "finetune-gsm8k", "finetune-math")
DEFAULT_TASKS: tuple[Task, ...] = ("gsm8k", "likelihood")


class SplitRule(StageConfig):
    """Which documents go where: document i (in corpus order) by ``i mod modulus``."""

    modulus: int = Field(20, ge=1, description="the rule's modulus (the reference: 20)")
    warm_start: list[int] = Field([0], description="remainders of the warm-start split (teacher thoughts)")
    bootstrap: list[int] = Field([13, 14, 15, 16], description="remainders of the bootstrap split (E-step)")
    held_out: list[int] = Field([19], description="remainders of the held-out documents (likelihood)")

    @model_validator(mode="after")
    def _disjoint(self) -> SplitRule:
        groups = {"warm_start": self.warm_start, "bootstrap": self.bootstrap, "held_out": self.held_out}
        seen: dict[int, str] = {}
        for name, remainders in groups.items():
            for remainder in remainders:
                if not 0 <= remainder < self.modulus:
                    raise ValueError(f"{name}: remainder {remainder} is not in [0, {self.modulus})")
                if remainder in seen:
                    raise ValueError(f"remainder {remainder} is in both {seen[remainder]} and {name}")
                seen[remainder] = name
        if not self.warm_start or not self.bootstrap:
            raise ValueError("the warm-start and bootstrap splits each need at least one remainder")
        return self

    def split_of(self, index: int) -> str | None:
        """The split of the document at position ``index``, or None (unused)."""
        remainder = index % self.modulus
        for name in ("warm_start", "bootstrap", "held_out"):
            if remainder in getattr(self, name):
                return name
        return None


class CorpusData(StageConfig):
    """The corpus and its splits."""

    documents: list[str] = Field(
        default_factory=list,
        description="files or folders `chunk` reads (JSONL, Parquet, text, LaTeX); empty: the bundled sample corpus",
    )
    chunks: str | None = Field(None, description="a chunks.parquet written by `chunk`, instead of documents")
    warm_start_chunks: str | None = Field(None, description="the warm-start split as a chunks file")
    bootstrap_chunks: str | None = Field(None, description="the bootstrap split as a chunks file")
    max_documents: int | None = Field(None, gt=0, description="the first N documents only")
    chunking: ChunkConfig = Field(default_factory=ChunkConfig)
    split: SplitRule = Field(default_factory=SplitRule)

    @field_validator("documents", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> CorpusData:
        given = (self.warm_start_chunks is None, self.bootstrap_chunks is None)
        if given[0] != given[1]:
            raise ValueError("give both warm_start_chunks and bootstrap_chunks, or neither")
        if self.chunks is not None and self.documents:
            raise ValueError("give data.documents or data.chunks, not both")
        return self


class CorpusTeacher(StageConfig):
    """Who writes the warm-start split's thoughts."""

    file: str | None = Field(None, description="a teacher file of `synthesize` (configs/teachers/)")
    set: list[str] = Field(default_factory=list, description="overrides of the teacher file, key=value")
    base_model: bool = Field(False, description="the run's own base model, in-process (tiny runs only)")
    temperature: float = Field(0.7, gt=0, description="base_model: sampling temperature")
    max_new_tokens: int = Field(256, gt=0, description="base_model: longest thought")
    batch_api: bool = Field(False, description="send the requests through the teacher's Batch API")

    @model_validator(mode="after")
    def _one_teacher(self) -> CorpusTeacher:
        if (self.file is None) == (not self.base_model):
            raise ValueError("set exactly one of teacher.file and teacher.base_model")
        return self


class TrainingOptions(StageConfig):
    """What the warm start and every M-step share: the document format, optimiser and precision."""

    format: FormatConfig = Field(default_factory=FormatConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    precision: Precision = "auto"
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(500, gt=0)


class FinetuneOptions(StageConfig):
    """Fine-tune-then-evaluate (METHOD section 7, as ``latent-thoughts finetune-eval``): a copy of the
    model is fine-tuned on the task's training problems (loss on the answer), then evaluated zero-shot."""

    train_limit: int | None = Field(None, gt=0, description="training problems, a seeded draw (default all)")
    epochs: float = Field(1.0, gt=0)
    steps: int | None = Field(None, gt=0, description="optimizer steps instead of epochs")
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(1024, gt=0, description="longer training examples are left out (counted)")


class CorpusEvaluation(StageConfig):
    """How every model (the warm start, each M-step) is evaluated."""

    tasks: list[Task] = Field(default_factory=lambda: list(DEFAULT_TASKS), description=", ".join(TASKS))
    mode: Literal["latent", "raw"] = Field("latent", description="latent: the model thinks before answering")
    limit: int | None = Field(None, gt=0, description="problems per benchmark (a seeded draw)")
    data_dir: str | None = Field(
        None,
        description="folder of the benchmark files (default: $LATENT_THOUGHTS_DATA, else the cache folder, "
        "fetched once from the Hugging Face Hub, as `evaluate` finds them)",
    )
    shots: int | None = Field(None, ge=0, description="few-shot exemplars (default: 8 GSM8K, 4 MATH)")
    max_thought_tokens: int = Field(256, gt=0)
    max_answer_tokens: int = Field(384, gt=0)
    batch_size: int = Field(8, gt=0)
    finetune: FinetuneOptions = Field(
        default_factory=lambda: FinetuneOptions(), description="tasks finetune-gsm8k and finetune-math"
    )
    likelihood_k: list[int] = Field(default_factory=lambda: [1, 2, 4], description="ELBO(K) for these K")
    likelihood_documents: int | None = Field(
        None, gt=0, description="held-out documents scored (default: all)"
    )
    likelihood_words_per_chunk: int = Field(64, gt=0, description="ELBO: words of each uniform chunk")

    @field_validator("tasks", "likelihood_k", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return (
            [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
        )


class ModelShape(StageConfig):
    """A model's size for ``em --plan``."""

    parameters: int = Field(gt=0)
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)

    _parse = field_validator("parameters", mode="before")(parse_token_count)


class CorpusEMConfig(EMConfig):
    """The EM run over a real corpus, teacher and model (see the module docstring)."""

    experiment: str = "corpus"
    data: CorpusData = Field(default_factory=CorpusData)
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: CorpusTeacher = Field(default_factory=lambda: CorpusTeacher(base_model=True))
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    warm_start: BudgetConfig = Field(default_factory=lambda: BudgetConfig(epochs=1.0))
    evaluation: CorpusEvaluation = Field(default_factory=CorpusEvaluation)
    plan_model: ModelShape | None = Field(
        None, description="for `em --plan` when model.path cannot be read here (a hub id offline)"
    )


# --- paths of this experiment ----------------------------------------------------------------------


def held_out_file(paths: RunPaths) -> Path:
    """The held-out documents (JSONL, one ``id`` and ``text`` a line)."""
    return paths.data / "held_out" / "documents.jsonl"


def base_model(paths: RunPaths) -> Path:
    """The base model with the latent tokens added."""
    return paths.data / "base_model"


def teacher_file(paths: RunPaths) -> Path:
    """The teacher file the ``teacher`` stage used when the teacher is the base model."""
    return paths.data / "teacher.yaml"


# --- data ------------------------------------------------------------------------------------------


def split_corpus(config: CorpusEMConfig) -> dict[str, list[Any]]:
    """The corpus's chunks by split (``warm_start``, ``bootstrap``) and its held-out documents
    (``held_out``: Documents), by the split rule on the documents' order."""
    from latent_thoughts.corpus import (
        Document,
        chunk_document,
        group_by_document,
        read_chunks,
        read_documents,
    )

    data = config.data
    splits: dict[str, list[Any]] = {"warm_start": [], "bootstrap": [], "held_out": []}
    if data.warm_start_chunks is not None and data.bootstrap_chunks is not None:
        splits["warm_start"] = read_chunks(data.warm_start_chunks)
        splits["bootstrap"] = read_chunks(data.bootstrap_chunks)
        return splits
    if data.chunks is not None:
        documents = list(group_by_document(read_chunks(data.chunks)).items())
        if data.max_documents is not None:
            documents = documents[: data.max_documents]
        for index, (doc_id, chunks) in enumerate(documents):
            split = data.split.split_of(index)
            if split == "held_out":
                text = "".join(chunk.text for chunk in chunks)
                splits[split].append(Document(doc_id, text, data.chunks))
            elif split is not None:
                splits[split] += chunks
        return splits
    inputs = data.documents or [str(SAMPLE_CORPUS)]
    for index, document in enumerate(read_documents(inputs)):
        if data.max_documents is not None and index >= data.max_documents:
            break
        split = data.split.split_of(index)
        if split == "held_out":
            splits[split].append(document)
        elif split is not None:
            splits[split] += chunk_document(document.doc_id, document.text, data.chunking)
    return splits


def prepare_data(config: CorpusEMConfig, paths: RunPaths) -> StageResult:
    """Write the two splits' chunk files and the held-out documents."""
    from latent_thoughts.atomic import write_text
    from latent_thoughts.corpus import write_chunks

    splits = split_corpus(config)
    metrics: dict[str, Any] = {}
    for split in ("warm_start", "bootstrap"):
        chunks = splits[split]
        if not chunks:
            raise LatentThoughtsError(
                f"data: the {split} split has no chunks (documents i with i mod {config.data.split.modulus} "
                f"in {getattr(config.data.split, split)}); give more documents or change data.split"
            )
        paths.chunks(split).parent.mkdir(parents=True, exist_ok=True)
        write_chunks(chunks, paths.chunks(split))
        metrics[f"{split}_documents"] = len({chunk.doc_id for chunk in chunks})
        metrics[f"{split}_chunks"] = len(chunks)
        metrics[f"{split}_characters"] = sum(len(chunk.text) for chunk in chunks)
    lines = [
        json.dumps({"id": doc.doc_id, "text": doc.text}, ensure_ascii=False) for doc in splits["held_out"]
    ]
    held_out_file(paths).parent.mkdir(parents=True, exist_ok=True)
    write_text(held_out_file(paths), "".join(line + "\n" for line in lines))
    metrics["held_out_documents"] = len(lines)
    outputs = {
        "warm_start_chunks": str(paths.chunks("warm_start")),
        "bootstrap_chunks": str(paths.chunks("bootstrap")),
        "held_out_documents": str(held_out_file(paths)),
    }
    return outputs, metrics


def data_config(config: CorpusEMConfig) -> dict[str, Any]:
    """What decides the data stage's output: the data section, with the files it reads fingerprinted
    by size and modification time (a changed corpus file changes the stage)."""
    values = config.data.model_dump(mode="json")
    files = [
        *config.data.documents,
        config.data.chunks,
        config.data.warm_start_chunks,
        config.data.bootstrap_chunks,
    ]
    values["files"] = {name: _file_stamp(Path(name)) for name in files if name}
    return values


def _file_stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{int(stat.st_mtime)}" if path.is_file() else "folder"


# --- the base model --------------------------------------------------------------------------------


def make_base_model(config: CorpusEMConfig, paths: RunPaths) -> StageResult:
    """Save the base model (latent tokens added, embeddings resized) with its tokenizer."""
    from latent_thoughts.corpus import read_chunks
    from latent_thoughts.fingerprint import write_fingerprint
    from latent_thoughts.modeling import count_parameters
    from latent_thoughts.tokenizer import add_latent_tokens, load_tokenizer, train_bpe_tokenizer
    from latent_thoughts.train import TrainConfig
    from latent_thoughts.train.trainer import prepare_model

    folder = base_model(paths)
    train_config = TrainConfig.model_validate(
        {
            "output_dir": str(folder),
            "seed": config.seed,
            "model": config.model.model_dump(mode="json"),
            "data": {"sources": [{"kind": "raw", "chunks": str(paths.chunks("warm_start"))}]},
            "budget": {"epochs": 1.0},
        }
    )
    spec = config.model
    source = spec.tokenizer or spec.path
    if source is not None:
        tokenizer = load_tokenizer(source)
    else:  # a scratch model without a tokenizer: a BPE trained on the two splits' text
        texts = [
            chunk.text for split in ("warm_start", "bootstrap") for chunk in read_chunks(paths.chunks(split))
        ]
        tokenizer = train_bpe_tokenizer(texts, spec.bpe_vocab_size, split_digits=spec.bpe_split_digits)
    add_latent_tokens(tokenizer)
    model = prepare_model(train_config, tokenizer)
    model.config.use_cache = True
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    write_fingerprint(folder)  # computed once here, read by every stage that names this model
    return {"model": str(folder)}, {"parameters": count_parameters(model), "vocabulary": len(tokenizer)}


# --- the teacher -----------------------------------------------------------------------------------


def teacher_path(config: CorpusEMConfig, paths: RunPaths) -> Path:
    """The teacher file the synthesis stage reads."""
    return teacher_file(paths) if config.teacher.base_model else Path(str(config.teacher.file))


def write_base_teacher(config: CorpusEMConfig, paths: RunPaths) -> None:
    """The teacher file of ``teacher.base_model``: the base model in-process."""
    import yaml

    from latent_thoughts.atomic import write_text

    teacher = {
        "kind": "transformers",
        "transformers": {"model": str(base_model(paths)), "device": config.device, "dtype": config.dtype},
        "sampling": {
            "temperature": config.teacher.temperature,
            "max_new_tokens": config.teacher.max_new_tokens,
        },
        "count_tokens_with": "auto",
        "batch_size": 16,
        # a random base model rarely closes its thought: a cut thought is still a thought to train on
        "on_cut": "keep",
    }
    write_text(teacher_file(paths), yaml.safe_dump(teacher, sort_keys=False))


def run_teacher(config: CorpusEMConfig, paths: RunPaths) -> StageResult:
    """Synthesize the warm-start split's thoughts (resumable: the synthesis cache keeps every answer)."""
    from latent_thoughts.synthesis.stage import SynthesisRequest, run_synthesis

    if config.teacher.base_model:
        write_base_teacher(config, paths)
    request = SynthesisRequest(
        chunks=paths.chunks("warm_start"),
        teacher=teacher_path(config, paths),
        out=paths.teacher_thoughts("warm_start"),
        overrides=list(config.teacher.set),
        batch_api=config.teacher.batch_api,
        progress=config.progress,
    )
    summary = run_synthesis(request)
    output = summary.get("output", {}) if isinstance(summary.get("output"), dict) else {}
    if output.get("missing"):
        raise LatentThoughtsError(f"teacher: {output['missing']} chunks still wait for the teacher's answer")
    metrics: dict[str, Any] = {
        key: summary[key] for key in ("teacher", "usage", "output", "elapsed_s") if key in summary
    }
    return {"thoughts": str(paths.teacher_thoughts("warm_start"))}, metrics


# --- evaluation ------------------------------------------------------------------------------------


def run_evaluation(config: CorpusEMConfig, paths: RunPaths, model: Path, out: Path, mode: str) -> StageResult:
    """Evaluate ``model`` on every task of ``evaluation.tasks`` (benchmarks in ``mode``); writes ``out``
    and, beside it, the benchmarks' logs (``eval/TASK_MODE.jsonl``)."""
    from latent_thoughts.atomic import write_json
    from latent_thoughts.engines.spec import EngineSpec, open_engine

    options = {"model": str(model), "device": config.device, "dtype": config.dtype}
    results: dict[str, Any] = {}
    with open_engine(EngineSpec(kind="transformers", transformers=options)) as (engine, tokenizer):
        for task in config.evaluation.tasks:
            if task == "likelihood":
                results[task] = likelihood(config, paths, engine, tokenizer)
            elif task.startswith("finetune-"):
                results[task] = finetune_then_evaluate(
                    config, task.removeprefix("finetune-"), model, mode, out
                )
            else:
                results[task] = benchmark(config, task, (engine, tokenizer), mode, out.parent / "eval", model)
    write_json(out, {"model": str(model), **results})
    return {"evaluation": str(out)}, flat_metrics(results)


def benchmark(
    config: CorpusEMConfig, task: str, opened: tuple[Any, Any], mode: str, out: Path, model: Path
) -> dict[str, Any]:
    """One benchmark as ``latent-thoughts evaluate`` runs it on the ``opened`` (engine, tokenizer) of
    ``model``, logs under ``out``: its aggregate (accuracy, stderr, ...)."""
    from latent_thoughts.evaluate.benchmark import BenchmarkSettings, evaluate_to_files
    from latent_thoughts.evaluate.prompting import PromptMode
    from latent_thoughts.evaluate.tasks import read_task, select_problems

    evaluation = config.evaluation
    path = benchmark_path(evaluation, task)
    problems = select_problems(read_task(task, path), limit=evaluation.limit, seed=config.seed)
    settings = BenchmarkSettings(
        max_thought_tokens=evaluation.max_thought_tokens,
        max_answer_tokens=evaluation.max_answer_tokens,
        batch_size=evaluation.batch_size,
        seed=config.seed,
        shots=evaluation.shots,
    )
    if mode not in ("latent", "raw"):
        raise LatentThoughtsError(f"evaluation mode {mode!r}: choose latent or raw")
    out.mkdir(parents=True, exist_ok=True)
    engine, tokenizer = opened
    prompt_mode: PromptMode = "latent" if mode == "latent" else "raw"
    return evaluate_to_files(
        engine, tokenizer, problems, prompt_mode, settings, out, info={"model": str(model), "file": str(path)}
    )


def finetune_then_evaluate(
    config: CorpusEMConfig, task: str, model: Path, mode: str, out: Path
) -> dict[str, Any]:
    """``latent-thoughts finetune-eval`` of ``model`` on ``task``: a copy fine-tuned on the task's
    training problems (under ``eval/finetune-TASK/model``), evaluated zero-shot; its aggregate with the
    fine-tune's figures."""
    from latent_thoughts.engines.spec import EngineSpec, open_engine
    from latent_thoughts.evaluate.benchmark import BenchmarkSettings, evaluate_to_files
    from latent_thoughts.evaluate.benchmark_data import benchmark_file, locate_data
    from latent_thoughts.evaluate.finetune import FinetuneSettings, finetune, finetune_split, select_training
    from latent_thoughts.evaluate.prompting import PromptMode
    from latent_thoughts.evaluate.tasks import read_task, select_problems

    evaluation, options = config.evaluation, config.evaluation.finetune
    location = locate_data(evaluation.data_dir)
    split = finetune_split(task, location.folder, files=lambda name: benchmark_file(name, location))
    train = select_training(split.train, options.train_limit, config.seed)
    problems = select_problems(
        read_task(split.eval_task, split.eval_path), limit=evaluation.limit, seed=config.seed
    )
    prompt_mode: PromptMode = "latent" if mode == "latent" else "raw"
    folder = out.parent / "eval" / f"finetune-{task}"
    settings = FinetuneSettings(
        epochs=options.epochs,
        steps=options.steps,
        lr=options.lr,
        batch_size=options.batch_size,
        max_length=options.max_length,
        seed=config.seed,
        progress=config.progress,
    )
    tuned = finetune(model, task, train, prompt_mode, folder, settings)
    zero_shot = BenchmarkSettings(
        max_thought_tokens=evaluation.max_thought_tokens,
        max_answer_tokens=evaluation.max_answer_tokens,
        batch_size=evaluation.batch_size,
        seed=config.seed,
        shots=0,
    )
    spec = EngineSpec(
        kind="transformers",
        transformers={"model": str(folder / "model"), "device": config.device, "dtype": config.dtype},
    )
    info = {
        "model": str(folder / "model"),
        "base_model": str(model),
        "file": str(split.eval_path),
        "shots": 0,
    }
    with open_engine(spec) as (engine, tokenizer):
        summary = evaluate_to_files(
            engine, tokenizer, problems, prompt_mode, zero_shot, folder / "eval", info=info
        )
    return {**summary, "finetune": tuned}


def benchmark_path(evaluation: CorpusEvaluation, task: str) -> Path:
    """The benchmark file of ``task`` where ``evaluate`` finds it: ``evaluation.data_dir``, else
    ``$LATENT_THOUGHTS_DATA``, else the cache folder, fetched once from the Hub
    (:mod:`latent_thoughts.evaluate.benchmark_data`)."""
    from latent_thoughts.evaluate.benchmark_data import benchmark_file, locate_data
    from latent_thoughts.evaluate.tasks import DEFAULT_FILES

    return benchmark_file(DEFAULT_FILES[task], locate_data(evaluation.data_dir))


def likelihood(config: CorpusEMConfig, paths: RunPaths, engine: Any, tokenizer: Any) -> dict[str, Any]:
    """Held-out NLL per token and bits per byte, and ELBO(K) per token for each K, as
    ``latent-thoughts likelihood`` computes them."""
    from latent_thoughts.corpus import read_documents
    from latent_thoughts.evaluate.likelihood import elbo, raw_nll, uniform_chunks

    documents = list(read_documents([held_out_file(paths)]))[: config.evaluation.likelihood_documents]
    if not documents:
        return {"documents": 0}
    texts, ids = [doc.text for doc in documents], [doc.doc_id for doc in documents]
    nll = raw_nll(engine, tokenizer, texts, ids=ids)
    record: dict[str, Any] = {
        "documents": len(texts),
        "tokens": nll.tokens,
        "nll_per_token": nll.nll_per_token,
        "bits_per_byte": nll.bits_per_byte,
    }
    chunked = [uniform_chunks(text, config.evaluation.likelihood_words_per_chunk) for text in texts]
    for k in config.evaluation.likelihood_k:
        bounds = elbo(
            engine,
            tokenizer,
            chunked,
            k,
            context_tokens=config.estep.context_tokens,
            thought_tokens=config.estep.max_thought_tokens,
            seed=config.seed,
            ids=ids,
        )
        tokens = sum(bound.text_tokens - bound.dropped_chunk_tokens for bound in bounds)
        record[f"elbo_{k}_per_token"] = -sum(bound.elbo for bound in bounds) / max(tokens, 1)
    return record


def flat_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the summary shows: each benchmark's accuracy, the held-out NLL and ELBO(K)."""
    metrics: dict[str, Any] = {}
    for task, result in results.items():
        if task == "likelihood":
            metrics.update({key: value for key, value in result.items() if key != "documents"})
            metrics["likelihood_documents"] = result.get("documents")
        else:
            metrics[f"{task}_accuracy"] = result.get("accuracy")
            metrics[f"{task}_problems"] = result.get("n")
    return metrics


# --- the summary -----------------------------------------------------------------------------------


def summarize(config: CorpusEMConfig, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per iteration (0: the warm start): training tokens and loss, the E-step's bound, ESS,
    thought length and share closed by EOL, and every evaluation figure."""

    def metrics(name: str) -> dict[str, Any]:
        record = stages.get(name, {})
        return record.get("metrics", {}) if record.get("status") == "done" else {}

    rows = []
    for t in range(config.iterations + 1 + config.final_estep):
        train = metrics("warm_start" if t == 0 else f"mstep_{t}")
        estep = metrics(f"estep_{t}") if t > 0 else {}
        rows.append(
            {
                "iteration": t,
                "train_tokens": train.get("tokens"),
                "train_loss": train.get("train_loss"),
                "mean_bound": estep.get("mean_bound"),
                "mean_ess": estep.get("mean_ess"),
                "k": estep.get("k"),
                "mean_thought_tokens": estep.get("mean_thought_tokens"),
                "closed_by_eol": estep.get("closed_by_eol"),
                **metrics(f"eval_{t}"),
            }
        )
    teacher = metrics("teacher")
    return {
        "run": config.out,
        "experiment": "corpus",
        "policy": config.estep.policy,
        "mstep": config.mstep.model_dump(mode="json"),
        "data": metrics("data"),
        "teacher": {key: teacher.get(key) for key in ("teacher", "usage", "output")},
        "iterations": rows,
    }


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The per-iteration table as Markdown lines: the fixed columns, then one per evaluation figure
    (:func:`latent_thoughts.report.em_run.corpus_summary_tables`)."""
    from latent_thoughts.report.em_run import corpus_summary_tables
    from latent_thoughts.report.tables import markdown_lines

    return markdown_lines(corpus_summary_tables(summary))


# --- the plan --------------------------------------------------------------------------------------


def plan_sizes(config: CorpusEMConfig) -> dict[str, Any]:
    """What ``em --plan`` prints for a corpus run: the splits cut in memory, tokens counted with the
    model's tokenizer, the model's shape, the budgets and the teacher's projected cost."""
    from latent_thoughts.em.plan import pretrained_shape, scratch_shape, split_sizes, token_counter
    from latent_thoughts.train.budget import steps_for_tokens, tokens_for_steps

    splits = split_corpus(config)
    spec = config.model
    count_tokens, counter = token_counter(spec.tokenizer or spec.path)
    sizes = {name: split_sizes(splits[name], count_tokens) for name in ("warm_start", "bootstrap")}
    held_out = {"documents": len(splits["held_out"])}
    shape = None
    if spec.path is not None and config.plan_model is not None and not Path(spec.path).is_dir():
        shape = config.plan_model.model_dump()  # a hub id: no network for a plan
    elif spec.path is not None:
        shape = pretrained_shape(spec.path)
    if shape is None and spec.path is None:
        vocabulary = spec.bpe_vocab_size
        if spec.tokenizer is not None:
            from latent_thoughts.tokenizer import load_tokenizer

            vocabulary = len(load_tokenizer(spec.tokenizer))
        shape = scratch_shape(spec.scratch, vocabulary + 4)
    if shape is None:
        raise LatentThoughtsError(
            f"model.path {spec.path}: its configuration cannot be read here; give plan_model "
            "(parameters, layers, hidden) for the plan"
        )
    seq_len = config.training.format.seq_len
    batch = config.training.optim.global_batch
    # a thought is about thought_ratio x its chunk's tokens (METHOD section 4), plus the four markers
    augmented = sum(size["text_tokens"] for size in sizes.values()) and {
        name: round(size["text_tokens"] * (1 + THOUGHT_RATIO)) + 4 * size["chunks"]
        for name, size in sizes.items()
    }

    def budget(section: Any, split: str) -> int:
        tokens = section.tokens if section.tokens is not None else round(section.epochs * augmented[split])
        return tokens_for_steps(steps_for_tokens(max(tokens, 1), seq_len, batch), seq_len, batch)

    mstep = config.mstep if config.mstep.budget() is not None else config.warm_start
    teacher_lines, teacher_size = teacher_projection(config, splits["warm_start"])
    model_name = (
        spec.path or f"scratch Llama ({spec.scratch.hidden_size} wide, {spec.scratch.num_layers} layers)"
    )
    evaluation = config.evaluation
    limit = f" ({evaluation.limit} problems each)" if evaluation.limit else ""
    return {
        "corpus": ", ".join(config.data.documents)
        or config.data.chunks
        or f"the bundled sample ({SAMPLE_CORPUS.name})",
        "model_name": model_name,
        "model": {**shape, "seq_len": seq_len},
        "teacher": config.teacher.file or "the base model, in-process",
        "teacher_size": teacher_size,
        "teacher_lines": teacher_lines,
        "token_counter": counter,
        "split_rule": f"document i by i mod {config.data.split.modulus}",
        "splits": {**sizes, "held_out": held_out},
        "extra_stages": [("base", "the base model with the latent tokens", model_name)],
        "warm_start_data_tokens": augmented and augmented["warm_start"],
        "bootstrap_data_tokens": augmented and augmented["bootstrap"],
        "warm_start_tokens": budget(config.warm_start, "warm_start"),
        "mstep_tokens": budget(mstep, "bootstrap"),
        "evaluation": f"{', '.join(evaluation.tasks)}{limit}, {evaluation.mode} mode"
        + (
            f"; ELBO(K) for K = {', '.join(map(str, evaluation.likelihood_k))}"
            if "likelihood" in evaluation.tasks
            else ""
        ),
    }


THOUGHT_RATIO = 2.3
"""Thought tokens per raw token of its chunk, for budgets given in epochs (METHOD section 4)."""


def teacher_projection(config: CorpusEMConfig, warm_start: list[Any]) -> tuple[list[str], str]:
    """The teacher's projected tokens and cost over the warm-start chunks, as ``synthesize --dry-run``
    projects them (the chunks go to a temporary file; nothing is sent)."""
    import tempfile

    from latent_thoughts.corpus import write_chunks
    from latent_thoughts.synthesis.stage import SynthesisRequest, project_run

    if config.teacher.base_model:
        return [], f"{len(warm_start):,} thoughts of at most {config.teacher.max_new_tokens} tokens (local)"
    with tempfile.TemporaryDirectory() as folder:
        chunks = Path(folder) / "chunks.parquet"
        write_chunks(warm_start, chunks)
        request = SynthesisRequest(
            chunks=chunks,
            teacher=Path(str(config.teacher.file)),
            out=Path(folder) / "thoughts.parquet",
            overrides=list(config.teacher.set),
            batch_api=config.teacher.batch_api,
        )
        projection = project_run(request)
    cost = projection.cost_batch if config.teacher.batch_api else projection.cost_online
    size = (
        f"{projection.items:,} requests, {projection.input_tokens:,} in + {projection.output_tokens:,} out tokens, "
        f"{cost:,.2f} {projection.prices.currency} ({'Batch API' if config.teacher.batch_api else 'online'})"
    )
    return ["teacher (as synthesize --dry-run):", *projection.lines()], size


# --- the experiment --------------------------------------------------------------------------------


class CorpusExperiment:
    """A real corpus's part of an EM run (see the module docstring)."""

    name = "corpus"
    config_class = CorpusEMConfig
    inherited = ("data", "base", "teacher", "warm_start", "eval_0")

    def prepare_stages(self, config: CorpusEMConfig, paths: RunPaths) -> list[Stage]:
        teacher = config.teacher.model_dump(mode="json")
        if config.teacher.file is not None:
            teacher["file_stamp"] = _file_stamp(Path(config.teacher.file))
        return [
            Stage(
                "data",
                [],
                data_config(config),
                {
                    "seed": config.data.chunking.seed,
                    "inputs": {"documents": config.data.documents or str(SAMPLE_CORPUS)},
                },
                lambda: prepare_data(config, paths),
                remove(paths.data / "warm_start", paths.data / "bootstrap", held_out_file(paths)),
            ),
            Stage(
                "base",
                ["data"],
                {"model": config.model.model_dump(mode="json"), "seed": config.seed},
                {"seed": config.seed, "inputs": {"model": config.model.path or "scratch"}},
                lambda: make_base_model(config, paths),
                remove(base_model(paths)),
            ),
            Stage(
                "teacher",
                ["data", "base"] if config.teacher.base_model else ["data"],
                {**teacher, "device": config.device, "dtype": config.dtype}
                if config.teacher.base_model
                else teacher,
                {"seed": None, "inputs": {"teacher": str(teacher_path(config, paths))}},
                lambda: run_teacher(config, paths),
                # the synthesis cache stays: its keys name the teacher and the prompts
                remove(paths.teacher_thoughts("warm_start")),
            ),
        ]

    def training_config(self, config: CorpusEMConfig, paths: RunPaths, t: int) -> Any:
        from latent_thoughts.train import TrainConfig

        thoughts = paths.teacher_thoughts("warm_start") if t == 0 else paths.samples(t)
        chunks = paths.chunks("warm_start" if t == 0 else "bootstrap")
        training = config.training
        values: dict[str, Any] = {
            "output_dir": str(paths.train_dir(t)),
            "seed": config.seed,
            "model": {"path": str(base_model(paths))},
            "data": {
                "sources": [{"kind": "thoughts", "chunks": str(chunks), "thoughts": str(thoughts)}],
                "format": training.format.model_dump(mode="json"),
            },
            "budget": config.warm_start.model_dump(mode="json", exclude_none=True),
            "optim": training.optim.model_dump(mode="json"),
            "precision": training.precision,
            "logging_steps": training.logging_steps,
            "save_steps": training.save_steps,
            "progress_bar": config.progress,
        }
        return TrainConfig.model_validate(apply_mstep(values, config, paths, t))

    def training_upstream(self, config: CorpusEMConfig, t: int) -> list[str]:
        return ["base", "teacher"] if t == 0 else ["base"]

    def rephrase_teacher(self, config: CorpusEMConfig, paths: RunPaths) -> tuple[Path, list[str]]:
        """The warm start's teacher (the base model's file is written by the teacher stage)."""
        if config.teacher.base_model and not teacher_file(paths).exists():
            write_base_teacher(config, paths)
        return teacher_path(config, paths), list(config.teacher.set)

    def sample_metrics(self, config: CorpusEMConfig, samples: Path) -> dict[str, Any]:
        return {}  # no checker for real text: the bound, ESS and lengths come from the E-step itself

    def evaluation_config(self, config: CorpusEMConfig) -> dict[str, Any]:
        return {
            **config.evaluation.model_dump(mode="json"),
            "seed": config.seed,
            "estep_context_tokens": config.estep.context_tokens,
            "estep_max_thought_tokens": config.estep.max_thought_tokens,
        }

    def evaluation_inputs(self, config: CorpusEMConfig, paths: RunPaths, model: Path) -> dict[str, Any]:
        return {
            "model": str(model),
            "tasks": list(config.evaluation.tasks),
            "held_out": str(held_out_file(paths)),
        }

    def evaluate(
        self, config: CorpusEMConfig, paths: RunPaths, model: Path, out: Path, mode: str | None
    ) -> StageResult:
        return run_evaluation(config, paths, model, out, mode or config.evaluation.mode)

    def summarize(self, config: CorpusEMConfig, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return summarize(config, stages)

    def summary_table(self, summary: dict[str, Any]) -> list[str]:
        return summary_table(summary)

    def plan_sizes(self, config: CorpusEMConfig) -> dict[str, Any]:
        return plan_sizes(config)


EXPERIMENT = CorpusExperiment()
register_experiment(EXPERIMENT)
