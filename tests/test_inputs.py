"""Input discovery: folders, path lists, CSV tables (generic and WebVid), keys and collisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm_targets.errors import InputError
from mvm_targets.video.inputs import default_dataset_name, discover_inputs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_is_searched_recursively_and_keys_are_relative_paths_without_extension(tmp_path):
    touch(tmp_path / "vids" / "a.mp4")
    touch(tmp_path / "vids" / "sub" / "b.MKV")
    touch(tmp_path / "vids" / "notes.txt")
    items = discover_inputs([tmp_path / "vids"])
    assert sorted(i.key for i in items) == ["a", "sub/b"]
    assert default_dataset_name([tmp_path / "vids"]) == "vids"


def test_path_list_resolves_relative_to_the_list_file(tmp_path):
    touch(tmp_path / "data" / "x" / "c.mp4")
    (tmp_path / "data" / "list.txt").write_text("# comment\nx/c.mp4\n\n")
    [item] = discover_inputs([tmp_path / "data" / "list.txt"])
    assert item.key == "x/c" and item.path == tmp_path / "data" / "x" / "c.mp4"


def test_generic_csv_merges_repeated_rows_into_captions(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "t.csv").write_text("path,caption\nv/a.mp4,a dog runs\nv/a.mp4,a dog is running\n")
    [item] = discover_inputs([tmp_path / "t.csv"])
    assert item.key == "v/a" and item.captions == ("a dog runs", "a dog is running")


def test_webvid_csv_finds_videos_by_id_and_page_dir(tmp_path):
    touch(tmp_path / "000001_000050" / "1066.mp4")
    (tmp_path / "results_2M_val.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n1066,http://x,PT00H00M13S,000001_000050,aerial view of a lake\n")
    [item] = discover_inputs([tmp_path / "results_2M_val.csv"])
    assert item.key == "000001_000050/1066" and item.captions == ("aerial view of a lake",)
    assert item.path.exists()


def test_key_collision_is_an_error_naming_both_files(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    touch(tmp_path / "v" / "a.webm")
    with pytest.raises(InputError, match=r"key collision: 'a' names both .*a\.mp4 and .*a\.webm"):
        discover_inputs([tmp_path / "v"])


def test_table_without_path_column_says_what_it_expected(tmp_path):
    (tmp_path / "bad.csv").write_text("url,caption\nhttp://x,y\n")
    with pytest.raises(InputError, match=r"bad\.csv: no path column; expected one of path"):
        discover_inputs([tmp_path / "bad.csv"])


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(InputError, match="nowhere: no such file or folder"):
        discover_inputs([tmp_path / "nowhere"])
