"""Public-benchmark task files -> the records of `records` (RetrievalSet, McItem, OeItem).

Supported formats (`load_task_file(path, kind)`):

    msrvtt_retrieval  JSON list (or JSON Lines) of {"video_id" | "video", "caption": str | [str, ...]};
                      several entries per video are merged. -> RetrievalSet, one entry per caption
    didemo_retrieval  JSON list (or JSON Lines) of {"video" | "video_id", "description" | "caption"},
                      several sentences per video. -> RetrievalSet with one caption per video: its
                      sentences joined in file order (paragraph-to-video, as VIOLET evaluates DiDeMo)
    tgif_frame        TGIF-QA FrameQA table: gif_name, question, answer (+ optional type). -> [OeItem]
    tgif_mc           TGIF-QA Action/Transition table: gif_name, question, a1..a5, answer (0-based
                      index into a1..a5; + optional type). -> [McItem]
    msrvtt_qa         MSRVTT-QA / MSVD-QA JSON list of {"question", "answer", "video_id" | "video"}. -> [OeItem]

Tables have a header row and are tab- or comma-separated (detected from the header); extra columns
are ignored. Video ids become cache keys through `key_format`, a `str.format` template with the
placeholders {video_id} (the id as stored: int ids stay ints, so "{video_id:05d}" works) and {noext}
(the id without a file extension, for DiDeMo's "....mp4" names), e.g. "video{video_id}" for
MSRVTT-QA's integer ids or "videos/{video_id}".

With `keep` (the cached keys), only records of cached videos are returned; if a file has records but
none of their keys is cached, that is almost always a wrong `key_format`, so it is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .records import (McItem, OeItem, RetrievalSet, TaskDataError, build_record, key_of_path, read_csv_rows,
                      read_json, read_jsonl, read_text, require, short_repr)

TASK_KINDS = ("msrvtt_retrieval", "didemo_retrieval", "tgif_frame", "tgif_mc", "msrvtt_qa")
TGIF_OPTION_COLUMNS = ("a1", "a2", "a3", "a4", "a5")

Records = RetrievalSet | list[McItem] | list[OeItem]


def format_key(key_format: str, video_id: str | int, where: str = "") -> str:
    """The cache key of `video_id` under `key_format` (see the module docstring for placeholders).

    `where` (file and row) prefixes the error, since a spec like "{video_id:05d}" may fail on one row only.
    """
    try:
        return key_format.format(video_id=video_id, noext=key_of_path(str(video_id)))
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        prefix = f"{where}: " if where else ""
        raise TaskDataError(f"{prefix}key_format {key_format!r} cannot format video id {short_repr(video_id)} "
                            f"({type(error).__name__}: {error}); placeholders are {{video_id}} and {{noext}}"
                            ) from None


def _json_entries(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, object) per entry of a JSON list, or per line of a JSON Lines file."""
    text = read_text(path)
    if not text.lstrip().startswith("["):
        return read_jsonl(path, text)
    entries = []
    for i, entry in enumerate(read_json(path, text)):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict):
            raise TaskDataError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        entries.append((where, entry))
    return entries


def _texts(value: Any, name: str, where: str) -> list[str]:
    """A caption field that may be one string or a list of strings -> non-empty stripped strings."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise TaskDataError(f"{where}: field '{name}' is an empty list")
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise TaskDataError(f"{where}: field '{name}' must hold non-empty strings, got {short_repr(v)}")
    return [v.strip() for v in values]


def _kept(path: Path, items: list, keep: set[str] | None) -> list:
    """The items whose video is cached; an error when a non-empty file matches no cached key."""
    _check_keep(path, [i.key for i in items], keep)
    return [i for i in items if keep is None or i.key in keep]


def _check_keep(path: Path, keys: list[str], keep: set[str] | None) -> None:
    if keep is not None and keys and not any(k in keep for k in keys):
        example = f" (e.g. {short_repr(next(iter(sorted(keep))))})" if keep else ""
        raise TaskDataError(f"{path}: none of its {len(set(keys))} video keys (e.g. {keys[0]!r}) is in the "
                            f"cache{example}; check key_format")


def _grouped_captions(path: Path, key_format: str, id_fields: tuple[str, ...],
                      text_fields: tuple[str, ...]) -> dict[str, list[str]]:
    """Captions per cache key, keys in first-appearance order, captions in file order."""
    grouped: dict[str, list[str]] = {}
    for where, entry in _json_entries(path):
        key = format_key(key_format, require(entry, id_fields, where, (str, int)), where)
        name = next((n for n in text_fields if n in entry), None)
        if name is None:
            raise TaskDataError(f"{where}: missing field {' or '.join(repr(n) for n in text_fields)}")
        grouped.setdefault(key, []).extend(_texts(entry[name], name, where))
    return grouped


def load_msrvtt_retrieval(path: Path | str, key_format: str = "{video_id}", keep: set[str] | None = None,
                          split: str | None = None) -> RetrievalSet:
    """MSRVTT-style retrieval: every caption is a query; videos in first-appearance order.

    `split` names the set (default: the file's stem, e.g. "msrvtt_test_1k").
    """
    path = Path(path)
    grouped = _grouped_captions(path, key_format, ("video_id", "video"), ("caption",))
    _check_keep(path, list(grouped), keep)
    videos = list(grouped)
    captions = [(c, i) for i, v in enumerate(videos) for c in grouped[v]]
    full = build_record(str(path), RetrievalSet, split=split or path.stem, videos=videos,
                        captions=[c for c, _ in captions], caption_to_video=[i for _, i in captions])
    return full.restrict(keep)


def msrvtt_train_pairs(path: Path | str, key_format: str = "{video_id}",
                       keep: set[str] | None = None) -> list[tuple[str, str]]:
    """(key, caption) per caption of an MSRVTT-style retrieval file, grouped by video."""
    return load_msrvtt_retrieval(path, key_format, keep).pairs()


def load_didemo_retrieval(path: Path | str, key_format: str = "{video_id}", keep: set[str] | None = None,
                          split: str | None = None) -> RetrievalSet:
    """DiDeMo paragraph-to-video retrieval: one caption per video, its sentences joined by spaces."""
    path = Path(path)
    grouped = _grouped_captions(path, key_format, ("video", "video_id"), ("description", "caption"))
    _check_keep(path, list(grouped), keep)
    videos = list(grouped)
    full = build_record(str(path), RetrievalSet, split=split or path.stem, videos=videos,
                        captions=[" ".join(grouped[v]) for v in videos], caption_to_video=list(range(len(videos))))
    return full.restrict(keep)


def load_tgif_frame(path: Path | str, key_format: str = "{video_id}", keep: set[str] | None = None,
                    default_type: str = "frame") -> list[OeItem]:
    """TGIF-QA FrameQA open-ended items; `type` comes from a "type" column when the table has one."""
    path = Path(path)
    items = []
    for where, row in read_csv_rows(path, ("gif_name", "question", "answer")):
        items.append(build_record(where, OeItem, answer=require(row, "answer", where),
                                  **_tgif_fields(row, where, key_format, default_type)))
    return _kept(path, items, keep)


def load_tgif_mc(path: Path | str, key_format: str = "{video_id}", keep: set[str] | None = None,
                 default_type: str = "mc") -> list[McItem]:
    """TGIF-QA Action/Transition multiple-choice items (five options a1..a5, 0-based answer)."""
    path = Path(path)
    items = []
    for where, row in read_csv_rows(path, ("gif_name", "question", *TGIF_OPTION_COLUMNS, "answer")):
        answer = require(row, "answer", where)
        try:
            index = int(answer)
        except ValueError:
            raise TaskDataError(f"{where}: answer {answer!r} is not an option index") from None
        items.append(build_record(where, McItem, options=tuple(row[c] for c in TGIF_OPTION_COLUMNS), answer=index,
                                  **_tgif_fields(row, where, key_format, default_type)))
    return _kept(path, items, keep)


def _tgif_fields(row: dict, where: str, key_format: str, default_type: str) -> dict[str, str]:
    """The fields every TGIF-QA row has: key (from gif_name), question, and type."""
    return {"key": format_key(key_format, require(row, "gif_name", where), where),
            "question": require(row, "question", where), "type": row.get("type") or default_type}


def load_msrvtt_qa(path: Path | str, key_format: str = "{video_id}", keep: set[str] | None = None,
                   default_type: str = "qa") -> list[OeItem]:
    """MSRVTT-QA / MSVD-QA open-ended items; `type` from a "type" or "category_id" field if present."""
    path = Path(path)
    items = []
    for where, entry in _json_entries(path):
        video_id = require(entry, ("video_id", "video"), where, (str, int))
        answer = require(entry, "answer", where, (str, int))  # a few answers are bare numbers
        kind = next((entry[n] for n in ("type", "category_id") if entry.get(n) not in (None, "")), default_type)
        items.append(build_record(where, OeItem, key=format_key(key_format, video_id, where),
                                  question=require(entry, "question", where), answer=str(answer),
                                  type=str(kind)))
    return _kept(path, items, keep)


_LOADERS: dict[str, Callable[..., Records]] = {
    "msrvtt_retrieval": load_msrvtt_retrieval,
    "didemo_retrieval": load_didemo_retrieval,
    "tgif_frame": load_tgif_frame,
    "tgif_mc": load_tgif_mc,
    "msrvtt_qa": load_msrvtt_qa,
}


def load_task_file(path: Path | str, kind: str, key_format: str = "{video_id}",
                   keep: set[str] | None = None) -> Records:
    """Records of a benchmark file of format `kind` (one of TASK_KINDS).

    Returns a RetrievalSet for the retrieval kinds, a list of McItem for tgif_mc and a list of OeItem
    for tgif_frame and msrvtt_qa.
    """
    loader = _LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"unknown task kind {kind!r}; expected one of: {', '.join(TASK_KINDS)}")
    return loader(path, key_format, keep)
