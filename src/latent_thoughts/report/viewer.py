"""The HTML thought viewer: a run's documents with their chunks and thoughts interleaved.

:func:`viewer_section` turns a run folder into one self-contained HTML fragment (its own ``<style>``,
the data as ``<script type="application/json">`` and plain JavaScript, nothing fetched) that the
report page embeds, or that :func:`viewer_page` wraps into a page of its own. What it shows, all
read from the run's files:

- every **source of thoughts** of the run (:func:`find_sources`): an ``em`` run's warm-start
  teacher thoughts and each iteration's E-step samples, found through ``manifest.json``; a demo or
  ``synthesize`` folder's ``thoughts/*.parquet`` over its ``chunks.parquet``, and the E-step samples
  of its subfolders (the demo's ``estep/samples.parquet``);
- each chunk with its thought in the place the training format puts it (METHOD section 2, module
  :mod:`latent_thoughts.format`): before the chunk in the prior layout, after it in the posterior
  layout. The layout is a seeded draw per chunk (:func:`~latent_thoughts.format.choose_layout`)
  under the format of the training run that reads the file (its ``data.format``); one draw holds
  for the whole run unless that format sets ``redraw_layouts``, which draws anew on every pass: the
  viewer then says so and shows either position on a toggle;
- for an E-step, each chunk's K samples with log q, log p, log w, the normalised weight, the one
  the run selected, and which one every other selection policy would select;
- on testbed text, the checker's verdict on every thought and on each of its arithmetic claims
  (:mod:`latent_thoughts.testbed.checker`), computed here, not in the browser.

The page filters by source (iteration), selection policy, validity and document, searches the
chunk texts and thoughts, and shows 50 chunks a page, so an E-step of 10,000 chunks stays quick
(``bench/viewer_scale.py`` measures it). The embedded data is columnar: per chunk file, arrays of
document index, chunk index and text; per source, arrays aligned with them (:func:`viewer_data`
documents the keys).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import FormatConfig, Layout, choose_layout

VIEWER_ID = "lt-viewer"
"""The id of the viewer's element; its data is in ``VIEWER_ID + "-data"``."""

PAGE_SIZE = 50
"""Chunks shown per page."""

DIGITS = 4
"""Decimals kept of the log-probabilities and weights in the embedded data."""


@dataclass(frozen=True)
class Layouts:
    """Where the thoughts of a file go in training: the format of the training run reading the file
    (``trained_by``, a path relative to the run; None when no training run in the folder reads it,
    and the default format is shown)."""

    format: FormatConfig
    trained_by: str | None


@dataclass
class ThoughtSource:
    """One file of thoughts over one chunk file.

    ``kind`` is ``teacher`` (one thought per chunk: a synthesis output or the testbed's warm-start
    thoughts) or ``estep`` (K samples per chunk, :data:`latent_thoughts.em.stage.SAMPLE_SCHEMA`);
    ``chunks`` is None for an E-step output whose chunk file is unknown (its rows carry the text).
    """

    name: str
    kind: str
    thoughts: Path
    chunks: Path | None
    iteration: int | None = None
    layouts: Layouts = field(default_factory=lambda: Layouts(FormatConfig(), None))


# --- finding the thoughts of a run ------------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _relocate(path: str | Path, recorded_root: str | None, run: Path) -> Path:
    """``path`` as a manifest records it (inside the run folder the manifest calls ``recorded_root``),
    read from ``run`` where the run folder was moved or copied since and ``run`` holds that file."""
    path = Path(path)
    if recorded_root is None:
        return path
    try:
        inside = run / path.relative_to(recorded_root)
    except ValueError:
        return path
    return inside if inside.exists() else path


def _same_file(recorded: Path, actual: Path, run: Path) -> bool:
    """Whether a path written in a training configuration names ``actual`` (a relative one may be
    relative to another working folder: its trailing parts are then compared with ``actual``'s
    path inside ``run``)."""
    if recorded.exists():
        return recorded.resolve() == actual.resolve()
    if recorded.is_absolute():
        return False
    try:
        inside = actual.resolve().relative_to(run.resolve()).parts
    except ValueError:
        return False
    return len(recorded.parts) >= len(inside) and recorded.parts[-len(inside) :] == inside


def _trainings(run: Path, manifest: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(name, configuration) of every training run of the folder: the manifest's stages with a
    ``data`` section, else the ``train_config.yaml`` the trainer writes and the YAML files in ``run``."""
    found: list[tuple[str, dict[str, Any]]] = []
    if manifest is not None:
        for name, record in manifest.get("stages", {}).items():
            config = record.get("config")
            if isinstance(config, dict) and isinstance(config.get("data"), dict):
                found.append((name, config))
        return found
    paths = [*sorted(run.glob("*.yaml")), *sorted(run.glob("*/train_config.yaml"))]
    paths += sorted(run.glob("*/*/train_config.yaml"))
    for path in paths:
        config = _read_yaml(path)
        if isinstance(config, dict) and isinstance(config.get("data"), dict):
            found.append((str(path.relative_to(run)), config))
    return found


def _layouts_of(
    thoughts: Path, trainings: list[tuple[str, dict[str, Any]]], run: Path, recorded_root: str | None
) -> Layouts:
    """The format of the first training run whose ``thoughts`` sources include the file."""
    for name, config in trainings:
        sources = config["data"].get("sources") or []
        for source in sources:
            if not isinstance(source, dict) or source.get("kind") != "thoughts" or not source.get("thoughts"):
                continue
            if _same_file(_relocate(source["thoughts"], recorded_root, run), thoughts, run):
                try:
                    fmt = FormatConfig.model_validate(config["data"].get("format") or {})
                except ValueError:
                    continue
                return Layouts(fmt, name)
    return Layouts(FormatConfig(), None)


def _columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except OSError as exc:
        raise LatentThoughtsError(f"{path}: not a readable Parquet file ({exc})") from None


def _em_sources(run: Path, manifest: dict[str, Any]) -> list[ThoughtSource]:
    """The warm start's thoughts and every E-step's samples of an ``em`` run, from its manifest."""
    recorded_root = (manifest.get("config") or {}).get("out")
    trainings = _trainings(run, manifest)
    sources: list[ThoughtSource] = []
    seen: set[Path] = set()
    stages = manifest.get("stages", {})
    estep_outputs = {
        _relocate(record["outputs"]["samples"], recorded_root, run).resolve()
        for record in stages.values()
        if isinstance(record.get("outputs"), dict) and "samples" in record["outputs"]
    }
    for name, record in stages.items():
        inputs, outputs = record.get("inputs") or {}, record.get("outputs") or {}
        if "samples" in outputs:
            samples = _relocate(outputs["samples"], recorded_root, run)
            chunks = _relocate(inputs["chunks"], recorded_root, run) if inputs.get("chunks") else None
            match = re.fullmatch(r"estep_(\d+)", name)
            iteration = int(match.group(1)) if match else None
            if samples.exists() and samples.resolve() not in seen:
                seen.add(samples.resolve())
                label = f"iteration {iteration}" if iteration is not None else name
                layouts = _layouts_of(samples, trainings, run, recorded_root)
                sources.append(
                    ThoughtSource(f"{label}: E-step samples", "estep", samples, chunks, iteration, layouts)
                )
        trained_on = inputs.get("data")
        for data in trained_on if isinstance(trained_on, list) else []:
            if not isinstance(data, dict) or data.get("kind") != "thoughts" or not data.get("thoughts"):
                continue
            thoughts = _relocate(data["thoughts"], recorded_root, run)
            if not thoughts.exists() or thoughts.resolve() in seen or thoughts.resolve() in estep_outputs:
                continue
            seen.add(thoughts.resolve())
            chunks = _relocate(data["chunks"], recorded_root, run) if data.get("chunks") else None
            iteration = 0 if name == "warm_start" else None
            label = (
                "iteration 0: warm-start teacher thoughts" if iteration == 0 else f"{name}: teacher thoughts"
            )
            layouts = _layouts_of(thoughts, trainings, run, recorded_root)
            sources.append(ThoughtSource(label, "teacher", thoughts, chunks, iteration, layouts))
    return sorted(sources, key=lambda source: (source.iteration is None, source.iteration or 0))


def _folder_sources(run: Path) -> list[ThoughtSource]:
    """The thoughts files of a folder without a manifest: ``thoughts/*.parquet`` (synthesis outputs,
    the demo's oracle thoughts) over ``chunks.parquet``, and the E-step samples of every subfolder
    (``iter_*/samples.parquet``, the demo's ``estep/samples.parquet``), over the ``chunks.parquet``
    beside them or else the folder's."""
    trainings = _trainings(run, None)
    sources: list[ThoughtSource] = []
    candidates = sorted((run / "thoughts").glob("*.parquet"))
    candidates += sorted(
        run.glob("*/samples.parquet"), key=lambda path: (_iteration_of(path) or 0, str(path))
    )
    for path in candidates:
        if path.name.endswith(".failures.parquet") or ".shard-" in path.name:
            continue
        columns = _columns(path)
        if "thought" not in columns:
            continue  # a rephrasing output: no thoughts to show
        chunks = path.parent / "chunks.parquet"
        if not chunks.exists():
            chunks = run / "chunks.parquet"
        iteration = _iteration_of(path)
        layouts = _layouts_of(path, trainings, run, None)
        if "samples" in columns:
            label = (
                f"iteration {iteration}: E-step samples"
                if iteration is not None
                else f"{path.parent.name}: E-step samples"
            )
            known = chunks if chunks.exists() else None
            sources.append(ThoughtSource(label, "estep", path, known, iteration, layouts))
        elif chunks.exists():
            sources.append(
                ThoughtSource(f"teacher thoughts: {path.stem}", "teacher", path, chunks, None, layouts)
            )
    return sources


def _iteration_of(path: Path) -> int | None:
    match = re.fullmatch(r"iter_(\d+)", path.parent.name)
    return int(match.group(1)) if match else None


def find_sources(run: str | Path) -> list[ThoughtSource]:
    """Every file of thoughts in the run folder ``run``, in iteration order (see the module docstring);
    an ``em`` run's come from its ``manifest.json``."""
    run = Path(run)
    if not run.is_dir():
        raise LatentThoughtsError(f"{run}: not a run folder")
    manifest_path = run / "manifest.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LatentThoughtsError(f"{manifest_path}: not a readable manifest ({exc})") from None
        if isinstance(manifest, dict) and isinstance(manifest.get("stages"), dict):
            return _em_sources(run, manifest)
    return _folder_sources(run)


# --- the data the page embeds -----------------------------------------------------------------------


def _utf16(text: str, offsets: list[int]) -> list[int]:
    """Character offsets in ``text`` as the UTF-16 offsets JavaScript strings index by."""
    if text.isascii() or all(ord(char) < 0x10000 for char in text):
        return offsets
    return [len(text[:offset].encode("utf-16-le")) // 2 for offset in offsets]


def _round(value: float | None, digits: int = DIGITS) -> float | None:
    """``value`` to ``digits`` decimals; None for a missing or non-finite one (JSON has no infinity)."""
    return None if value is None or not math.isfinite(value) else round(value, digits)


class _Checker:
    """The testbed checker over thoughts of one chunk file, or nothing when the text is not the
    testbed's (a chunk it cannot read)."""

    def __init__(self, texts: list[str]) -> None:
        from latent_thoughts.testbed.checker import chunk_results

        self.applies = bool(texts)
        for text in texts:
            try:
                chunk_results(text)
            except LatentThoughtsError:
                self.applies = False
                break

    def verdict(self, thought: str | None, chunk: str) -> tuple[int | None, list[int] | None]:
        """(1 valid / 0 invalid, claims as flat ``[start, end, true, ...]`` in UTF-16 offsets), or
        (None, None) where the checker does not apply or there is no thought."""
        from latent_thoughts.testbed.checker import check_thought, find_claims

        if not self.applies or thought is None:
            return None, None
        claims = find_claims(thought)
        spans = _utf16(thought, [offset for claim in claims for offset in (claim.start, claim.end)])
        flat: list[int] = []
        for number, claim in enumerate(claims):
            flat += [spans[2 * number], spans[2 * number + 1], int(claim.true)]
        return int(check_thought(thought, chunk).valid), flat


def _chunk_columns(chunks: Iterable[tuple[str, int, str]]) -> dict[str, Any]:
    """(doc_id, chunk_index, text) triples as the viewer's columns: the documents in order of first
    appearance, and per chunk its document's index, its chunk index and its text."""
    docs: dict[str, int] = {}
    d, i, x = [], [], []
    for doc_id, chunk_index, text in chunks:
        d.append(docs.setdefault(doc_id, len(docs)))
        i.append(chunk_index)
        x.append(text)
    return {"docs": list(docs), "d": d, "i": i, "x": x}


def _chunk_file(path: Path) -> dict[str, Any]:
    from latent_thoughts.corpus import iter_chunks

    return _chunk_columns((chunk.doc_id, chunk.chunk_index, chunk.text) for chunk in iter_chunks(path))


def _chunk_file_of_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks an E-step output names, in its order, when the chunk file is unknown."""
    return _chunk_columns((row["doc_id"], row["chunk_index"], row["text"] or "") for row in rows)


def _layout_data(layouts: Layouts, files: dict[str, Any]) -> dict[str, Any]:
    fmt = layouts.format
    data: dict[str, Any] = {
        "mode": "redrawn" if fmt.redraw_layouts else "fixed",
        "seed": fmt.seed,
        "post": fmt.posterior_probability,
        "by": layouts.trained_by,
    }
    if not fmt.redraw_layouts:
        docs = files["docs"]
        data["c"] = "".join(
            "q" if choose_layout(fmt.seed, docs[d], i, fmt.posterior_probability) is Layout.POSTERIOR else "p"
            for d, i in zip(files["d"], files["i"], strict=True)
        )
    return data


def _note(entry: Any) -> str | None:
    """What the viewer says of a chunk's thought (a :class:`~latent_thoughts.synthesis.view.ChunkThought`,
    None when the file does not answer the chunk): why there is none, or that it was cut."""
    if entry is None:
        return "no thought yet"
    if entry.thought is None:
        return f"{'✗ ' if entry.failed else ''}no thought: {entry.note}"
    return "cut at the token limit" if entry.cut else None


def _teacher_data(source: ThoughtSource, files: dict[str, Any], checker: _Checker) -> dict[str, Any]:
    from latent_thoughts.synthesis.stage import read_output_tables
    from latent_thoughts.synthesis.view import chunk_thoughts

    results, failures = read_output_tables(source.thoughts)
    entries = chunk_thoughts(results, failures)
    docs = files["docs"]
    thoughts: list[str | None] = []
    notes: list[str | None] = []
    valid: list[int | None] = []
    claims: list[list[int] | None] = []
    for d, i, text in zip(files["d"], files["i"], files["x"], strict=True):
        entry = entries.get((docs[d], i))
        thought = entry.thought if entry is not None else None
        thoughts.append(thought)
        notes.append(_note(entry))
        verdict, spans = checker.verdict(thought, text)
        valid.append(verdict)
        claims.append(spans)
    return {"t": thoughts, "note": notes, "v": valid, "cl": claims}


def _policy_choices(
    rows: list[dict[str, Any] | None],
    texts: list[str],
    docs: list[str],
    d: list[int],
    i: list[int],
    seed: int | None,
) -> dict[str, list[int]]:
    """Which sample every registered selection policy would select per chunk (-1: none, or no
    samples); a policy that cannot read the run's chunks (the checker off the testbed) is left out."""
    from latent_thoughts.em.selection import Candidates, policy_names, select

    if seed is None:
        return {}
    choices: dict[str, list[int]] = {}
    for name in policy_names():
        picked: list[int] = []
        try:
            for row, text, doc, index in zip(rows, texts, (docs[k] for k in d), i, strict=True):
                if row is None or not row["samples"]:
                    picked.append(-1)
                    continue
                chosen = select(name, Candidates(doc, index, text, row["samples"], row["log_w"]), seed)
                picked.append(-1 if chosen is None else chosen)
        except LatentThoughtsError:
            continue
        choices[name] = picked
    return choices


def _estep_data(
    source: ThoughtSource, rows: list[dict[str, Any]], files: dict[str, Any], checker: _Checker
) -> dict[str, Any]:
    from latent_thoughts.em.selection import softmax
    from latent_thoughts.generation.outputs import read_metadata

    metadata = read_metadata(source.thoughts)
    by_key = {(row["doc_id"], row["chunk_index"]): row for row in rows}
    docs = files["docs"]
    aligned = [by_key.get((docs[d], i)) for d, i in zip(files["d"], files["i"], strict=True)]
    names = ("s", "q", "p", "w", "nw", "sv", "scl", "ess", "b", "tok", "fin")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row, text in zip(aligned, files["x"], strict=True):
        if row is None:
            for column in columns.values():
                column.append(None)
            continue
        try:
            normalised = softmax(row["log_w"])
        except LatentThoughtsError:  # every log w -inf, or one NaN: no weights to show
            normalised = [math.nan] * len(row["log_w"])
        verdicts = [checker.verdict(sample, text) for sample in row["samples"]]
        values = {
            "s": row["samples"],
            "q": [_round(value) for value in row["log_q"]],
            "p": [_round(value) for value in row["log_p"]],
            "w": [_round(value) for value in row["log_w"]],
            "nw": [_round(value, 6) for value in normalised],
            "sv": [verdict for verdict, _ in verdicts] if checker.applies else None,
            "scl": [spans for _, spans in verdicts] if checker.applies else None,
            "ess": _round(row["ess"]),
            "b": _round(row["log_mean_w"]),
            "tok": row["sample_tokens"],
            # per sample: s closed by EOL, l cut at the thought budget
            "fin": "".join("s" if reason == "stop" else "l" for reason in row["finish_reasons"]),
        }
        for name in names:
            columns[name].append(values[name])
    run_policy = str(metadata.get("policy") or "the run's")
    seed = (metadata.get("sampling") or {}).get("seed")
    choices = _policy_choices(aligned, files["x"], docs, files["d"], files["i"], seed)
    choices[run_policy] = [-1 if row is None else int(row["chosen"]) for row in aligned]  # the file's own
    policies = [run_policy, *sorted(name for name in choices if name != run_policy)]
    return {
        "k": max((len(row["samples"]) for row in rows), default=0),
        "run": run_policy,
        "pols": policies,
        "sel": [choices[name] for name in policies],
        **columns,
    }


def _read_samples(path: Path) -> list[dict[str, Any]]:
    from latent_thoughts.tables import open_parquet

    wanted = [
        "doc_id",
        "chunk_index",
        "chosen",
        "samples",
        "sample_tokens",
        "finish_reasons",
        "log_q",
        "log_p",
        "log_w",
        "ess",
        "log_mean_w",
        "text",
    ]
    return list(open_parquet(path, "E-step samples", wanted).read(columns=wanted).to_pylist())


def _relative(path: Path, run: Path) -> str:
    try:
        return str(path.resolve().relative_to(run.resolve()))
    except ValueError:
        return str(path)


def _mean(values: list[float]) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else None


def _stats(entry: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and means of one source for the viewer's table: chunks with a thought (or samples),
    thoughts kept, the checker's share of valid (selected) thoughts, and for an E-step the mean
    ESS and bound over its rows (``rows``, unrounded: the means ``samples.summary.json`` holds)."""
    if entry["kind"] == "teacher":
        verdicts = [value for value in entry["v"] if value is not None]
        return {
            "chunks": len(entry["t"]),
            "thoughts": sum(thought is not None for thought in entry["t"]),
            "valid": sum(verdicts) / len(verdicts) if verdicts else None,
        }
    chosen = entry["sel"][0]
    verdicts = [
        valid[pick]
        for valid, pick in zip(entry["sv"], chosen, strict=True)
        if valid is not None and pick >= 0 and valid[pick] is not None
    ]
    return {
        "chunks": len(rows),
        "thoughts": sum(pick >= 0 for pick in chosen),
        "valid": sum(verdicts) / len(verdicts) if verdicts else None,
        "ess": _mean([row["ess"] for row in rows]),
        "bound": _mean([row["log_mean_w"] for row in rows]),
    }


def viewer_data(run: str | Path) -> dict[str, Any] | None:
    """What the viewer embeds for the run folder ``run``, or None when it has no thoughts.

    ``{"page": PAGE_SIZE, "files": [...], "sources": [...]}``. A chunk file is
    ``{"docs": [doc_id, ...], "d": [document index per chunk], "i": [chunk_index], "x": [text]}``.
    A source is ``{"name", "kind", "file" (relative to the run), "it" (iteration or null), "f"
    (index of its chunk file), "lay" (layouts: "mode" fixed or redrawn, format "seed", "post" (the
    posterior probability), "by" (the training run, null: none here, default format) and, when
    fixed, "c": one letter per chunk, p prior or q posterior), "checker" (whether the testbed
    checker applies), "stats"}`` plus arrays aligned with the chunk file's chunks (null: the source
    has nothing for that chunk):

    - ``teacher``: "t" thought, "note" why there is none (or that it was cut), "v" checker verdict
      (1, 0), "cl" claims as flat ``[start, end, true, ...]`` (UTF-16 offsets into the thought);
    - ``estep``: "k", "run" (the policy the run selected with), "pols" (policies, the run's first)
      and "sel" (per policy, the selected sample per chunk, -1 for none; the run's is the file's
      ``chosen``), per chunk "s" samples, "q" log q, "p" log p, "w" log w, "nw" normalised weights,
      "sv" verdicts, "scl" claims (per sample, as for a teacher), "ess", "b" (log mean w, the
      chunk's bound), "tok" thought tokens, "fin" one letter per sample (s: closed by EOL, l: cut
      at the thought budget).
    """
    from latent_thoughts.synthesis.view import check_same_chunks

    run = Path(run)
    sources = find_sources(run)
    if not sources:
        return None
    files: list[dict[str, Any]] = []
    file_index: dict[Path, int] = {}
    checkers: list[_Checker] = []
    entries: list[dict[str, Any]] = []
    for source in sources:
        rows = _read_samples(source.thoughts) if source.kind == "estep" else []
        if source.chunks is not None:
            check_same_chunks(source.chunks, source.thoughts)
            key = source.chunks.resolve()
            if key not in file_index:
                file_index[key] = len(files)
                files.append(_chunk_file(source.chunks))
                checkers.append(_Checker(files[-1]["x"]))
            f = file_index[key]
        else:
            f = len(files)
            files.append(_chunk_file_of_rows(rows))
            checkers.append(_Checker(files[-1]["x"]))
        entry: dict[str, Any] = {
            "name": source.name,
            "kind": source.kind,
            "file": _relative(source.thoughts, run),
            "it": source.iteration,
            "f": f,
            "lay": _layout_data(source.layouts, files[f]),
            "checker": checkers[f].applies,
        }
        if source.kind == "estep":
            entry.update(_estep_data(source, rows, files[f], checkers[f]))
        else:
            entry.update(_teacher_data(source, files[f], checkers[f]))
        entry["stats"] = _stats(entry, rows)
        entries.append(entry)
    return {"page": PAGE_SIZE, "files": files, "sources": entries}


# --- HTML -------------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("latent_thoughts.report").joinpath(name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """``data`` as compact JSON that is safe inside ``<script type="application/json">`` (no ``<``,
    so no ``</script>`` or ``<!--`` can end the element early)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def section_html(data: dict[str, Any]) -> str:
    """The viewer fragment over ``data`` (:func:`viewer_data`), without a heading of its own (the page
    around it gives one)."""
    return (
        f'<section id="{VIEWER_ID}" class="lt-viewer">\n'
        f"<style>\n{_asset('viewer.css')}</style>\n"
        f"<noscript><p>The thought viewer needs JavaScript.</p></noscript>\n"
        f'<div class="lt-root"></div>\n'
        f'<script type="application/json" id="{VIEWER_ID}-data">{embed_json(data)}</script>\n'
        f"<script>\n{_asset('viewer.js')}</script>\n"
        "</section>\n"
    )


def viewer_section(run: Path) -> str | None:
    """The thought viewer of the run folder ``run`` as one self-contained HTML fragment (style, data
    and script, nothing fetched), or None when the run has no thoughts."""
    data = viewer_data(run)
    return None if data is None else section_html(data)


def viewer_page(run: Path, title: str | None = None) -> str | None:
    """The viewer of ``run`` as a whole HTML page (``latent-thoughts view``), or None without thoughts."""
    section = viewer_section(run)
    if section is None:
        return None
    heading = html.escape(title or f"Thoughts of {Path(run).name}")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{heading}</title>\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "</head>\n<body>\n"
        f'<h1 style="font: 600 1.5em system-ui, sans-serif">{heading}</h1>\n'
        f"{section}</body>\n</html>\n"
    )
