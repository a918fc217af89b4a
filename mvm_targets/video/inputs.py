"""Turn command-line inputs into a list of `VideoItem(key, path, captions)`.

Accepted inputs: a folder (searched recursively by extension), a text file of paths, or a
CSV/TSV with a path column (`path`, `video`, `video_path`, `file`) or WebVid's `videoid` (with an
optional `page_dir`), plus optional caption columns (`caption*`, `name`, `text`, `sentence`).
A key is the video's path relative to its folder / list file, without the extension.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from mvm_targets.errors import InputError

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
    """Expand every input and merge them; raise InputError on a key collision."""
    items: list[VideoItem] = []
    for raw in inputs:
        source = Path(raw)
        if source.is_dir():
            items.extend(_scan_folder(source))
        elif not source.exists():
            raise InputError(f"{source}: no such file or folder")
        elif source.suffix.lower() in TABLE_SUFFIXES:
            items.extend(_read_table(source, video_root))
        elif source.suffix.lower() in LIST_SUFFIXES:
            items.extend(_read_list(source, video_root))
        elif source.suffix.lower() in VIDEO_EXTENSIONS:
            items.append(VideoItem(source.stem, source))
        else:
            raise InputError(f"{source}: not a folder, a video, a path list ({'/'.join(LIST_SUFFIXES)}) "
                             f"or a table ({'/'.join(TABLE_SUFFIXES)})")
    return _merge(items)


def default_dataset_name(inputs: Sequence[Path]) -> str:
    """The cache's dataset name when none is given: the input folder's (or list file's folder's) name."""
    first = Path(inputs[0]).resolve()
    folder = first if first.is_dir() else first.parent
    return folder.name or "default"


def _key_for(path: Path, root: Path) -> str:
    try:
        relative = PurePosixPath(path.resolve().relative_to(root.resolve()))
    except ValueError:
        relative = PurePosixPath(*path.resolve().parts[1:])  # outside the root: absolute path, no leading '/'
    return str(relative.with_suffix(""))


def _scan_folder(folder: Path) -> Iterable[VideoItem]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith("."):
            yield VideoItem(_key_for(path, folder), path)


def _read_list(list_file: Path, video_root: Path | None) -> Iterable[VideoItem]:
    root = video_root or list_file.parent
    for line in list_file.read_text().splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry) if Path(entry).is_absolute() else root / entry
            yield VideoItem(_key_for(path, root), path)


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
            yield VideoItem(_key_for(path, root), path, captions)


def _webvid_path(root: Path, page_dir: str, video_id: str) -> Path:
    folders = [root / page_dir, root] if page_dir else [root]
    for folder in folders:
        for extension in VIDEO_EXTENSIONS:
            candidate = folder / f"{video_id}{extension}"
            if candidate.exists():
                return candidate
    return folders[0] / f"{video_id}.mp4"  # reported as FileNotFound by the decoder, not here


def _merge(items: list[VideoItem]) -> list[VideoItem]:
    """Repeated rows of one file merge their captions; two files with one key are an error."""
    merged: dict[str, VideoItem] = {}
    for item in items:
        seen = merged.get(item.key)
        if seen is None:
            merged[item.key] = item
        elif seen.path.resolve() == item.path.resolve():
            captions = seen.captions + tuple(c for c in item.captions if c not in seen.captions)
            merged[item.key] = VideoItem(item.key, seen.path, captions)
        else:
            raise InputError(f"key collision: '{item.key}' names both {seen.path} and {item.path}; "
                             "rename one of them or pass them as separate inputs with distinct folders")
    return list(merged.values())
