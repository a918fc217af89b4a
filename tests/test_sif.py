"""`sif`: timm teachers loaded from local files, last-stage features on the 32-px patch grid.

Tiny architectures stand in for the real checkpoints (same code paths: timm's builder, the
pretrained-config file overlay, the checkpoint filters); the real weights are never needed.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets import patch_grid
from mvm_targets.targets.registry import TargetUnavailableError, UnknownTargetError
from mvm_targets.targets.sif import DEFAULT_MODEL, PAPER_EXTRACTORS, _timm, build_sif, weights_folder
from mvm_targets.targets.spec import Grid
from mvm_targets.teachers import runtime
from mvm_targets.teachers.weights import MissingWeightsError, sha256_of, weights_entry

timm = _timm()
SWIN = "swin_tiny_patch4_window7_224.ms_in1k"
TINY_SWIN = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=64)
T, S = 3, 64


def frames(batch: int, size: int = S, num_frames: int = T, seed: int = 0) -> np.ndarray:
    """(B, T, S, S, 3) uint8 smooth random textures."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, num_frames, size // 8, size // 8, 3))
    return (np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3) * 255).astype(np.uint8)


def normalised(clips: np.ndarray, mean=patch_grid.IMAGENET_MEAN, std=patch_grid.IMAGENET_STD) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 -> (B*T, 3, S, S) float32, independently of the product's helper."""
    x = torch.from_numpy(clips).flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def last_stage(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of `module` (a last stage / last block) during a plain forward: pre-final-norm."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def swin_dir(tmp_path_factory):
    """A weights folder holding a tiny Swin in the real layout, and the in-memory model it came from."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    model = timm.create_model(SWIN, **TINY_SWIN).eval()
    folder = root / weights_folder(SWIN)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return root, model


@pytest.fixture(scope="module")
def swin(swin_dir):
    root, _ = swin_dir
    return build_sif("timm", model=SWIN, weights_dir=root, model_kwargs=TINY_SWIN, precision="fp32")


def test_pretrained_file_loads_through_timm_and_matches_the_in_memory_model(swin_dir, swin):
    root, model = swin_dir
    clips = frames(2)
    stage = last_stage(model, model.layers[-1], normalised(clips))  # (N, h, w, C), timm Swin is NHWC
    expected = stage.flatten(1, 2).numpy().astype(np.float16).reshape(2, T, 4, 192)
    np.testing.assert_array_equal(swin.compute(clips)["data"], expected)
    spec = swin.spec
    file = root / weights_folder(SWIN) / "model.safetensors"
    assert spec.params["weights"] == "pretrained" and spec.params["weights_sha256"] == sha256_of(file)
    assert spec.model_id == f"timm/{SWIN}" and spec.params["model"] == SWIN
    assert spec.params["model_kwargs"]["depths"] == [1, 1, 1, 1]


def test_shapes_dtype_and_spec(swin):
    data = swin.compute(frames(2))["data"]
    spec = swin.spec
    assert data.shape == (2, T, (S // 32) ** 2, 192) == (2, *spec.clip_shape(T, S))
    assert data.dtype == np.float16 and np.isfinite(data).all() and np.abs(data).sum() > 0
    assert spec.name == "sif" and spec.grid is Grid.PATCH and spec.loss == "l1" and spec.dtype == "float16"
    assert spec.clip_shape(4, 224) == (4, 49, 192)
    assert spec.params["input_size"] == 64 and spec.params["grid"].startswith("2x2 -> S/32")


def test_deterministic_batch_independent_and_per_frame_equal(swin_dir, swin):
    root, _ = swin_dir
    clips = frames(3, seed=1)
    data = swin.compute(clips)["data"]
    np.testing.assert_array_equal(data, swin.compute(clips)["data"])
    alone = np.concatenate([swin.compute(clips[i:i + 1])["data"] for i in range(3)])
    np.testing.assert_allclose(alone.astype(np.float32), data.astype(np.float32), rtol=0, atol=2e-3)
    per_frame = build_sif("timm", model=SWIN, weights_dir=root, model_kwargs=TINY_SWIN, precision="fp32", batch_size=1)
    np.testing.assert_allclose(per_frame.compute(clips)["data"].astype(np.float32), data.astype(np.float32),
                               rtol=0, atol=2e-3)
    assert per_frame.spec.target_id == swin.spec.target_id  # batch size is not a value setting


def test_default_is_pre_norm_like_transformers_hidden_states_and_norm_is_an_option(swin_dir, swin):
    root, model = swin_dir
    clips = frames(1)
    stage = last_stage(model, model.layers[-1], normalised(clips))
    with torch.no_grad():
        normed = model.norm(stage)
    normed_target = build_sif("timm", model=SWIN, weights_dir=root, model_kwargs=TINY_SWIN, precision="fp32", norm=True)
    pre, post = swin.compute(clips)["data"], normed_target.compute(clips)["data"]
    np.testing.assert_array_equal(pre.reshape(T, 4, -1), stage.flatten(1, 2).numpy().astype(np.float16))
    np.testing.assert_allclose(post.reshape(T, 4, -1).astype(np.float32), normed.flatten(1, 2).numpy(), atol=2e-3)
    assert np.abs(pre.astype(np.float32) - post.astype(np.float32)).max() > 0.1
    assert swin.spec.params["norm"] is False and "before the final norm" in swin.spec.params["features"]
    assert normed_target.spec.target_id != swin.spec.target_id


def test_deit_14x14_tokens_are_avg_pooled_to_7x7_and_recorded():
    kwargs = dict(embed_dim=32, depth=1, num_heads=1)
    target = build_sif("timm", model="deit_base_distilled_patch16_224.fb_in1k", weights="random",
                       model_kwargs=kwargs, precision="fp32")
    assert "14x14 -> 7x7 avg-pool" in target.spec.params["grid"]
    assert target.spec.model_id == "random:deit_base_distilled_patch16_224"
    clips = frames(1, size=224, num_frames=2)
    data = target.compute(clips)["data"]
    assert data.shape == (1, 2, 49, 32)
    model = target.extractor.model
    tokens = last_stage(model, model.blocks[-1], normalised(clips))[:, model.num_prefix_tokens:]  # no cls/dist
    grid = tokens.reshape(2, 7, 2, 7, 2, 32).mean(dim=(2, 4)).reshape(2, 49, 32)  # 2x2 cells per patch
    np.testing.assert_allclose(data[0].astype(np.float32), grid.numpy(), atol=2e-3)


def test_resnet_last_stage_is_7x7x2048_and_has_no_final_norm():
    kwargs = dict(layers=(1, 1, 1, 1))
    target = build_sif("timm", model="resnet50.tv_in1k", weights="random", model_kwargs=kwargs, precision="fp32")
    normed = build_sif("timm", model="resnet50.tv_in1k", weights="random", model_kwargs=kwargs, precision="fp32",
                       norm=True)
    assert target.spec.clip_shape(2, 224) == (2, 49, 2048)
    assert "7x7 -> 7x7 identity" in target.spec.params["grid"]
    clips = frames(1, size=224, num_frames=2)
    data = target.compute(clips)["data"]
    assert np.isfinite(data).all()
    np.testing.assert_array_equal(data, normed.compute(clips)["data"])
    small = target.compute(frames(1, size=64, num_frames=2))["data"]  # resized to 224, 7x7 -> 2x2 bilinear
    assert small.shape == (1, 2, 4, 2048) and np.isfinite(small).all()


def test_precision_is_recorded_in_the_spec_and_auto_resolves_per_device(monkeypatch):
    def build(precision: str):
        return build_sif("timm", model=SWIN, weights="random", model_kwargs=TINY_SWIN, precision=precision)

    fp32, bf16 = build("fp32"), build("bf16")
    assert (fp32.spec.params["precision"], bf16.spec.params["precision"]) == ("fp32", "bf16")
    assert fp32.spec.target_id != bf16.spec.target_id  # bf16 changes the values, so it changes the id
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)  # a CPU without AMX, as this one
    auto = build("auto")
    assert auto.spec.params["precision"] == "fp32" and auto.spec.target_id == fp32.spec.target_id
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        build("fp16")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = patch_grid.seeded_init(lambda: timm.create_model(SWIN, **TINY_SWIN))
    b = patch_grid.seeded_init(lambda: timm.create_model(SWIN, **TINY_SWIN))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    target = build_sif("timm", model=SWIN, weights="random", model_kwargs=TINY_SWIN)
    assert target.spec.params["weights"] == "random" and "weights_sha256" not in target.spec.params
    assert target.spec.model_id == "random:swin_tiny_patch4_window7_224"


def test_missing_weights_name_the_path_and_the_source(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        build_sif("swin-b-in22k", weights_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "timm" / DEFAULT_MODEL) in message
    assert f"https://huggingface.co/timm/{DEFAULT_MODEL}" in message
    (tmp_path / "timm" / DEFAULT_MODEL).mkdir(parents=True)
    (tmp_path / "timm" / DEFAULT_MODEL / "README.md").write_text("no weights here")
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        build_sif("swin-b-in22k", weights_dir=tmp_path)


def test_a_file_for_another_model_is_refused(swin_dir, tmp_path):
    _, model = swin_dir
    folder = tmp_path / weights_folder("resnet50.tv_in1k")
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(TargetUnavailableError, match="does not hold resnet50.tv_in1k weights"):
        build_sif("timm", model="resnet50.tv_in1k", weights_dir=tmp_path, model_kwargs=dict(layers=(1, 1, 1, 1)))


def test_paper_extractors_have_weights_entries_and_names_resolve():
    for name in PAPER_EXTRACTORS:
        entry = weights_entry(f"timm/{name}")
        assert entry.relative_path == f"timm/{name}" and entry.is_directory
        assert entry.source == f"https://huggingface.co/timm/{name}" and entry.used_by.startswith("sif:")
        assert timm.is_model(name.split(".")[0])
    assert weights_entry(f"timm/{DEFAULT_MODEL}").used_by == "sif:swin-b-in22k"


def test_option_errors():
    with pytest.raises(TargetUnavailableError, match="model="):
        build_sif("timm")
    with pytest.raises(UnknownTargetError, match="unknown timm model"):
        build_sif("timm", model="not_a_model")
    with pytest.raises(UnknownTargetError):
        build_sif("timm", model="hf-hub:timm/resnet50.a1_in1k")
    with pytest.raises(ValueError, match="use sif:timm"):
        build_sif("swin-b-in22k", model="resnet50")
    assert issubclass(MissingWeightsError, MvmTargetsError) and issubclass(TargetUnavailableError, MvmTargetsError)


def test_frames_are_checked(swin):
    with pytest.raises(ValueError, match="multiple of 32"):
        swin.compute(np.zeros((1, 2, 48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        swin.compute(np.zeros((1, 2, 64, 64, 3), np.float32))
    assert swin.compute(np.zeros((0, 2, 64, 64, 3), np.uint8))["data"].shape == (0, 2, 4, 192)


def test_target_pickles_without_its_network(swin):
    clips = frames(1)
    payload = pickle.dumps(swin)
    assert len(payload) < 20_000  # the weights stay behind; the copy loads them (once) itself
    np.testing.assert_array_equal(pickle.loads(payload).compute(clips)["data"], swin.compute(clips)["data"])


def test_resampling_rule():
    assert patch_grid.resample_method((7, 7), (7, 7)) == "identity"
    assert patch_grid.resample_method((14, 14), (7, 7)) == "avg-pool"
    assert patch_grid.resample_method((7, 7), (2, 2)) == "bilinear"
    assert patch_grid.resample_method((7, 7), (14, 14)) == "bilinear"
    features = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pooled = patch_grid.to_patch_grid(features, 2)  # (N, 4, C)
    expected = features.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, expected)
    assert patch_grid.to_patch_grid(features, 3).shape == (2, 9, 3)


def test_bf16_teacher_resamples_to_a_smaller_grid(swin_dir):
    """bf16 autocast (auto on CPUs with AMX) must not reach the antialiased resize, which has no bf16 kernel."""
    root, _ = swin_dir
    target = build_sif("timm", model=SWIN, weights_dir=root, model_kwargs=TINY_SWIN, precision="bf16")
    frames = np.random.default_rng(0).integers(0, 255, (1, 2, 64, 64, 3), dtype=np.uint8)
    data = target.compute(frames)["data"]
    assert data.shape == (1, 2, 4, target.spec.clip_shape(2, 64)[-1])
    assert np.isfinite(data.astype(np.float32)).all()
