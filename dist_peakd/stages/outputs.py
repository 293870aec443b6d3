"""Where the model-folder commands (evaluate, predict, export) may write: never over what they read, never
over what is not their own.

Every output path is checked before any work (:class:`~dist_peakd.errors.ConfigError`, exit 2, naming the
option, the path and what was expected), so a refused command writes nothing:

* an output never equals an input (the model folder, ``--input``, the data files, the GLUE split files),
  is never an ancestor of one (nor of the tokenization cache or the current directory), and is never
  inside the model folder;
* a file output (``evaluate --out``, ``predict --out``) is not an existing folder;
* ``export --out`` is a new folder (an empty one counts as new) or one a previous ``dist-peakd export``
  of the same format wrote, holding only the files its manifest lists: that folder is replaced; any
  other existing folder or file is refused, whatever it holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..export import RECORD_FILE
from ..integrity import EXPORT_MANIFEST

#: Kinds of inputs: an output may not be inside the folder of a ``"folder"`` input (the model folder);
#: a ``"file"`` input may hold outputs beside it (a data folder); ``"area"``: only its ancestors are refused.
_KINDS = ("folder", "file", "area")


def command_inputs(opts: Any) -> list[tuple[str, Path, str]]:
    """``(what, path, kind)`` of everything a model-folder command reads (see :data:`_KINDS`)."""
    from ..data import default_glue_dir, get_task, is_glue_name

    inputs: list[tuple[str, Path, str]] = [("the model folder (--model_dir)", Path(opts.model_dir), "folder")]
    for name in ("input", "train_file", "dev_file", "test_file"):
        if getattr(opts, name, None):
            inputs.append((f"the --{name} file", Path(getattr(opts, name)), "file"))
    if is_glue_name(opts.task) and not opts.hub_dataset:
        task = get_task(opts.task)
        folder = Path(opts.glue_dir) if opts.glue_dir else default_glue_dir()
        inputs += [(f"the {split} file of {task.name}", folder / task.folder / f"{split}.tsv", "file")
                   for split in task.splits]
    if opts.hub_dataset and Path(opts.hub_dataset).exists():
        inputs.append(("the --hub_dataset folder", Path(opts.hub_dataset), "file"))
    inputs.append(("the tokenization cache", opts.layout().token_cache, "area"))
    try:
        inputs.append(("the current directory", Path.cwd(), "area"))
    except OSError:  # it was removed: nothing of it to protect
        pass
    return inputs


def _overlap(option: str, given: str, out: Path, inputs: Iterable[tuple[str, Path, str]]) -> None:
    for what, path, kind in inputs:
        path = path.resolve()
        if out == path and kind != "area":
            raise ConfigError(f"option {option}: {given!r} is {what}, an input of this command ({path}); "
                              "write elsewhere")
        if out == path or out in path.parents:
            where = what if out == path else f"a folder above {what}"
            raise ConfigError(f"option {option}: {given!r} is {where} ({path}); writing there would replace it; "
                              "write elsewhere")
        if kind == "folder" and path in out.parents:
            raise ConfigError(f"option {option}: {given!r} is inside {what} ({path}), an input of this command; "
                              "write elsewhere")


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def check_output_file(option: str, given: str, inputs: Iterable[tuple[str, Path, str]]) -> None:
    """Refuse a file output that is a folder, sits below a file, or overlaps an input (ConfigError)."""
    out = Path(given).resolve()
    if out.is_dir():
        raise ConfigError(f"option {option}: {given!r} is a folder; expected a file name")
    above = _nearest_existing(out.parent)
    if not above.is_dir():
        raise ConfigError(f"option {option}: {above} is a file, not a folder; cannot write {given!r} below it")
    _overlap(option, given, out, inputs)


def check_export_folder(option: str, given: str, fmt: str, inputs: Iterable[tuple[str, Path, str]]) -> None:
    """Refuse an export folder that overlaps an input or holds anything but a previous ``fmt`` export."""
    out = Path(given).resolve()
    _overlap(option, given, out, inputs)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"option {option}: {given!r} is a file; expected a new folder (or a previous "
                          f"`dist-peakd export --format {fmt}` folder, which is replaced)")
    above = _nearest_existing(out)
    if not above.is_dir():
        raise ConfigError(f"option {option}: {above} is a file, not a folder; cannot write {given!r} below it")
    if out.is_dir() and any(out.iterdir()):
        _check_previous_export(option, given, out, fmt)


def _check_previous_export(option: str, given: str, out: Path, fmt: str) -> None:
    expected = (f"expected a new folder, or one a previous `dist-peakd export --format {fmt}` wrote "
                "(it is then replaced)")
    record, files = _read_json(out / RECORD_FILE), _read_json(out / EXPORT_MANIFEST)
    export = record.get("export") if isinstance(record, dict) else None
    listed = files.get("files") if isinstance(files, dict) else None
    if not isinstance(export, dict) or not isinstance(listed, dict):
        raise ConfigError(f"option {option}: {given!r} already exists and is not a folder `dist-peakd export` "
                          f"wrote (no {RECORD_FILE} with an export record, or no {EXPORT_MANIFEST}); nothing in it "
                          f"is replaced: {expected}")
    if export.get("format") != fmt:
        raise ConfigError(f"option {option}: {given!r} holds a `dist-peakd export --format {export.get('format')}` "
                          f"export, not --format {fmt}; {expected}")
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if not p.is_dir() and p.relative_to(out).as_posix() not in {*listed, EXPORT_MANIFEST})
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(f"option {option}: {given!r} holds a previous {fmt} export plus files it did not write "
                          f"({foreign[0]!r}{more}); replacing it would delete them: move them out, or give a new "
                          "folder")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
