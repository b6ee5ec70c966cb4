"""The one guard every verb's run goes through before any work: nothing it reads is written over.

A verb declares once what a run reads and writes (:class:`RunPaths`, returned by its ``run_paths``
function, which :func:`latent_thoughts.cli.main` checks with :func:`check_run` before calling the
verb's handler). :func:`check_outputs` holds the rules; a broken one is a one-line
:class:`LatentThoughtsError` naming the culprit:

- an output may not be an input (the same file, through a link or another spelling), nor a file
  read from an input folder;
- an output may not be, or sit inside, an input model folder; and no input may sit inside a folder
  the run writes its model files into (``replaced``: a trainer's ``model/`` and ``checkpoints/``);
- two outputs of one run may not land on the same path;
- a file output may not be a folder, a device, a FIFO or a socket (writing there would not create a
  file, or would replace something that is not one); a folder output may not be a file;
- every output must be creatable (a read-only file system, no permission, a file where a folder
  is needed), found before hours of work rather than after.

Nothing is created by the check. :func:`folder_lock` keeps two runs from writing one folder at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from latent_thoughts.errors import LatentThoughtsError

PathLike = str | Path

LOCK_NAME = ".latent-thoughts.lock"
"""The hidden file :func:`folder_lock` locks inside an output folder."""


@dataclass(frozen=True)
class RunPaths:
    """What one run of a verb reads and writes, declared once by the verb (None entries are ignored).

    ``inputs``: files and folders read; ``models``: model (or tokenizer) folders read, which no output
    may be or sit inside; ``files``: files written; ``folders``: folders written into (give the files
    written there under ``files`` too); ``replaced``: folders the run fills with model files or clears
    (no input may sit inside one); ``flag``: the option named in messages.
    """

    inputs: Sequence[PathLike | None] = ()
    models: Sequence[PathLike | None] = ()
    files: Sequence[PathLike | None] = ()
    folders: Sequence[PathLike | None] = ()
    replaced: Sequence[PathLike | None] = ()
    flag: str = "--out"


def check_run(paths: RunPaths) -> None:
    """Check a run's declared paths (:func:`check_outputs`)."""
    check_outputs(
        inputs=paths.inputs,
        models=paths.models,
        files=paths.files,
        folders=paths.folders,
        replaced=paths.replaced,
        flag=paths.flag,
    )


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _within(path: Path, folder: Path) -> bool:
    """Whether resolved ``path`` is ``folder`` or lies under it."""
    return path == folder or path.is_relative_to(folder)


def _present(items: Iterable[PathLike | None]) -> list[Path]:
    return [Path(item) for item in items if item is not None and str(item) != ""]


def _clash(output: Path, inputs: Iterable[PathLike | None]) -> Path | None:
    """The input that ``output`` would overwrite: the same file, or a file read from an input folder."""
    target = _resolved(output)
    for item in inputs:
        if item is None:
            continue
        source = _resolved(item)
        if target == source:
            return Path(item)
        if source.is_dir() and target.is_relative_to(source) and target.is_file():
            return Path(item) / target.relative_to(source)
    return None


def _kind(path: Path) -> str | None:
    """What is at ``path`` (links followed): ``file``, ``folder``, another kind's name, or None."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # no permission to look, a loop of links: the writability checks say more
        return "file"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _creatable_under(path: Path, flag: str) -> None:
    """Raise unless a file can be created at ``path`` (its folders may not exist yet)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LatentThoughtsError(f"{flag} {path}: cannot create it, {ancestor} is a file, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".latent-thoughts-probe-", dir=ancestor)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LatentThoughtsError(f"{flag} {path}: cannot write in {ancestor} ({reason})") from None
    os.close(descriptor)
    os.unlink(probe)


def _check_models(outputs: Sequence[Path], models: Sequence[Path], flag: str) -> None:
    """No output is an input model folder or lies inside one."""
    for model in models:
        folder = _resolved(model)
        if not folder.is_dir():
            continue  # a hub name or an engine file: nothing on disk to overwrite
        for output in outputs:
            if _within(_resolved(output), folder):
                raise LatentThoughtsError(
                    f"{flag} {output}: is (or is inside) the input model folder {model}; writing it would "
                    "overwrite the model, choose another path"
                )


def _check_replaced(replaced: Sequence[Path], inputs: Sequence[Path], flag: str) -> None:
    """No input lies in a folder the run fills with model files (or clears)."""
    for folder in replaced:
        target = _resolved(folder)
        for item in inputs:
            if _within(_resolved(item), target):
                raise LatentThoughtsError(
                    f"{flag}: the run writes model files into {folder}, where its input {item} is; "
                    "choose another path"
                )


def _check_collisions(outputs: Sequence[Path], flag: str) -> None:
    """No two outputs of the run on one path."""
    seen: dict[Path, Path] = {}
    for output in outputs:
        key = _resolved(output)
        if key in seen:
            raise LatentThoughtsError(
                f"{flag} {output}: two outputs of this run would be written there ({seen[key]} and {output})"
            )
        seen[key] = output


ENGINE_FILE_KEYS = (("transformers", "model"), ("transformers", "tokenizer"), ("tokenizer",))
"""Where an engine file (``MODEL`` given as ``*.yaml``) names the folders it reads."""


def engine_file_folders(path: Path) -> list[Path]:
    """The model and tokenizer folders an engine file names (none for a folder, or a file that is not
    a readable engine file: reading it properly is the engine's job, with its own one-line errors)."""
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return []
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return []
    found = []
    for keys in ENGINE_FILE_KEYS:
        value: object = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            found.append(Path(value))
    return found


def check_outputs(
    *,
    inputs: Iterable[PathLike | None] = (),
    files: Iterable[PathLike | None] = (),
    folders: Iterable[PathLike | None] = (),
    models: Iterable[PathLike | None] = (),
    replaced: Iterable[PathLike | None] = (),
    flag: str = "--out",
) -> None:
    """Check a run's outputs before it starts; a problem is a one-line :class:`LatentThoughtsError`.

    ``inputs`` are the files and folders the run reads (None entries are ignored), ``models`` the
    model folders among them; ``files`` the files it writes, ``folders`` the folders it writes into
    (give the files it writes there under ``files`` too, so that they are checked against the
    inputs), ``replaced`` the folders it fills with model files or clears. ``flag`` names the option
    in messages. The rules are the module's.
    """
    input_paths = _present(inputs)
    named = _present(models)
    model_paths = [*named, *(folder for path in named for folder in engine_file_folders(path))]
    file_paths = _present(files)
    folder_paths = _present(folders)
    replaced_paths = _present(replaced)
    outputs = [*file_paths, *folder_paths, *replaced_paths]
    _check_collisions(outputs, flag)
    _check_models(outputs, model_paths, flag)
    _check_replaced(replaced_paths, [*input_paths, *model_paths], flag)
    for path in [*folder_paths, *replaced_paths]:
        kind = _kind(path)
        if kind == "file":
            raise LatentThoughtsError(f"{flag} {path}: is a file; give a folder")
        if kind not in (None, "folder"):
            raise LatentThoughtsError(f"{flag} {path}: is a {kind}, not a folder; give a folder")
        _creatable_under(path / "probe", flag)
    for path in file_paths:
        clash = _clash(path, [*input_paths, *model_paths])
        if clash is not None:
            raise LatentThoughtsError(
                f"{flag} {path}: is also an input ({clash}); writing it would overwrite the input, choose another path"
            )
        kind = _kind(path)
        if kind == "folder":
            raise LatentThoughtsError(f"{flag} {path}: is a folder; give a file path")
        if kind not in (None, "file"):
            raise LatentThoughtsError(
                f"{flag} {path}: is a {kind}, not a regular file; it would be replaced, give a file path"
            )
        if kind == "file" and not os.access(path, os.W_OK):
            raise LatentThoughtsError(f"{flag} {path}: exists and is not writable")
        _creatable_under(path, flag)


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block (its hidden :data:`LOCK_NAME` file).

    The folder is created. When another run holds the lock, this is a one-line error at once, never a
    wait; ``what`` names the verb in it. The lock goes with the process (a killed run leaves none).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "wb")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LatentThoughtsError(
                f"{flag} {folder}: another {what} is writing there now; wait for it to end or choose another folder"
            ) from None
        yield
    finally:
        handle.close()
