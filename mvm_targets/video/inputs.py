"""Turn command-line inputs into a list of `VideoItem(key, path, captions)`.

Accepted inputs: a folder (searched recursively by extension), a text file of paths, or a
CSV/TSV with a path column (`path`, `video`, `video_path`, `file`) or WebVid's `videoid` (with an
optional `page_dir`), plus optional caption columns (`caption*`, `name`, `text`, `sentence`).
A key is the video's path relative to its folder / list file (or to an explicit `root`), without
the extension, so the same dataset gets the same keys on every machine. An entry that lies outside
that folder has no such key: it is an error, as are two inputs that give one key two paths or two
different caption sets. Rows of one table that repeat a video add captions to it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from mvm_targets.errors import InputError
from mvm_targets.names import check_name

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                    ".gif", ".3gp", ".ogv")
PATH_COLUMNS = ("path", "video", "video_path", "filepath", "file", "filename")
CAPTION_COLUMNS = ("caption", "captions", "name", "text", "sentence", "title")
LIST_SUFFIXES = (".txt", ".lst", ".list")
TABLE_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class VideoItem:
    key: str  # stable id: relative path without extension, posix separators
    path: Path
    captions: tuple[str, ...] = ()


def discover_inputs(inputs: Sequence[Path], video_root: Path | None = None) -> list[VideoItem]:
    """Expand every input and merge them; raise InputError on a key collision.

    `video_root`: the folder that relative entries of lists and tables refer to and that their keys
    are relative to (default: each list's own folder).
    """
    per_input: list[list[VideoItem]] = []
    for raw in inputs:
        source = Path(raw)
        if source.is_dir():
            per_input.append(list(_scan_folder(source)))
        elif not source.exists():
            raise InputError(f"{source}: no such file or folder")
        elif source.suffix.lower() in TABLE_SUFFIXES:
            per_input.append(_merge_rows(_read_table(source, video_root)))
        elif source.suffix.lower() in LIST_SUFFIXES:
            per_input.append(_merge_rows(_read_list(source, video_root)))
        elif source.suffix.lower() in VIDEO_EXTENSIONS:
            per_input.append([VideoItem(source.stem, source)])
        else:
            raise InputError(f"{source}: not a folder, a video, a path list ({'/'.join(LIST_SUFFIXES)}) "
                             f"or a table ({'/'.join(TABLE_SUFFIXES)})")
    return _merge_inputs(per_input)


def default_dataset_name(inputs: Sequence[Path]) -> str:
    """The cache's dataset name when none is given: the input folder's (or list file's folder's) name.

    Inputs from several folders have no natural name (the first one's would silently name them all),
    so they are an error asking for --dataset.
    """
    folders = {_absolute(Path(i)) if Path(i).is_dir() else _absolute(Path(i)).parent for i in inputs}
    if len(folders) > 1:
        shown = ", ".join(str(f) for f in sorted(folders)[:3])
        raise InputError(f"--dataset: the inputs lie in {len(folders)} folders ({shown}); name their dataset "
                         "with --dataset")
    folder = folders.pop()
    return check_name(folder.name or "default", f"--dataset (default: the name of {folder})")


def check_default_dataset(items: Sequence[VideoItem], dataset: str, known: Mapping[str, Mapping]) -> None:
    """A defaulted dataset name must not fall on a dataset made from another input.

    `known` is the dataset's manifest ({key: {"path", "captions"}}). Two tables in one folder both
    default to the folder's name; without this check the second would be merged into the first.
    """
    mine = {item.key for item in items}
    foreign = [key for key in known if key not in mine]
    if foreign:
        example = foreign[0]
        raise InputError(f"--dataset defaults to '{dataset}', which already holds {len(foreign)} video(s) this "
                         f"input does not list (e.g. '{example}' from {known[example].get('path')}); pass "
                         f"--dataset NAME for a dataset of its own, or --dataset {dataset} to add to that one")


def _absolute(path: Path) -> Path:
    """Absolute and normalised without following symlinks: a symlinked video folder stays inside its root."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _key_for(path: Path, root: Path, where: str, explicit_root: bool) -> str:
    absolute, base = _absolute(path), _absolute(root)
    try:
        relative = absolute.relative_to(base)
    except ValueError:
        if explicit_root:
            raise InputError(f"{where}: {path} lies outside --root {base}; keys are paths relative to it") from None
        raise InputError(f"{where}: {path} lies outside {base}, the folder its keys are relative to (keys must "
                         "not depend on the machine); pass --root with a folder that holds every video (relative "
                         "entries are then read from it too)") from None
    return str(PurePosixPath(*relative.parts).with_suffix(""))


def _scan_folder(folder: Path) -> Iterable[VideoItem]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith("."):
            yield VideoItem(str(PurePosixPath(*path.relative_to(folder).parts).with_suffix("")), path)


def _read_list(list_file: Path, video_root: Path | None) -> Iterable[VideoItem]:
    root = video_root or list_file.parent
    for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry) if Path(entry).is_absolute() else root / entry
            yield VideoItem(_key_for(path, root, f"{list_file}:{line_number}", video_root is not None), path)


def _read_table(table: Path, video_root: Path | None) -> Iterable[VideoItem]:
    root = video_root or table.parent
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        path_column = next((c for c in PATH_COLUMNS if c in columns), None)
        if path_column is None and "videoid" not in columns:
            raise InputError(f"{table}: no path column; expected one of {', '.join(PATH_COLUMNS)} or WebVid's "
                             f"'videoid' (found: {', '.join(columns) or 'nothing'})")
        caption_columns = [c for c in columns if c in CAPTION_COLUMNS or c.startswith("caption")]
        for line_number, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if path_column is not None:
                if not row[path_column]:
                    raise InputError(f"{table}:{line_number}: empty '{path_column}'")
                path = Path(row[path_column])
                path = path if path.is_absolute() else root / path
            else:
                path = _webvid_path(root, row.get("page_dir", ""), row["videoid"])
            captions = tuple(row[c] for c in caption_columns if row.get(c))
            yield VideoItem(_key_for(path, root, f"{table}:{line_number}", video_root is not None), path, captions)


def _webvid_path(root: Path, page_dir: str, video_id: str) -> Path:
    folders = [root / page_dir, root] if page_dir else [root]
    for folder in folders:
        for extension in VIDEO_EXTENSIONS:
            candidate = folder / f"{video_id}{extension}"
            if candidate.exists():
                return candidate
    return folders[0] / f"{video_id}.mp4"  # reported as FileNotFound by the decoder, not here


def _merge_rows(items: Iterable[VideoItem]) -> list[VideoItem]:
    """Rows of one list or table: a video listed again adds its captions; two files with one key collide."""
    merged: dict[str, VideoItem] = {}
    for item in items:
        seen = merged.get(item.key)
        if seen is None:
            merged[item.key] = item
        elif _absolute(seen.path) == _absolute(item.path):
            captions = seen.captions + tuple(c for c in item.captions if c not in seen.captions)
            merged[item.key] = VideoItem(item.key, seen.path, captions)
        else:
            raise _collision(seen, item)
    return list(merged.values())


def _merge_inputs(per_input: list[list[VideoItem]]) -> list[VideoItem]:
    """Several inputs: one key must name one file with one caption set; an input without captions
    (a folder, a path list) adds nothing to the captions another input gives."""
    merged: dict[str, VideoItem] = {}
    for items in per_input:
        for item in items:
            seen = merged.get(item.key)
            if seen is None:
                merged[item.key] = item
            elif _absolute(seen.path) != _absolute(item.path):
                raise _collision(seen, item)
            elif seen.captions and item.captions and set(seen.captions) != set(item.captions):
                raise InputError(f"key '{item.key}' ({item.path}) has different captions in two inputs "
                                 f"({shorten_captions(seen.captions)} and {shorten_captions(item.captions)}); "
                                 "a video has one caption set: list all its captions in one table")
            elif item.captions and not seen.captions:
                merged[item.key] = item
    return list(merged.values())


def _collision(seen: VideoItem, item: VideoItem) -> InputError:
    return InputError(f"key collision: '{item.key}' names both {seen.path} and {item.path}; "
                      "rename one of them or pass them as separate inputs with distinct folders")


def shorten_captions(captions: Iterable[str], limit: int = 60) -> str:
    """Captions as one short quoted line, for error messages."""
    text = " | ".join(captions).replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")
