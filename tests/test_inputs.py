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


# ----------------------------------------------------------------------------------------------
# Portable keys, one caption set per key, default dataset names


def test_entries_outside_the_table_folder_are_an_error_naming_the_line(tmp_path):
    inside = touch(tmp_path / "data" / "v" / "a.mp4")
    outside = touch(tmp_path / "other" / "b.mp4")
    table = tmp_path / "data" / "t.csv"
    table.write_text(f"path,caption\n{inside},one\n{outside},two\n")
    with pytest.raises(InputError, match=rf"t\.csv:3: .*b\.mp4 lies outside .*data, the folder its keys are "
                                         r"relative to .*pass --root"):
        discover_inputs([table])
    relative = tmp_path / "data" / "r.csv"
    relative.write_text("path,caption\n../other/b.mp4,two\n")
    with pytest.raises(InputError, match=r"r\.csv:2: .*lies outside"):
        discover_inputs([relative])


def test_root_sets_where_entries_are_read_and_what_keys_are_relative_to(tmp_path):
    touch(tmp_path / "videos" / "x" / "a.mp4")
    outside = touch(tmp_path / "elsewhere" / "b.mp4")
    table = tmp_path / "meta" / "t.csv"
    table.parent.mkdir()
    table.write_text("path,caption\nx/a.mp4,one\n")
    [item] = discover_inputs([table], tmp_path / "videos")
    assert (item.key, item.path) == ("x/a", tmp_path / "videos" / "x" / "a.mp4")
    table.write_text(f"path,caption\n{outside},two\n")
    with pytest.raises(InputError, match=r"t\.csv:2: .*lies outside --root .*videos"):
        discover_inputs([table], tmp_path / "videos")
    [item] = discover_inputs([table], tmp_path)
    assert item.key == "elsewhere/b"


def test_path_list_entry_outside_its_folder_is_an_error(tmp_path):
    touch(tmp_path / "b.mp4")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "list.txt").write_text("../b.mp4\n")
    with pytest.raises(InputError, match=r"list\.txt:1: .*lies outside"):
        discover_inputs([tmp_path / "data" / "list.txt"])


def test_symlinked_video_folder_stays_inside_its_root(tmp_path):
    touch(tmp_path / "disk" / "a.mp4")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "videos").symlink_to(tmp_path / "disk")
    (tmp_path / "data" / "t.csv").write_text("path,caption\nvideos/a.mp4,one\n")
    [item] = discover_inputs([tmp_path / "data" / "t.csv"])
    assert item.key == "videos/a"
    assert [i.key for i in discover_inputs([tmp_path / "data" / "videos"])] == ["a"]


def test_two_inputs_giving_one_video_two_caption_sets_is_an_error(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "one.csv").write_text("path,caption\nv/a.mp4,a dog runs\n")
    (tmp_path / "two.csv").write_text("path,caption\nv/a.mp4,a cat sleeps\n")
    (tmp_path / "same.csv").write_text("path,caption\nv/a.mp4,a dog runs\n")
    with pytest.raises(InputError, match=r"key 'v/a' .* different captions in two inputs \('a dog runs' and "
                                         r"'a cat sleeps'\)"):
        discover_inputs([tmp_path / "one.csv", tmp_path / "two.csv"])
    [item] = discover_inputs([tmp_path / "one.csv", tmp_path / "same.csv"])
    assert item.captions == ("a dog runs",)
    # an input without captions (a path list) adds nothing to, and takes nothing from, the captions
    (tmp_path / "list.txt").write_text("v/a.mp4\n")
    [item] = discover_inputs([tmp_path / "list.txt", tmp_path / "one.csv"])
    assert item.captions == ("a dog runs",)


def test_default_dataset_name_needs_inputs_from_one_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("path\n")
    (tmp_path / "d" / "val.csv").write_text("path\n")
    (tmp_path / "e").mkdir()
    assert default_dataset_name([tmp_path / "d" / "train.csv", tmp_path / "d" / "val.csv"]) == "d"
    with pytest.raises(InputError, match="--dataset: the inputs lie in 2 folders"):
        default_dataset_name([tmp_path / "d", tmp_path / "e"])
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(InputError, match=r"--dataset \(default: the name of .*\): '\.hidden' must not start"):
        default_dataset_name([tmp_path / ".hidden"])


def test_a_defaulted_dataset_made_from_another_input_is_refused(tmp_path):
    from mvm_targets.video.inputs import VideoItem, check_default_dataset

    known = {"a": {"key": "a", "path": "d/a.mp4", "captions": ["x"]}}
    check_default_dataset([VideoItem("a", Path("d/a.mp4")), VideoItem("b", Path("d/b.mp4"))], "d", known)
    with pytest.raises(InputError, match=r"--dataset defaults to 'd', which already holds 1 video\(s\) this input "
                                         r"does not list \(e\.g\. 'a' from d/a\.mp4\)"):
        check_default_dataset([VideoItem("b", Path("d/b.mp4"))], "d", known)


def test_manifest_keeps_one_caption_set_per_key(tmp_path):
    from mvm_targets.store.manifest import read_manifest, update_manifest
    from mvm_targets.video.inputs import VideoItem

    manifest = tmp_path / "manifest.jsonl"
    assert update_manifest(manifest, [VideoItem("a", Path("v/a.mp4"), ("one", "two"))]) == 1
    recorded = manifest.read_text()
    with pytest.raises(InputError, match=r"key 'a' is recorded with other captions \('one \| two', now 'three'\)"):
        update_manifest(manifest, [VideoItem("a", Path("v/a.mp4"), ("three",))])
    assert manifest.read_text() == recorded
    # the same captions in another order are no conflict (recorded as given); none at all (a folder
    # input) keeps the recorded ones and writes nothing
    assert update_manifest(manifest, [VideoItem("a", Path("v/a.mp4"), ("two", "one"))]) == 1
    assert update_manifest(manifest, [VideoItem("a", Path("v/a.mp4"))]) == 0
    # the dataset moved: the new path is recorded, the captions kept
    assert update_manifest(manifest, [VideoItem("a", Path("/new/place/a.mp4"))]) == 1
    assert read_manifest(manifest)["a"] == {"key": "a", "path": "/new/place/a.mp4", "captions": ["two", "one"]}
