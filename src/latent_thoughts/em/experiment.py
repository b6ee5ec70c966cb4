"""What ``em`` asks of an experiment, and where experiments come from.

The loop (:mod:`latent_thoughts.em.loop`) knows the shape of the method: a warm start, then per
iteration an E-step, an M-step and an evaluation, each a recorded, resumable stage. It knows no world.
An :class:`Experiment` supplies what differs between a procedural testbed and a real corpus:

- the stages before the warm start (``prepare_stages``: the data; a teacher's thoughts; a base model),
- each training run's :class:`~latent_thoughts.train.TrainConfig` (``training_config``),
- what to measure of an E-step's samples
  (``sample_metrics``: a checker where the world has one),
- how a model is evaluated (``evaluation_config`` and ``evaluate``),
- the per-iteration summary and its table (``summarize`` and ``summary_table``),
- the plan's sizes (``plan_sizes``: chunk and token counts for ``em --plan``, without running anything).

Experiments are plug-ins: a module registers one with :func:`register_experiment` when it is
imported, and :func:`load_plugins` imports every module named in the ``latent_thoughts.plugins``
entry-point group (this package's ``pyproject.toml`` names its own: the testbed and the corpus
experiment), so another package adds an experiment, or a selection policy, without touching this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from latent_thoughts.errors import LatentThoughtsError

if TYPE_CHECKING:
    from latent_thoughts.em.config import EMConfig

PLUGIN_GROUP = "latent_thoughts.plugins"

StageResult = tuple[dict[str, Any], dict[str, Any]]
"""What a stage returns: its outputs (artifact paths) and its metrics."""


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
        """A split's chunk file (``warm_start``, ``bootstrap``, or an experiment's own split)."""
        return self.data / split / "chunks.parquet"

    def teacher_thoughts(self, split: str) -> Path:
        """The teacher's thoughts of a split."""
        return self.data / split / "thoughts.parquet"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

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

    def baseline(self, name: str) -> Path:
        """A baseline's folder: its training output ``train/`` and its ``eval.json``."""
        return self.root / "baselines" / name


class Experiment(Protocol):
    """The parts of an EM run that depend on its world (see the module docstring)."""

    @property
    def name(self) -> str:
        """``experiment:`` in a configuration."""
        ...

    @property
    def config_class(self) -> type[EMConfig]:
        """The experiment's configuration (an :class:`~latent_thoughts.em.config.EMConfig`)."""
        ...

    @property
    def inherited(self) -> tuple[str, ...]:
        """The stages a run with ``warm_start_from`` takes from that run (those it has)."""
        ...

    def prepare_stages(self, config: Any, paths: RunPaths) -> list[Stage]:
        """The stages before the warm start, in order (the first is ``data``)."""
        ...

    def training_config(self, config: Any, paths: RunPaths, t: int) -> Any:
        """The TrainConfig of iteration t's training (0: the warm start)."""
        ...

    def training_upstream(self, config: Any, t: int) -> list[str]:
        """Stages of ``prepare_stages`` that iteration t's training reads besides ``data``."""
        ...

    def rephrase_teacher(self, config: Any, paths: RunPaths) -> tuple[Path, list[str]]:
        """The teacher file (written under ``paths`` where the experiment makes one) and its overrides
        that rephrase the bootstrap documents for the WRAP baseline."""
        ...

    def sample_metrics(self, config: Any, samples: Path) -> dict[str, Any]:
        """What the experiment measures of an E-step's samples (empty where it has no checker)."""
        ...

    def evaluation_config(self, config: Any) -> dict[str, Any]:
        """The part of the configuration that decides an evaluation's result (for its fingerprint)."""
        ...

    def evaluation_inputs(self, config: Any, paths: RunPaths, model: Path) -> dict[str, Any]:
        """What the manifest records as an evaluation's inputs (the model, the problems)."""
        ...

    def evaluate(self, config: Any, paths: RunPaths, model: Path, out: Path, mode: str | None) -> StageResult:
        """Evaluate ``model`` in ``mode`` (``raw``: the latent tokens banned, for the raw baselines; None:
        the experiment's mode for a model trained on thoughts); writes ``out`` (an ``eval.json``)."""
        ...

    def summarize(self, config: Any, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The run's summary from the manifest's stage records."""
        ...

    def summary_table(self, summary: dict[str, Any]) -> list[str]:
        """The summary as Markdown lines."""
        ...

    def plan_sizes(self, config: Any) -> dict[str, Any]:
        """Sizes for ``em --plan`` known without running anything (documents, chunks, tokens)."""
        ...


_EXPERIMENTS: dict[str, Experiment] = {}
_loaded = False


def register_experiment(experiment: Experiment) -> None:
    """Make ``experiment`` selectable as ``experiment: NAME`` in an EM configuration."""
    known = _EXPERIMENTS.get(experiment.name)
    if known is not None and known is not experiment:
        raise LatentThoughtsError(f"experiment {experiment.name!r} is already registered")
    _EXPERIMENTS[experiment.name] = experiment


def load_plugins() -> None:
    """Import every module of the ``latent_thoughts.plugins`` entry-point group (once); importing a
    plug-in registers its experiments and selection policies."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=PLUGIN_GROUP):
        import_module(entry.value.split(":")[0])


def experiment_names() -> list[str]:
    """Every registered experiment's name, sorted."""
    load_plugins()
    return sorted(_EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown one is a one-line error listing the known ones."""
    load_plugins()
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        known = ", ".join(experiment_names()) or "none (is the package installed? pip install -e .)"
        raise LatentThoughtsError(f"unknown experiment {name!r}; choose one of {known}") from None
