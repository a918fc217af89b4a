"""Downstream task data: records and their loaders, public-benchmark adapters, retrieval / QA metrics."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets.synth import build_synthetic_dataset
from violet_core.downstream.adapters import (TASK_KINDS, format_key, load_didemo_retrieval, load_msrvtt_qa,
                                             load_msrvtt_retrieval, load_task_file, load_tgif_frame, load_tgif_mc,
                                             msrvtt_train_pairs)
from violet_core.downstream.metrics import (accuracy, chance_retrieval, mc_predictions, oe_accuracy,
                                            oe_answer_coverage, retrieval_metrics, retrieval_ranks)
from violet_core.downstream.records import (McItem, OeItem, RetrievalSet, TaskDataError, load_qa_mc, load_qa_oe,
                                            load_retrieval, load_retrieval_train_pairs, mc_text, oe_prompt)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _raises(match: str, call, *args, **kwargs) -> TaskDataError:
    """Assert a one-line TaskDataError whose message contains every '|'-separated part of `match`."""
    with pytest.raises(TaskDataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    for part in match.split("|"):
        assert part in message, (part, message)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return info.value


# ---------------------------------------------------------------------------------------------------
# Records


def test_records_are_frozen_and_validate_their_invariants():
    item = McItem("videos/a", "what?", ["x", "y", "z"], 2, "action")
    assert item.options == ("x", "y", "z")  # a list is stored as a tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.answer = 0  # type: ignore[misc]
    _raises("answer index 3 out of range for 3 options", McItem, "k", "q?", ("x", "y", "z"), 3, "t")
    _raises("answer index -1 out of range", McItem, "k", "q?", ("x", "y"), -1, "t")
    _raises("answer index True out of range", McItem, "k", "q?", ("x", "y"), True, "t")
    _raises("at least 2 options", McItem, "k", "q?", ("x",), 0, "t")
    _raises("answer must be a non-empty string", OeItem, "k", "q?", "  ", "t")
    _raises("caption_to_video[1] = 2 is not a video index in [0, 2)", RetrievalSet, "test", ["a", "b"],
            ["c0", "c1"], [0, 2])
    _raises("2 captions but 1 caption_to_video", RetrievalSet, "test", ["a"], ["c0", "c1"], [0])
    _raises("video 'a' is listed twice", RetrievalSet, "test", ["a", "b", "a"], [], [])


def test_retrieval_set_restrict_drops_uncached_videos_and_renumbers():
    full = RetrievalSet("val", ["a", "b", "c"], ["a0", "b0", "c0", "a1"], [0, 1, 2, 0])
    assert full.restrict(None) is full
    kept = full.restrict({"c", "a", "zzz"})
    assert kept == RetrievalSet("val", ["a", "c"], ["a0", "c0", "a1"], [0, 1, 0])
    assert kept.pairs() == [("a", "a0"), ("c", "c0"), ("a", "a1")]
    assert (kept.n_text, kept.n_video) == (3, 2)


def test_text_templates():
    assert mc_text("what does the red square do?", "moves left quickly") == \
        "what does the red square do? answer: moves left quickly"
    assert mc_text("  what?  ", " up ") == "what? answer: up"
    assert oe_prompt("which way does it move?", "[MASK]") == "which way does it move? answer: [MASK]"


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A hand-written synthetic layout: 5 videos, val video c has two captions (one with a comma)."""
    _write(tmp_path / "splits.json", json.dumps({"train": ["videos/a", "videos/b"], "val": ["videos/c", "videos/d"],
                                                 "test": ["videos/e"]}))
    _write(tmp_path / "captions.csv", "path,caption,split\n"
                                      "videos/a.mp4,a red square moves left,train\n"
                                      "videos/c.mp4,a blue star grows,val\n"
                                      "videos/b.mp4,a green cross appears,train\n"
                                      "videos/d.mp4,a white circle shrinks,val\n"
                                      'videos/c.mp4,"a star, blue, grows",val\n'
                                      "videos/e.mp4,a yellow square rotates,test\n")
    _write(tmp_path / "retrieval.json", json.dumps({"split": "test", "videos": ["videos/e"],
                                                    "captions": ["from the json file"], "caption_to_video": [0]}))
    _write(tmp_path / "qa_mc.jsonl", _jsonl([
        {"key": "videos/a", "split": "train", "question": "what does the red square do?",
         "options": ["grows", "moves left", "appears", "shrinks", "moves up"], "answer": 1, "type": "action"},
        {"key": "videos/c", "split": "val", "question": "what does the blue star do?",
         "options": ["grows", "moves left", "appears", "shrinks", "moves up"], "answer": 0, "type": "action"},
        {"key": "videos/d", "split": "val", "question": "what does the white circle do?",
         "options": ["grows", "moves left", "appears", "shrinks", "moves up"], "answer": 3, "type": "action"},
    ]))
    _write(tmp_path / "qa_oe.jsonl", _jsonl([
        {"key": "videos/a", "split": "train", "question": "which way does the red square move?", "answer": "left",
         "type": "direction"},
        {"key": "videos/c", "split": "val", "question": "what color is the star?", "answer": "blue", "type": "color"},
    ]) + "\n")  # a trailing blank line is allowed
    return tmp_path


def test_load_retrieval_uses_json_for_its_split_and_csv_for_others(layout: Path):
    assert load_retrieval(layout, "test") == RetrievalSet("test", ["videos/e"], ["from the json file"], [0])
    # val: videos in splits.json order, every caption of them in captions.csv order
    assert load_retrieval(layout, "val") == RetrievalSet(
        "val", ["videos/c", "videos/d"], ["a blue star grows", "a white circle shrinks", "a star, blue, grows"],
        [0, 1, 0])
    assert load_retrieval(str(layout), "val", keep={"videos/d", "videos/a"}) == RetrievalSet(
        "val", ["videos/d"], ["a white circle shrinks"], [0])
    assert load_retrieval(layout, "test", keep=set()) == RetrievalSet("test", [], [], [])
    (layout / "retrieval.json").unlink()
    assert load_retrieval(layout, "test") == RetrievalSet("test", ["videos/e"], ["a yellow square rotates"], [0])


def test_train_pairs_follow_splits_json_and_keep(layout: Path):
    assert load_retrieval_train_pairs(layout) == [("videos/a", "a red square moves left"),
                                                  ("videos/b", "a green cross appears")]
    assert load_retrieval_train_pairs(layout, "val", keep={"videos/c"}) == [("videos/c", "a blue star grows"),
                                                                          ("videos/c", "a star, blue, grows")]


def test_load_qa_filters_split_and_keep(layout: Path):
    options = ("grows", "moves left", "appears", "shrinks", "moves up")
    assert load_qa_mc(layout, "val") == [McItem("videos/c", "what does the blue star do?", options, 0, "action"),
                                         McItem("videos/d", "what does the white circle do?", options, 3, "action")]
    assert load_qa_mc(layout, "val", keep={"videos/d"}) == [
        McItem("videos/d", "what does the white circle do?", options, 3, "action")]
    assert load_qa_mc(layout, "test") == []  # a known split without items
    assert load_qa_oe(layout, "train") == [OeItem("videos/a", "which way does the red square move?", "left",
                                                  "direction")]
    assert load_qa_oe(layout, "val", keep={"videos/a"}) == []


def test_unknown_split_is_an_error_naming_the_file(layout: Path):
    _raises("splits.json: unknown split 'dev' (has: train, val, test)", load_retrieval, layout, "dev")
    _raises("unknown split 'dev'", load_retrieval_train_pairs, layout, "dev")
    _raises("splits.json: unknown split 'tset'", load_qa_mc, layout, "tset")
    _raises("unknown split 'tset'", load_qa_oe, layout, "tset")
    (layout / "splits.json").unlink()  # without splits.json the QA file's own splits are the known ones
    _raises("qa_oe.jsonl: unknown split 'test' (has: train, val)", load_qa_oe, layout, "test")
    _raises("splits.json: file not found", load_retrieval, layout, "val")


MC_ROW = {"key": "videos/a", "split": "train", "question": "q?", "options": ["x", "y", "z"], "answer": 1,
          "type": "action"}


@pytest.mark.parametrize("bad_line, message", [
    ('{"key": "videos/a", "split": ', "qa_mc.jsonl line 2: invalid JSON"),
    ('["not", "an", "object"]', "qa_mc.jsonl line 2: expected a JSON object, got list"),
    (json.dumps({k: v for k, v in MC_ROW.items() if k != "answer"}), "qa_mc.jsonl line 2: missing field 'answer'"),
    (json.dumps({**MC_ROW, "answer": 3}), "qa_mc.jsonl line 2: answer index 3 out of range for 3 options"),
    (json.dumps({**MC_ROW, "answer": "1"}), "qa_mc.jsonl line 2: field 'answer' must be int, got '1'"),
    (json.dumps({**MC_ROW, "answer": True}), "line 2: field 'answer' must be int, got True"),
    (json.dumps({**MC_ROW, "options": "x"}), "line 2: field 'options' must be list"),
    (json.dumps({**MC_ROW, "question": ""}), "line 2: field 'question' is empty"),
])
def test_malformed_mc_lines_give_one_line_errors(layout: Path, bad_line: str, message: str):
    _write(layout / "qa_mc.jsonl", json.dumps(MC_ROW) + "\n" + bad_line + "\n")
    error = _raises(message, load_qa_mc, layout, "train")
    # nothing chained: no KeyError / JSONDecodeError traceback printed above the one-line reason
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_malformed_oe_and_retrieval_files(layout: Path):
    _write(layout / "qa_oe.jsonl", _jsonl([{"key": "videos/a", "split": "train", "question": "q?", "type": "t"}]))
    _raises("qa_oe.jsonl line 1: missing field 'answer'", load_qa_oe, layout, "train")
    _write(layout / "retrieval.json", json.dumps({"split": "test", "videos": ["videos/e"], "captions": ["c"],
                                                  "caption_to_video": [1]}))
    _raises("retrieval.json: caption_to_video[0] = 1 is not a video index in [0, 1)", load_retrieval, layout, "test")
    _write(layout / "retrieval.json", '{"split": "test",\n "videos": [}')
    _raises("retrieval.json line 2: invalid JSON", load_retrieval, layout, "test")
    _write(layout / "retrieval.json", json.dumps({"split": "test", "videos": ["videos/e"], "captions": ["c"]}))
    _raises("retrieval.json: missing field 'caption_to_video'", load_retrieval, layout, "test")


def test_malformed_captions_csv(layout: Path):
    _write(layout / "captions.csv", "path,text\nvideos/a.mp4,hello\n")
    _raises("captions.csv: missing column(s) caption (header has: path, text)", load_retrieval_train_pairs, layout)
    _write(layout / "captions.csv", "path,caption,split\nvideos/a.mp4,hello,train\nvideos/b.mp4,,train\n")
    _raises("captions.csv line 3: empty 'caption'", load_retrieval_train_pairs, layout)
    # an unquoted comma would silently cut the caption short; it is an error instead
    _write(layout / "captions.csv", "path,caption,split\nvideos/a.mp4,a star, blue, grows,train\n")
    _raises("captions.csv line 2: expected 3 cells, got 5", load_retrieval_train_pairs, layout)
    _write(layout / "captions.csv", "path,caption,split\nvideos/a.mp4\n")
    _raises("captions.csv line 2: expected 3 cells, got 1", load_retrieval_train_pairs, layout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    build_synthetic_dataset(out, clips=12, seed=1, num_frames=2, size=32, fps=4)
    return out


def test_loaders_read_what_the_synthetic_generator_writes(generated: Path, tmp_path: Path):
    splits = json.loads((generated / "splits.json").read_text())
    stored = json.loads((generated / "retrieval.json").read_text())
    test_set = load_retrieval(generated, "test")
    assert test_set == RetrievalSet(**stored)
    # the csv route gives the same set as the generator's retrieval.json
    csv_only = tmp_path / "csv_only"
    csv_only.mkdir()
    for name in ("splits.json", "captions.csv"):
        shutil.copy(generated / name, csv_only / name)
    assert load_retrieval(csv_only, "test") == test_set
    val = load_retrieval(generated, "val")
    assert val.videos == splits["val"] and val.caption_to_video == list(range(len(splits["val"])))
    assert [k for k, _ in load_retrieval_train_pairs(generated)] == splits["train"]

    raw_mc = [json.loads(line) for line in (generated / "qa_mc.jsonl").read_text().splitlines()]
    raw_oe = [json.loads(line) for line in (generated / "qa_oe.jsonl").read_text().splitlines()]
    for split in ("train", "val", "test"):
        mc, oe = load_qa_mc(generated, split), load_qa_oe(generated, split)
        assert [m.key for m in mc] == [r["key"] for r in raw_mc if r["split"] == split]
        assert [m.options[m.answer] for m in mc] == [r["options"][r["answer"]] for r in raw_mc if r["split"] == split]
        assert [(o.key, o.answer) for o in oe] == [(r["key"], r["answer"]) for r in raw_oe if r["split"] == split]
    keep = set(splits["test"][:1])
    assert {m.key for m in load_qa_mc(generated, "test", keep=keep)} == keep
    assert load_retrieval(generated, "test", keep=keep).videos == sorted(keep)


# ---------------------------------------------------------------------------------------------------
# Adapters


def test_msrvtt_retrieval_json_list_and_jsonl(tmp_path: Path):
    entries = [{"video_id": "video7", "caption": "a man sings"},
               {"video": "video9", "caption": ["a dog runs", "a dog plays "]},
               {"video_id": "video7", "caption": "someone is singing"}]
    path = _write(tmp_path / "msrvtt_test_1k.json", json.dumps(entries, indent=1))
    expected = RetrievalSet("msrvtt_test_1k", ["videos/video7", "videos/video9"],
                            ["a man sings", "someone is singing", "a dog runs", "a dog plays"], [0, 0, 1, 1])
    assert load_msrvtt_retrieval(path, "videos/{video_id}") == expected
    jsonl = _write(tmp_path / "msrvtt_test_1k.jsonl", _jsonl(entries))
    assert load_msrvtt_retrieval(jsonl, "videos/{video_id}") == expected
    assert load_task_file(path, "msrvtt_retrieval", "videos/{video_id}") == expected
    assert load_msrvtt_retrieval(path, "videos/{video_id}", keep={"videos/video9"}, split="test") == RetrievalSet(
        "test", ["videos/video9"], ["a dog runs", "a dog plays"], [0, 0])
    assert msrvtt_train_pairs(path) == [("video7", "a man sings"), ("video7", "someone is singing"),
                                        ("video9", "a dog runs"), ("video9", "a dog plays")]


def test_msrvtt_retrieval_errors_name_file_and_entry(tmp_path: Path):
    path = _write(tmp_path / "m.json", json.dumps([{"video_id": "v1", "caption": "ok"}, {"video_id": "v2"}]))
    _raises("m.json entry 1: missing field 'caption'", load_msrvtt_retrieval, path)
    _write(path, json.dumps([{"video_id": "v1", "caption": ["ok", ""]}]))
    _raises("m.json entry 0: field 'caption' must hold non-empty strings", load_msrvtt_retrieval, path)
    _write(path, json.dumps([{"caption": "ok"}]))
    _raises("m.json entry 0: missing field 'video_id' or 'video'", load_msrvtt_retrieval, path)
    _write(path, '[{"video_id": "v1", "caption": "ok"},\n {"video_id": "v2" "caption": "x"}]')
    _raises("m.json line 2: invalid JSON", load_msrvtt_retrieval, path)
    jsonl = _write(tmp_path / "m.jsonl", '{"video_id": "v1", "caption": "ok"}\n{"video_id": oops}\n')
    _raises("m.jsonl line 2: invalid JSON", load_msrvtt_retrieval, jsonl)
    _raises("file not found", load_msrvtt_retrieval, tmp_path / "missing.json")


def test_didemo_concatenates_sentences_into_one_paragraph_per_video(tmp_path: Path):
    path = _write(tmp_path / "didemo_test.json", json.dumps([
        {"video": "123@N0_a.mp4", "description": "a girl waves.", "times": [[0, 0]]},
        {"video": "456@N0_b.mov", "description": " the camera pans left. "},
        {"video": "123@N0_a.mp4", "description": "she walks away."},
        {"video_id": "456@N0_b.mov", "caption": ["a dog appears.", "it barks."]},
    ]))
    assert load_didemo_retrieval(path, "didemo/{noext}") == RetrievalSet(
        "didemo_test", ["didemo/123@N0_a", "didemo/456@N0_b"],
        ["a girl waves. she walks away.", "the camera pans left. a dog appears. it barks."], [0, 1])
    assert load_task_file(path, "didemo_retrieval", "{video_id}", keep={"456@N0_b.mov"}) == RetrievalSet(
        "didemo_test", ["456@N0_b.mov"], ["the camera pans left. a dog appears. it barks."], [0])
    _write(path, json.dumps([{"video": "v.mp4", "times": [[0, 1]]}]))
    _raises("didemo_test.json entry 0: missing field 'description' or 'caption'", load_didemo_retrieval, path)


def test_tgif_frame_tab_and_comma_tables(tmp_path: Path):
    tsv = _write(tmp_path / "Test_frameqa_question.csv",
                 "gif_name\tquestion\tanswer\ttype\tvid_id\n"
                 "tumblr_a1\twhat is the man holding\tguitar\t0\tgif1\n"
                 "tumblr_b2\thow many dogs are there\ttwo\t1\tgif2\n")
    assert load_tgif_frame(tsv, "tgif/{video_id}") == [
        OeItem("tgif/tumblr_a1", "what is the man holding", "guitar", "0"),
        OeItem("tgif/tumblr_b2", "how many dogs are there", "two", "1")]
    comma = _write(tmp_path / "frame.csv", 'gif_name,question,answer\ntumblr_c3,"what, exactly, is red",car\n')
    assert load_task_file(comma, "tgif_frame") == [OeItem("tumblr_c3", "what, exactly, is red", "car", "frame")]
    _write(comma, "gif_name,question,answer\ntumblr_c3,what is red,car\ntumblr_d4,what is blue,\n")
    _raises("frame.csv line 3: field 'answer' is empty", load_tgif_frame, comma)
    _write(comma, "gif,question,answer\nx,q,a\n")
    _raises("frame.csv: missing column(s) gif_name (header has: gif, question, answer)", load_tgif_frame, comma)


def test_tgif_mc_action_table(tmp_path: Path):
    header = "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tkey\n"
    path = _write(tmp_path / "Test_action_question.csv",
                  header + "tumblr_x\twhat does the man do 3 times\tnod\tjump\twave\tclap\tspin\t2\t7\n")
    assert load_tgif_mc(path, default_type="action") == [
        McItem("tumblr_x", "what does the man do 3 times", ("nod", "jump", "wave", "clap", "spin"), 2, "action")]
    assert load_task_file(path, "tgif_mc", "gifs/{video_id}")[0].key == "gifs/tumblr_x"
    _write(path, header + "tumblr_x\tq\tnod\tjump\twave\tclap\tspin\t2\t7\n"
                          "tumblr_y\tq\tnod\tjump\twave\tclap\tspin\t5\t8\n")
    _raises("Test_action_question.csv line 3: answer index 5 out of range for 5 options", load_tgif_mc, path)
    _write(path, header + "tumblr_x\tq\tnod\tjump\twave\tclap\tspin\ttwo\t7\n")
    _raises("line 2: answer 'two' is not an option index", load_tgif_mc, path)
    _write(path, header + "tumblr_x\tq\tnod\tjump\t\tclap\tspin\t1\t7\n")
    _raises("line 2: option 2 must be a non-empty string", load_tgif_mc, path)
    _write(path, "gif_name\tquestion\ta1\ta2\ta3\ta4\tanswer\n")
    _raises("missing column(s) a5", load_tgif_mc, path)


def test_msrvtt_qa_and_msvd_qa_json(tmp_path: Path):
    path = _write(tmp_path / "test_qa.json", json.dumps([
        {"id": 0, "video_id": 7010, "question": "what is a man doing?", "answer": "sing", "category_id": 2},
        {"video": "vid12", "question": "how many people are there?", "answer": 3},
    ]))
    assert load_msrvtt_qa(path, "video{video_id}") == [
        OeItem("video7010", "what is a man doing?", "sing", "2"),
        OeItem("videovid12", "how many people are there?", "3", "qa")]
    assert load_task_file(path, "msrvtt_qa", "{video_id}", keep={"vid12"}) == [
        OeItem("vid12", "how many people are there?", "3", "qa")]
    _write(path, json.dumps([{"video_id": 1, "question": "q?", "answer": "a"}, {"video_id": 2, "answer": "b"}]))
    _raises("test_qa.json entry 1: missing field 'question'", load_msrvtt_qa, path)
    _write(path, json.dumps([{"video_id": 1.5, "question": "q?", "answer": "a"}]))
    _raises("entry 0: field 'video_id' must be str or int, got 1.5", load_msrvtt_qa, path)


def test_key_format_and_kind_errors(tmp_path: Path):
    assert format_key("clips/{video_id:05d}", 42) == "clips/00042"
    assert format_key("{noext}", "a/b.mp4") == "a/b"
    _raises("key_format '{vid}' cannot format video id 'v1'|placeholders are {video_id} and {noext}",
            format_key, "{vid}", "v1")
    path = _write(tmp_path / "qa.json", json.dumps([{"video_id": 7010, "question": "q?", "answer": "a"}]))
    _write(tmp_path / "ids.json", json.dumps([{"video_id": 1, "caption": "a"}, {"video_id": "x", "caption": "b"}]))
    _raises("ids.json entry 1: key_format 'clip{video_id:03d}' cannot format video id 'x'", load_msrvtt_retrieval,
            tmp_path / "ids.json", "clip{video_id:03d}")
    # ids mapped to keys the cache does not hold: a wrong key_format, not an empty task
    _raises("qa.json: none of its 1 video keys (e.g. '7010') is in the cache (e.g. 'videos/video7010')|"
            "check key_format", load_task_file, path, "msrvtt_qa", keep={"videos/video7010"})
    with pytest.raises(ValueError, match="unknown task kind 'msvd'; expected one of: " + ", ".join(TASK_KINDS)):
        load_task_file(path, "msvd")


# ---------------------------------------------------------------------------------------------------
# Metrics


def test_retrieval_metrics_hand_computed_4x3():
    scores = np.array([[0.9, 0.1, 0.2],   # gt 0: none above, alone at 0.9           -> rank 1
                       [0.5, 0.3, 0.8],   # gt 1: 0.5 and 0.8 above                  -> rank 3
                       [0.4, 0.6, 0.6],   # gt 2: none above, tied with video 1: mid -> rank 1.5
                       [0.2, 0.7, 0.1]])  # gt 0: 0.7 above                          -> rank 2
    text_to_video = [0, 1, 2, 0]
    assert retrieval_ranks(scores, text_to_video).tolist() == [1.0, 3.0, 1.5, 2.0]
    assert retrieval_metrics(scores, text_to_video) == {
        "R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "AveR": 75.0, "MdR": 1.75, "MnR": 1.875, "n_text": 4, "n_video": 3}
    # a torch tensor (any float dtype) gives the same numbers
    assert retrieval_metrics(torch.tensor(scores, dtype=torch.float32), torch.tensor(text_to_video))["MnR"] == 1.875


def test_retrieval_metrics_beyond_rank_ten():
    scores = np.stack([np.r_[0.0, np.arange(1.0, 12.0)],  # gt 0 scores lowest of 12  -> rank 12
                       np.arange(12.0)])                  # gt 6: videos 6..11 >= 6   -> rank 6
    result = retrieval_metrics(scores, [0, 6])
    assert result == {"R@1": 0.0, "R@5": 0.0, "R@10": 50.0, "AveR": pytest.approx(50 / 3), "MdR": 9.0, "MnR": 9.0,
                      "n_text": 2, "n_video": 12}


def test_ties_take_the_mid_rank():
    constant = np.zeros((3, 4))
    # every text at (4 + 1) / 2, the chance median; an index-order rule would give [1, 2, 4]
    assert retrieval_ranks(constant, [0, 1, 3]).tolist() == [2.5, 2.5, 2.5]
    result = retrieval_metrics(constant, [0, 1, 3])
    assert (result["R@1"], result["MdR"]) == (0.0, 2.5)
    # a gt tied with one video above an untied one ranks 1.5, neither 1 nor 2
    assert retrieval_ranks(np.array([[0.5, 0.5, 0.1]]), [0]).tolist() == [1.5]
    assert retrieval_ranks(np.array([[1.0, -np.inf]]), [1]).tolist() == [2.0]


def test_retrieval_metric_input_errors():
    with pytest.raises(ValueError, match="3 entries for 2 texts"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match=r"indices in \[0, 3\)"):
        retrieval_metrics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="non-empty"):
        retrieval_metrics(np.zeros(3), [0, 1, 2])


def test_chance_levels():
    assert chance_retrieval(3) == {"R@1": pytest.approx(100 / 3), "R@5": 100.0, "R@10": 100.0,
                                   "AveR": pytest.approx((100 / 3 + 200) / 3), "MdR": 2.0, "MnR": 2.0, "n_video": 3}
    big = chance_retrieval(1000)
    assert (big["R@1"], big["R@5"], big["R@10"], big["MdR"]) == (pytest.approx(0.1), pytest.approx(0.5),
                                                                 pytest.approx(1.0), 500.5)
    with pytest.raises(ValueError, match="positive integer"):
        chance_retrieval(0)
    # random scores land near the stated chance levels
    rng = np.random.default_rng(0)
    measured = retrieval_metrics(rng.random((4000, 20)), rng.integers(0, 20, 4000))
    expected = chance_retrieval(20)
    assert abs(measured["R@1"] - expected["R@1"]) < 1.5   # 5 %, binomial sd ~0.34
    assert abs(measured["R@5"] - expected["R@5"]) < 2.5   # 25 %, sd ~0.68
    assert abs(measured["MnR"] - expected["MnR"]) < 0.3   # 10.5, sd ~0.09


def test_accuracy_and_mc_predictions():
    assert accuracy([1, 2, 3, 0], [1, 2, 0, 0]) == 75.0
    assert accuracy(["left", "up"], ["left", "down"]) == 50.0
    assert accuracy(np.array([4, 4]), torch.tensor([4, 1])) == 50.0
    with pytest.raises(ValueError, match="2 predictions for 1 gold"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    scores = torch.tensor([[0.1, 0.5, 0.5], [2.0, 1.0, 0.0], [-3.0, -1.0, -2.0]], dtype=torch.bfloat16)
    assert mc_predictions(scores).tolist() == [1, 0, 1]  # the tie in row 0 goes to the lower index
    assert accuracy(mc_predictions(scores), [1, 2, 1]) == pytest.approx(200 / 3)


def test_oe_accuracy_counts_unexpressible_answers_as_wrong():
    vocab = {"left": 5, "right": 6, "red": 7}
    preds = [5, 6, 7, 0]
    golds = ["left", "left", "red", "counterclockwise"]  # right, wrong, right, not one token
    assert oe_accuracy(preds, golds, vocab.get) == 50.0  # 2 / 4; dropping the last would give 2 / 3
    assert oe_accuracy(torch.tensor(preds), golds, vocab.get) == 50.0
    assert oe_answer_coverage(golds, vocab.get) == 75.0
    # a prediction cannot match an unexpressible answer even if token_id_of's None were compared loosely
    assert oe_accuracy([0], ["counterclockwise"], lambda a: None) == 0.0
    with pytest.raises(ValueError, match="1 predictions for 2 gold"):
        oe_accuracy([5], ["left", "red"], vocab.get)
