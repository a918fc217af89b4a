"""Paper mode and the official code's rules: unmasked video without MVM, joint attended masking,
the BERT MLM head, the summed retrieval loss and per-task text lengths (docs/method.md section 5)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from violet_core.config import ConfigError, ModelConfig, RunConfig, config_from_dict
from violet_core.data.tokenizer import train_wordpiece
from violet_core.downstream import tasks
from violet_core.downstream.records import McItem, OeItem, RetrievalSet
from violet_core.losses import symmetric_contrastive_loss
from violet_core.mask_paper import PAPER_RATIO, joint_attended_count, joint_attended_mask
from violet_core.masking import MaskSampler
from violet_core.model import Violet, load_pretrained_parts
from violet_core.objectives import PretrainObjective, RetrievalObjective
from violet_core.target_info import TargetInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")
B, T, SIZE, L, VOCAB, HID, MASK_ID = 6, 2, 64, 8, 50, 32, 3
SIDE = SIZE // 32


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig(**{"video_backbone": "tiny", "hidden": HID, "layers": 1, "heads": 2, "intermediate": 64,
                          "dropout": 0.0, **changes})


FEATURE = TargetInfo(ref="feat", name="feat", variant="x", target_id="feat-x", grid="patch", loss="l1",
                     clip_shape=(T, SIDE * SIDE, 8), frames_needed=1, params={})


def pretrain_batch(with_target: bool) -> tuple[dict, torch.Tensor]:
    g = gen(1)
    video = torch.randn(B, T, 3, SIZE, SIZE, generator=g)  # no patch of a normal sample is all zero
    ids = torch.randint(5, VOCAB, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    special = torch.zeros(B, L, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    batch = {"video": video, "text_ids": ids, "text_mask": torch.ones(B, L, dtype=torch.long), "extras": {},
             "targets": {"feat": torch.randn(B, *FEATURE.clip_shape, generator=g)} if with_target else {}}
    return batch, special


def zeroed_patches(video: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, S, S) -> (B, T, h, w) bool: patches whose 3 x 32 x 32 pixels are all exactly 0."""
    b, t, c, s, _ = video.shape
    cells = video.reshape(b, t, c, s // 32, 32, s // 32, 32)
    return (cells == 0).all(dim=6).all(dim=4).all(dim=2)


def encoder_input(strategies: tuple[str, ...], paper: bool, video_without_mvm: bool, with_target: bool) -> tuple:
    """Run one pretraining step; returns (the batch video, what `encode_video` received, the losses)."""
    torch.manual_seed(0)
    model = Violet(tiny_config(), VOCAB, L, [FEATURE] if with_target else [], attention_weights="am" in strategies)
    seen: list[torch.Tensor] = []
    original = model.encode_video

    def spy(video: torch.Tensor):
        seen.append(video.clone())
        return original(video)

    model.encode_video = spy
    sampler = MaskSampler(strategies, 0.3, 0.15, paper=paper, video_without_mvm=video_without_mvm)
    batch, special = pretrain_batch(with_target)
    losses = PretrainObjective(model, sampler, MASK_ID).eval()(batch, gen(2), special)
    # AM's attention pass calls the model's forward, which goes through encode_video as well: the
    # masked step's input is the last call
    return batch["video"], seen[-1], losses


@pytest.mark.parametrize("paper", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize("strategies", [("rm", "bm"), ("am",)], ids=["rm-bm", "am"])
def test_without_mvm_the_video_encoder_sees_the_unmasked_video(strategies, paper):
    video, seen, losses = encoder_input(strategies, paper, video_without_mvm=False, with_target=False)
    assert torch.equal(seen, video)
    assert not zeroed_patches(seen).any()
    assert float(losses["mask_ratio"]) == 0.0 and "mlm" in losses


@pytest.mark.parametrize("paper", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize("strategies", [("rm", "bm"), ("am",)], ids=["rm-bm", "am"])
def test_video_without_mvm_option_and_mvm_targets_mask_the_video(strategies, paper):
    for option, target in ((True, False), (False, True)):
        video, seen, losses = encoder_input(strategies, paper, video_without_mvm=option, with_target=target)
        zeroed = zeroed_patches(seen)
        assert zeroed.any(), (option, target)
        assert float(losses["mask_ratio"]) == pytest.approx(float(zeroed.float().mean()))
        # only the zeroed patches differ from the batch's video
        kept = ~zeroed.repeat_interleave(32, 2).repeat_interleave(32, 3)[:, :, None].expand_as(seen)
        assert torch.equal(seen[kept], video[kept])


def test_video_without_mvm_is_a_config_option():
    assert RunConfig().mask.video_without_mvm is False
    assert config_from_dict({"mask": {"video_without_mvm": True}}).mask.video_without_mvm is True
    with pytest.raises(ConfigError, match="'mask.video_without_mvm' must be true or false"):
        config_from_dict({"mask": {"video_without_mvm": "yes"}})


# ---- attended masking drawn jointly over video and text (paper mode) -----------------------------

def test_joint_count_is_the_released_formula():
    # int(0.15 * (T * (1 + h * w) + L)): 4 frames of 7 x 7 with 32 text tokens -> int(34.8)
    assert joint_attended_count(4, 7, 7, 32, 0.15) == 34
    assert joint_attended_count(1, 1, 1, 8, 0.15) == 1  # int(1.5)
    assert joint_attended_count(2, 2, 2, 12, 0.15) == 3  # int(3.3)


def test_joint_single_draw_follows_the_attention_distribution():
    """One position per sample: the draw is one categorical over video cells and non-special text,
    with probability proportional to the attention received (chi-square goodness of fit)."""
    draws = 20000
    video_scores = torch.full((draws, 1, 1, 1), 0.5)
    text_att = torch.tensor([9.0, 1.0, 1.0, 4.0, 8.0, 0.5, 2.0, 7.0])  # [CLS] and [SEP] scores must not matter
    special = torch.tensor([True, False, False, False, False, False, False, True]).expand(draws, L)
    video, text = joint_attended_mask(video_scores, text_att.expand(draws, L), special, PAPER_RATIO, gen(3))
    assert torch.all(video.flatten(1).sum(1) + text.sum(1) == 1)
    assert not text[special].any()
    observed = np.array([int(video.sum())] + [int(text[:, i].sum()) for i in range(1, L - 1)])
    weights = np.array([0.5, 1.0, 1.0, 4.0, 8.0, 0.5, 2.0])
    expected = weights / weights.sum() * draws
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # the fit is not vacuous: a uniform draw over the same positions is rejected
    assert stats.chisquare(observed, np.full(7, draws / 7)).pvalue < 1e-12


def test_joint_draw_masks_high_attention_text_far_more_often():
    rows = 4000
    video_scores = torch.ones(rows, 2, 2, 2)
    text_scores = torch.ones(rows, 12)
    text_scores[:, 3] = 20.0  # one token receives 20x the attention of the others
    special = torch.zeros(rows, 12, dtype=torch.bool)
    special[:, 0] = special[:, 11] = True
    video, text = joint_attended_mask(video_scores, text_scores, special, PAPER_RATIO, gen(4))
    assert torch.all(video.flatten(1).sum(1) + text.sum(1) == 3)  # int(0.15 * (2 * 5 + 12)) = 3
    hot, cold = int(text[:, 3].sum()), int(text[:, 5].sum())
    # 18 drawable positions: a draw blind to attention would mask a given token 3 / 18 of the time
    assert stats.binomtest(hot, rows, 3 / 18, alternative="greater").pvalue < 1e-12
    assert stats.binomtest(cold, rows, 3 / 18, alternative="less").pvalue < 1e-12
    assert hot > 5 * cold
    assert not text[special].any()


def test_paper_sampler_am_masks_text_and_video_from_one_draw():
    rows, frames, side, length = 400, 2, 2, 12
    g = gen(5)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    special = torch.zeros(rows, length, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    video_att = torch.rand(rows, frames, side, side, generator=g)
    text_att = torch.rand(rows, length, generator=g) + 0.5
    sampler = MaskSampler(("am",), 0.3, 0.5, paper=True)
    assert sampler.needs_attention_for(False)  # paper AM picks text by attention even without video masking
    out = sampler.sample(ids, special, MASK_ID, frames, side, side, gen(6), mask_video=True,
                         video_attention=video_att, text_attention=text_att)
    labelled = out.labels != -100
    assert torch.equal(out.text_ids[labelled], torch.full_like(ids[labelled], MASK_ID))
    assert torch.equal(out.labels[labelled], ids[labelled]) and torch.equal(out.text_ids[~labelled], ids[~labelled])
    assert not labelled[special].any()
    assert out.video.any() and set(out.strategies) == {"am"}
    # the same draw without video masking: the joint draw's own text hits, untouched video
    joint = MaskSampler(("am",), 0.3, 0.5, paper=True).sample(ids, special, MASK_ID, frames, side, side, gen(6),
                                                           mask_video=False, video_attention=video_att,
                                                           text_attention=text_att)
    assert not joint.video.any()
    drawn_text = joint.labels != -100
    hit = drawn_text.any(dim=1)
    assert hit.any() and (~hit).any()  # about (8/18)^3 of the rows draw video cells only
    assert torch.equal(labelled[hit], drawn_text[hit])
    # each row with a text hit drew int(0.15 * (2 * 5 + 12)) = 3 positions, split between video and text
    assert torch.all(out.video[hit].flatten(1).sum(1) + labelled[hit].sum(1) == 3)
    # a row without one is redrawn as RM, as released: coin-flip text (so a label, mostly) and Bernoulli video
    assert float(labelled[~hit].any(dim=1).float().mean()) > 0.5


def test_paper_am_without_text_hits_falls_back_to_random_masking():
    rows, frames, side, length = 300, 4, 7, 8
    ids = torch.randint(5, VOCAB, (rows, length), generator=gen(7))
    special = torch.ones(rows, length, dtype=torch.bool)  # nothing drawable in the text
    sampler = MaskSampler(("am",), 0.3, 0.5, paper=True)
    out = sampler.sample(ids, special, MASK_ID, frames, side, side, gen(8), video_attention=torch.ones(rows, 4, 7, 7),
                         text_attention=torch.ones(rows, length))
    counts = out.video.flatten(1).sum(1).float()
    # the joint draw would mask exactly int(0.15 * 208) = 31 cells; released RM masks each cell with p 0.15
    assert len(set(counts.tolist())) > 5
    assert abs(float(counts.mean()) / 196 - PAPER_RATIO) < 0.01
    assert bool((out.labels == -100).all())


def test_default_sampler_keeps_video_only_am_and_coin_flip_text():
    rows = 500
    ids = torch.randint(5, VOCAB, (rows, L), generator=gen(9))
    special = torch.zeros(rows, L, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    video_att = torch.rand(rows, T, SIDE, SIDE, generator=gen(10))
    sampler = MaskSampler(("am",), 0.5, 0.4)
    assert not sampler.needs_attention_for(False)
    out = sampler.sample(ids, special, MASK_ID, T, SIDE, SIDE, gen(11), video_attention=video_att)
    assert torch.all(out.video.flatten(1).sum(1) == 4)  # round(0.5 * 8) video cells, the ratio honoured
    reference_video, _ = MaskSampler(("am",), 0.5, 0.4).sample_video(rows, T, SIDE, SIDE, gen(11), attention=video_att)
    assert torch.equal(out.video, reference_video)  # same draws as before: default runs reproduce
    rate = float((out.labels != -100)[~special].float().mean())
    assert abs(rate - 0.4) < 0.03


# ---- MLM head from BERT --------------------------------------------------------------------------

def save_tiny_bert(folder, with_head: bool = True) -> dict[str, torch.Tensor]:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=HID, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    torch.manual_seed(11)
    bert = BertForMaskedLM(config) if with_head else BertModel(config, add_pooling_layer=False)
    with torch.no_grad():  # BERT's own init leaves LayerNorm at (1, 0) and the bias at 0: make them distinctive
        for name, tensor in bert.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                tensor.copy_(torch.randn_like(tensor))
    bert.save_pretrained(folder)
    return {k: v.clone() for k, v in bert.state_dict().items()}


def test_mlm_head_is_initialised_from_bert_cls_predictions(tmp_path):
    saved = save_tiny_bert(tmp_path / "bert")
    config = tiny_config(text_weights=str(tmp_path / "bert"))
    torch.manual_seed(0)
    model = Violet(config, VOCAB, L)
    loaded = load_pretrained_parts(model, config)
    assert loaded == [f"BERT from {tmp_path / 'bert'} (embeddings, fusion encoder, MLM head)"]
    head = model.mlm_head.predictions
    for ours, theirs in (("transform.dense.weight", "dense.weight"), ("transform.dense.bias", "dense.bias"),
                         ("transform.LayerNorm.weight", "LayerNorm.weight"),
                         ("transform.LayerNorm.bias", "LayerNorm.bias")):
        assert torch.equal(head.state_dict()[ours], saved[f"cls.predictions.transform.{theirs}"]), ours
    assert torch.equal(head.decoder.bias, saved["cls.predictions.bias"])
    assert torch.equal(head.bias, saved["cls.predictions.bias"])
    # the decoder weight is the word-embedding table itself, loaded with the embeddings
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert torch.equal(head.decoder.weight, saved["bert.embeddings.word_embeddings.weight"])
    # the head computes BERT's prediction: dense, gelu, LayerNorm, tied decoder plus bias
    hidden = torch.randn(3, HID, generator=gen(12))
    x = F.gelu(F.linear(hidden, saved["cls.predictions.transform.dense.weight"],
                        saved["cls.predictions.transform.dense.bias"]))
    x = F.layer_norm(x, (HID,), saved["cls.predictions.transform.LayerNorm.weight"],
                     saved["cls.predictions.transform.LayerNorm.bias"], eps=1e-12)
    expected = F.linear(x, saved["bert.embeddings.word_embeddings.weight"], saved["cls.predictions.bias"])
    torch.testing.assert_close(model.mlm_head(hidden), expected, rtol=1e-5, atol=1e-5)


def test_bert_folder_without_mlm_head_keeps_our_initialisation(tmp_path):
    save_tiny_bert(tmp_path / "bare", with_head=False)
    config = tiny_config(text_weights=str(tmp_path / "bare"))
    torch.manual_seed(0)
    model = Violet(config, VOCAB, L)
    before = {k: v.clone() for k, v in model.mlm_head.predictions.transform.state_dict().items()}
    (message,) = load_pretrained_parts(model, config)
    assert "no MLM head there" in message
    for key, value in model.mlm_head.predictions.transform.state_dict().items():
        assert torch.equal(value, before[key])


def test_bert_vocabulary_mismatch_is_a_clear_error(tmp_path):
    save_tiny_bert(tmp_path / "bert")
    config = tiny_config(text_weights=str(tmp_path / "bert"))
    with pytest.raises(ValueError, match=f"{VOCAB}-token vocabulary, the model 60; set data.tokenizer"):
        load_pretrained_parts(Violet(config, 60, L), config)


# ---- retrieval loss reduction --------------------------------------------------------------------

def test_paper_retrieval_loss_sums_both_directions():
    scores = torch.randn(5, 5, generator=gen(13))
    t = 0.05
    t2v = -torch.diagonal(torch.log_softmax(scores / t, dim=1)).mean()  # the official NormSoftmaxLoss terms
    v2t = -torch.diagonal(torch.log_softmax(scores.t() / t, dim=1)).mean()
    torch.testing.assert_close(symmetric_contrastive_loss(scores, t, "sum"), t2v + v2t)
    torch.testing.assert_close(symmetric_contrastive_loss(scores, t), (t2v + v2t) / 2)
    with pytest.raises(ValueError, match="unknown contrastive reduction 'max'"):
        symmetric_contrastive_loss(scores, t, "max")


# ---- downstream tasks: paper-mode reduction and per-task text length -----------------------------

CORPUS = ["a red ball moves left", "a blue cube moves right", "what moves", "which colour is the ball",
          "left", "right", "red", "blue", "question answer option"] * 5


def fake_run(overrides: dict) -> SimpleNamespace:
    """The task runners' inputs, with a tiny model and a trained WordPiece."""
    config = config_from_dict({"data": {"max_text_len": 12, "size": SIZE, "num_frames": T},
                               "downstream": {"optim": {"steps": 0, "batch_size": 2}, "eval_batch_size": 10},
                               **overrides})
    tokenizer = train_wordpiece(CORPUS, 200)
    torch.manual_seed(0)
    model = Violet(tiny_config(), tokenizer.vocab_size, config.data.max_text_len)
    return SimpleNamespace(config=config, tokenizer=tokenizer, model=model, device=torch.device("cpu"))


def patch_sources(monkeypatch, records: dict[str, object]) -> list:
    """Stand-ins for the cache and the record files; returns the list `run_task` logs finetune calls in."""
    def frames(key: str, rng=None) -> torch.Tensor:  # as ClipVideos: (T, S, S, 3) uint8
        return torch.randint(0, 256, (T, SIZE, SIZE, 3), dtype=torch.uint8)

    monkeypatch.setattr(tasks, "_frames", lambda config: frames)
    monkeypatch.setattr(tasks, "task_records", lambda config, keys, task, role, synthetic: records[role])
    return []


def run_task(runner, run: SimpleNamespace, calls: list):
    """`runner` on the fake run's inputs; its finetune calls are appended to `calls` instead of training."""
    return runner(run.model, run.tokenizer, run.config, [], lambda objective, dataset, task:
                  calls.append((objective, dataset)), run.device)


def test_retrieval_uses_its_text_length_and_the_paper_reduction(monkeypatch):
    test = RetrievalSet(split="test", videos=["v0", "v1"], captions=["a red ball moves left", "a blue cube"],
                        caption_to_video=[0, 1])
    for paper, reduction in ((False, "mean"), (True, "sum")):
        run = fake_run({"mask": {"paper": paper}, "downstream": {"max_text_len": {"retrieval": 7},
                                                                 "optim": {"steps": 0, "batch_size": 2}}})
        calls = patch_sources(monkeypatch, {"train": [("v0", "a red ball"), ("v1", "a blue cube")], "eval": test})
        encoded = []
        original = run.tokenizer.encode
        run.tokenizer.encode = lambda texts, max_len: encoded.append(max_len) or original(texts, max_len)
        metrics, _ = run_task(tasks.run_retrieval, run, calls)
        (objective, dataset), = calls
        assert isinstance(objective, RetrievalObjective) and objective.reduction == reduction
        assert dataset[0]["text_ids"].shape == (7,)
        assert set(encoded) == {7}  # training pairs and the evaluation captions
        assert metrics["retrieval/n_text"] == 2.0


def test_qa_tasks_use_their_own_text_length_or_the_data_default(monkeypatch):
    mc = [McItem(key="v0", question="what moves", options=("left", "right", "red", "blue", "ball"), answer=1,
                 type="x")]
    oe = [OeItem(key="v1", question="which colour is the ball", answer="red", type="x")]
    run = fake_run({"downstream": {"max_text_len": {"qa_mc": 20}, "optim": {"steps": 0, "batch_size": 2}}})
    calls = patch_sources(monkeypatch, {"train": mc, "eval": mc})
    seen = []
    original = tasks.MultipleChoiceObjective.option_scores
    monkeypatch.setattr(tasks.MultipleChoiceObjective, "option_scores",
                        lambda self, batch: seen.append(batch["option_ids"].shape) or original(self, batch))
    run_task(tasks.run_qa_mc, run, calls)
    assert calls[0][1][0]["option_ids"].shape == (5, 20) and seen == [torch.Size([1, 5, 20])]
    calls = patch_sources(monkeypatch, {"train": oe, "eval": oe})
    run_task(tasks.run_qa_oe, run, calls)
    assert calls[0][1][0]["text_ids"].shape == (12,)  # not listed: data.max_text_len
    short = fake_run({"downstream": {"max_text_len": {"qa_oe": 3}, "optim": {"steps": 0, "batch_size": 2}}})
    calls = patch_sources(monkeypatch, {"train": oe, "eval": oe})
    with pytest.raises(ValueError, match="v1: question too long for downstream.max_text_len.qa_oe=3"):
        run_task(tasks.run_qa_oe, short, calls)


def test_per_task_text_length_is_validated():
    with pytest.raises(ConfigError, match="'downstream.max_text_len.captioning': unknown task"):
        config_from_dict({"downstream": {"max_text_len": {"captioning": 30}}})
    with pytest.raises(ConfigError, match="'downstream.max_text_len.qa_mc': 1 must leave room"):
        config_from_dict({"downstream": {"max_text_len": {"qa_mc": 1}}})
    with pytest.raises(ConfigError, match="'downstream.max_text_len.qa_mc': 600 .* fit 512 positions"):
        config_from_dict({"downstream": {"max_text_len": {"qa_mc": 600}}})
    with pytest.raises(ConfigError, match="'downstream.max_text_len' must be an integer"):
        config_from_dict({"downstream": {"max_text_len": {"qa_mc": "long"}}})
    assert tasks.task_text_len(config_from_dict({"downstream": {"max_text_len": {"qa_mc": 100}}}), "qa_mc") == 100
    assert tasks.task_text_len(RunConfig(), "qa_mc") == RunConfig().data.max_text_len
