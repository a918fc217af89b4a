"""Normalised downstream-task records, their loaders for the synthetic dataset layout, and the text
templates the model sees.

Every loader, here and in `adapters`, turns its input into one of three record types, so training and
evaluation code never looks at a file format:

    RetrievalSet  text-to-video retrieval: N_video keys, N_text captions, caption_to_video (N_text,)
    McItem        multiple-choice QA: one question, O options, the index of the right one
    OeItem        open-ended QA: one question, a free-text (normally one-word) answer

Synthetic layout (written by `mvm_targets.synth`), keys like "videos/clip_00000":

    splits.json      {"train": [keys], "val": [keys], "test": [keys]}   the authority on splits
    captions.csv     path,caption,split   (key = path without extension; several rows per key allowed)
    retrieval.json   {"split", "videos", "captions", "caption_to_video"} for one split
    qa_mc.jsonl      {"key", "split", "question", "options", "answer", "type"} per line
    qa_oe.jsonl      {"key", "split", "question", "answer", "type"} per line

Loaders take `keep`, the set of keys present in the frame cache, and return only records whose video
is in it. Malformed input raises `TaskDataError`, whose message is one line naming the file, the line
(or list entry) and the reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

ANSWER_PREFIX = "answer:"


class TaskDataError(ValueError):
    """Malformed or unusable task data; `str(error)` is one line: where, then why."""


# ---------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class RetrievalSet:
    """A text-to-video retrieval split: caption i describes video `caption_to_video[i]`.

    Shapes: videos (N_video,), captions (N_text,), caption_to_video (N_text,) ints in [0, N_video).
    Videos without a caption stay in the gallery as distractors.
    """

    split: str
    videos: list[str]
    captions: list[str]
    caption_to_video: list[int]

    def __post_init__(self) -> None:
        # Copies, so a caller mutating its own lists cannot corrupt a frozen record.
        object.__setattr__(self, "videos", list(self.videos))
        object.__setattr__(self, "captions", list(self.captions))
        object.__setattr__(self, "caption_to_video", list(self.caption_to_video))
        if len(self.captions) != len(self.caption_to_video):
            raise TaskDataError(f"{len(self.captions)} captions but {len(self.caption_to_video)} "
                                "caption_to_video entries")
        if len(set(self.videos)) != len(self.videos):
            duplicate = next(v for i, v in enumerate(self.videos) if v in self.videos[:i])
            raise TaskDataError(f"video '{duplicate}' is listed twice")
        for i, target in enumerate(self.caption_to_video):
            if not _is_int(target) or not 0 <= target < len(self.videos):
                raise TaskDataError(f"caption_to_video[{i}] = {target!r} is not a video index "
                                    f"in [0, {len(self.videos)})")

    @property
    def n_text(self) -> int:
        return len(self.captions)

    @property
    def n_video(self) -> int:
        return len(self.videos)

    def pairs(self) -> list[tuple[str, str]]:
        """(video key, caption) per caption, in caption order."""
        return [(self.videos[v], c) for c, v in zip(self.captions, self.caption_to_video)]

    def restrict(self, keep: set[str] | None) -> RetrievalSet:
        """The same split with only the videos in `keep` and their captions (indices renumbered)."""
        if keep is None:
            return self
        videos = [v for v in self.videos if v in keep]
        new_index = {v: i for i, v in enumerate(videos)}
        kept = [(c, new_index[self.videos[v]]) for c, v in zip(self.captions, self.caption_to_video)
                if self.videos[v] in new_index]
        return RetrievalSet(self.split, videos, [c for c, _ in kept], [v for _, v in kept])


@dataclass(frozen=True)
class McItem:
    """A multiple-choice question about video `key`; `options[answer]` is right. options: (O,), O >= 2."""

    key: str
    question: str
    options: tuple[str, ...]
    answer: int
    type: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        _check_text("key", self.key)
        _check_text("question", self.question)
        if len(self.options) < 2:
            raise TaskDataError(f"needs at least 2 options, got {len(self.options)}")
        for i, option in enumerate(self.options):
            _check_text(f"option {i}", option)
        if not _is_int(self.answer) or not 0 <= self.answer < len(self.options):
            raise TaskDataError(f"answer index {self.answer!r} out of range for {len(self.options)} options")


@dataclass(frozen=True)
class OeItem:
    """An open-ended question about video `key` with a free-text answer (one word in the benchmarks)."""

    key: str
    question: str
    answer: str
    type: str

    def __post_init__(self) -> None:
        _check_text("key", self.key)
        _check_text("question", self.question)
        _check_text("answer", self.answer)


def _is_int(value: Any) -> bool:
    # JSON true/false arrive as bool, a subclass of int; an answer of `true` is a data error.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise TaskDataError(f"{name} must be a non-empty string, got {short_repr(value)}")


# ---------------------------------------------------------------------------------------------------
# Text templates


def mc_text(question: str, option: str) -> str:
    """The text scored for one option: "what does the red square do? answer: moves left quickly"."""
    return f"{question.strip()} {ANSWER_PREFIX} {option.strip()}"


def oe_prompt(question: str, mask_token: str) -> str:
    """The open-ended QA input whose masked slot the MLM head fills: "question? answer: [MASK]"."""
    return f"{question.strip()} {ANSWER_PREFIX} {mask_token}"


# ---------------------------------------------------------------------------------------------------
# File reading shared with `adapters`: every failure becomes a one-line TaskDataError.

R = TypeVar("R")


def short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet exports often start with a BOM that would otherwise join the first header.
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TaskDataError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise TaskDataError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise TaskDataError(f"{path}: cannot read ({error.strerror or error})") from None


def read_json(path: Path, text: str | None = None) -> Any:
    """The parsed content of a JSON file (`text`: its content, when the caller has already read it)."""
    try:
        return json.loads(read_text(path) if text is None else text)
    except json.JSONDecodeError as error:
        raise TaskDataError(f"{path} line {error.lineno}: invalid JSON ({error.msg}, "
                            f"column {error.colno})") from None


def read_jsonl(path: Path, text: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(location, object) per non-blank line of a JSON Lines file; location is "<path> line <n>"."""
    rows = []
    for number, line in enumerate((read_text(path) if text is None else text).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskDataError(f"{where}: invalid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append((where, row))
    return rows


def read_csv_rows(path: Path, required: Sequence[str], delimiter: str | None = None,
                  ) -> list[tuple[str, dict[str, str]]]:
    """(location, row) per data row of a CSV/TSV file with a header; cells stripped.

    The delimiter, when not given, is a tab if the header line has one, else a comma (TGIF-QA ships
    tab-separated files named .csv). Missing `required` columns or a row with the wrong cell count raise TaskDataError.
    """
    text = read_text(path)
    header = text.split("\n", 1)[0]
    delimiter = delimiter or ("\t" if "\t" in header else ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in required if c not in columns]
    if missing:
        raise TaskDataError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(header has: {', '.join(columns) or 'nothing'})")
    rows = []
    try:
        for raw in reader:
            where = f"{path} line {reader.line_num}"
            # A wrong cell count means a delimiter or quoting problem: reading on would shift columns.
            if None in raw or any(v is None for v in raw.values()):
                got = len(columns) + len(raw.get(None) or ()) - sum(v is None for v in raw.values())
                raise TaskDataError(f"{where}: expected {len(columns)} cells, got {got}")
            rows.append((where, {k.strip(): v.strip() for k, v in raw.items()}))
    except csv.Error as error:
        raise TaskDataError(f"{path} line {reader.line_num}: malformed CSV ({error})") from None
    return rows


def require(row: Mapping[str, Any], names: str | Sequence[str], where: str,
            kind: type | tuple[type, ...] = str) -> Any:
    """The value of the first of `names` present in `row`, checked to be a `kind` (and non-empty if str)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    name = next((n for n in names if n in row), None)
    if name is None:
        raise TaskDataError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")
    value = row[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise TaskDataError(f"{where}: field '{name}' must be {wanted}, got {short_repr(value)}")
    if isinstance(value, str) and not value.strip():
        raise TaskDataError(f"{where}: field '{name}' is empty")
    return value


def build_record(where: str, record_type: type[R], **fields: Any) -> R:
    """`record_type(**fields)`, with its validation error prefixed by the location."""
    try:
        return record_type(**fields)
    except TaskDataError as error:
        raise TaskDataError(f"{where}: {error}") from None


def key_of_path(path: str) -> str:
    """The cache key of a video path: the relative path without its extension (as mvm_targets keys it)."""
    return str(PurePosixPath(path.replace("\\", "/")).with_suffix(""))


# ---------------------------------------------------------------------------------------------------
# Synthetic layout


def _read_splits(source_dir: Path) -> dict[str, list[str]]:
    path = Path(source_dir) / "splits.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise TaskDataError(f"{path}: expected an object mapping split names to key lists, "
                            f"got {type(data).__name__}")
    for name, keys in data.items():
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TaskDataError(f"{path}: split '{name}' must be a list of key strings")
    return data


def _split_keys(source_dir: Path, split: str) -> list[str]:
    splits = _read_splits(source_dir)
    if split not in splits:
        raise TaskDataError(f"{Path(source_dir) / 'splits.json'}: unknown split '{split}' "
                            f"(has: {', '.join(splits) or 'none'})")
    return splits[split]


def _check_qa_split(source_dir: Path, path: Path, split: str, file_splits: set[str]) -> None:
    """An unknown split is an error, so a typo cannot silently yield an empty task."""
    splits_path = Path(source_dir) / "splits.json"
    if splits_path.exists():
        _split_keys(source_dir, split)
    elif split not in file_splits:
        raise TaskDataError(f"{path}: unknown split '{split}' (has: {', '.join(sorted(file_splits)) or 'none'})")


def _read_captions(source_dir: Path) -> list[tuple[str, str]]:
    """(key, caption) per row of captions.csv, in file order."""
    path = Path(source_dir) / "captions.csv"
    pairs = []
    for where, row in read_csv_rows(path, ("path", "caption"), delimiter=","):
        if not row["path"]:
            raise TaskDataError(f"{where}: empty 'path'")
        if not row["caption"]:
            raise TaskDataError(f"{where}: empty 'caption'")
        pairs.append((key_of_path(row["path"]), row["caption"]))
    return pairs


def _retrieval_from_json(path: Path) -> RetrievalSet:
    data = read_json(path)
    if not isinstance(data, dict):
        raise TaskDataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    split = require(data, "split", str(path))
    videos = require(data, "videos", str(path), list)
    captions = require(data, "captions", str(path), list)
    targets = require(data, "caption_to_video", str(path), list)
    for name, values, kinds in (("videos", videos, str), ("captions", captions, str)):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, kinds) or not v.strip()), None)
        if bad is not None:
            raise TaskDataError(f"{path}: {name}[{bad}] must be a non-empty string, got {short_repr(values[bad])}")
    return build_record(str(path), RetrievalSet, split=split, videos=videos, captions=captions,
                        caption_to_video=targets)


def load_retrieval(source_dir: Path | str, split: str, keep: set[str] | None = None) -> RetrievalSet:
    """Text-to-video retrieval for `split`.

    Uses retrieval.json when its "split" is `split`; otherwise builds the set from captions.csv and
    splits.json: every video of the split (splits.json order) and every caption of those videos
    (captions.csv order). `keep` drops videos not cached, with their captions.
    """
    source_dir = Path(source_dir)
    json_path = source_dir / "retrieval.json"
    if json_path.exists():
        stored = _retrieval_from_json(json_path)
        if stored.split == split:
            return stored.restrict(keep)
    videos = _split_keys(source_dir, split)
    index = {k: i for i, k in enumerate(videos)}
    pairs = [(k, c) for k, c in _read_captions(source_dir) if k in index]
    built = build_record(str(source_dir / "splits.json"), RetrievalSet, split=split, videos=videos,
                         captions=[c for _, c in pairs], caption_to_video=[index[k] for k, _ in pairs])
    return built.restrict(keep)


def load_retrieval_train_pairs(source_dir: Path | str, split: str = "train",
                               keep: set[str] | None = None) -> list[tuple[str, str]]:
    """(key, caption) for every caption of every video in `split`, in captions.csv order.

    Split membership comes from splits.json, not from the csv's own split column.
    """
    source_dir = Path(source_dir)
    members = set(_split_keys(source_dir, split))
    return [(k, c) for k, c in _read_captions(source_dir)
            if k in members and (keep is None or k in keep)]


def load_qa_mc(source_dir: Path | str, split: str, keep: set[str] | None = None) -> list[McItem]:
    """Multiple-choice items of `split` from qa_mc.jsonl, in file order. Every line is validated."""
    return _load_qa(source_dir, "qa_mc.jsonl", split, keep, lambda row, where: build_record(
        where, McItem, options=tuple(require(row, "options", where, list)),
        answer=require(row, "answer", where, int), **_qa_fields(row, where)))


def load_qa_oe(source_dir: Path | str, split: str, keep: set[str] | None = None) -> list[OeItem]:
    """Open-ended items of `split` from qa_oe.jsonl, in file order. Every line is validated."""
    return _load_qa(source_dir, "qa_oe.jsonl", split, keep, lambda row, where: build_record(
        where, OeItem, answer=require(row, "answer", where), **_qa_fields(row, where)))


def _qa_fields(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {"key": require(row, "key", where), "question": require(row, "question", where),
            "type": require(row, "type", where)}


def _load_qa(source_dir: Path | str, filename: str, split: str, keep: set[str] | None,
             make: Callable[[Mapping[str, Any], str], R]) -> list[R]:
    """Every line of a synthetic QA file is validated (whatever its split); those of `split` are kept."""
    source_dir = Path(source_dir)
    path = source_dir / filename
    items, splits = [], set()
    for where, row in read_jsonl(path):
        row_split = require(row, "split", where)
        item = make(row, where)
        splits.add(row_split)
        if row_split == split:
            items.append(item)
    _check_qa_split(source_dir, path, split, splits)
    return [i for i in items if keep is None or i.key in keep]
