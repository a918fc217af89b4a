"""Every registered target, every variant: the contract the store and the trainer rely on.

Teachers are built with random weights, so every target is covered whatever weights this machine
holds. Their forward passes cost minutes on a CPU in all, so the compute checks of targets that run a
model are opt-in (MVM_CONTRACT_TEACHERS=1) and say so when skipped; their spec checks always run.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest

from mvm_targets.errors import MvmTargetsError
from mvm_targets.show import grid_pictures, target_images
from mvm_targets.targets import (ALIASES, Target, UnknownTargetError, build_target, canonical_name, list_targets,
                                 list_variants)
from mvm_targets.targets.registry import factory_parameters, is_default_variant
from mvm_targets.targets.spec import ClipScope, Grid, PaperScaling, StoredSpec, ref_key
from mvm_targets.teachers import runtime

T, S = 3, 64
ROOT = Path(__file__).resolve().parents[1]
REFS = [f"{name}:{variant}" for name in list_targets() for variant in list_variants(name)]
# A few factories cannot pick a model by themselves; these small ones keep their tests cheap.
TEST_OPTIONS = {"sif:timm": {"model": "resnet18"}, "feat:timm": {"model": "resnet18"},
                "feat:hf": {"model": "resnet18"}}
RUN_TEACHERS = os.environ.get("MVM_CONTRACT_TEACHERS") == "1"

# Target ids before targets declared clip scope, paper scaling, derivation and pictures (computed with
# `mvmtargets list` and `build_target(ref, weights="random").spec.target_id` before those fields
# existed): declarations are not in `config_hash()`, so existing caches stay valid.
IDS_BEFORE_DECLARATIONS = {
    "pixel:rgb": "pixel-rgb-53a56909",
    "hog:paper": "hog-paper-9c6d5437",
    "hog:maskfeat": "hog-maskfeat-a774a148",
    "flow:dis": "flow-dis-656ec163",
    "palette:truth": "palette-truth-6980f908",
    # random-weight teachers: their ids depend on settings and the weights mode, not on weight files
    "depth:dpt-large": "depth-dpt-large-fb74076a",
    "depth:dpt-hybrid": "depth-dpt-hybrid-dd88e544",
    "depth:paper": "depth-paper-b05cc058",
    "flow:raft": "flow-raft-a1c4dc42",
    "vq:v2": "vq-v2-b346d0f8",
    "vq:v1": "vq-v1-90bef166",
    "sif:swin-b-in22k": "sif-swin-b-in22k-8aec1e99",
    "sif:timm": "sif-timm-5ae64027",
    "tvf:k600": "tvf-k600-afbecb6f",
    "tvf:k400": "tvf-k400-ff0ecdd7",
    "mmf:vit-b32": "mmf-vit-b32-f0bfbe7f",
    "mmf:vit-b16": "mmf-vit-b16-7a448818",
}


def options_for(ref: str) -> dict:
    options = dict(TEST_OPTIONS.get(ref, {}))
    if "weights" in factory_parameters(ref):
        options["weights"] = "random"
    return options


_BUILT: dict[str, Target | MvmTargetsError] = {}


def build(ref: str) -> Target:
    """Each target once per test run: some teachers instantiate their network when built (seconds each)."""
    if ref not in _BUILT:
        try:
            _BUILT[ref] = build_target(ref, **options_for(ref))
        except MvmTargetsError as error:
            _BUILT[ref] = error
    built = _BUILT[ref]
    if isinstance(built, MvmTargetsError):
        pytest.skip(f"{ref} cannot be built here even with random weights: {built}")
    return built


def clips(batch: int, seed: int = 0, size: int = S) -> np.ndarray:
    """(B, T, S, S, 3) uint8: smooth moving textures, so gradients and flow are non-trivial."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, 1, size // 8 + 2, size // 8 + 2, 3))
    up = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    frames = np.concatenate([np.roll(up, 2 * t, axis=3)[:, :, :size, :size] for t in range(T)], axis=1)
    return (frames * 255).astype(np.uint8)


@pytest.fixture(params=REFS)
def target(request) -> Target:
    return build(request.param)


@pytest.fixture(params=REFS)
def computed(request) -> Target:
    """Targets whose compute checks run here: every target without a teacher model; teachers on request."""
    target = build(request.param)
    if target.spec.model_id is not None and not RUN_TEACHERS:
        pytest.skip(f"{request.param} runs a teacher model (random weights take seconds to minutes on a CPU); "
                    f"set MVM_CONTRACT_TEACHERS=1 to run its compute checks")
    return target


# ---- the spec -----------------------------------------------------------------------------------

def test_spec_is_complete_and_consistent(target):
    spec = target.spec
    assert isinstance(target, Target)
    assert spec.name in list_targets() and spec.variant in list_variants(spec.name)
    assert isinstance(spec.grid, Grid) and spec.loss in ("l1", "l2", "ce") and spec.version >= 1
    assert spec.target_id.startswith(f"{spec.name}-{spec.variant}-") and len(spec.config_hash()) == 8
    assert isinstance(spec.clip_scope, ClipScope)
    assert spec.frames_needed in (1, 2) and (spec.frames_needed == 2) == (spec.clip_scope is ClipScope.PAIR)
    assert spec.paper_scaling is None or isinstance(spec.paper_scaling, PaperScaling)
    assert spec.stored == (spec.derive is None)
    shape = spec.clip_shape(4, 224)
    if spec.grid is Grid.PATCH:  # the 7 x 7 grid of 32-px patches: (T, 49, D) features or (T, 7, 7) ids
        assert shape[-2] == 49 or shape[-2:] == (7, 7)
    if spec.grid is Grid.TOKEN:  # the 28 x 28 grid of 8-px cells
        assert shape[-2:] == (28, 28)
    if spec.grid is Grid.DENSE:
        assert shape[-2:] == (224, 224)
    assert shape[0] == 4 - spec.frames_needed + 1


def test_stamped_record_reads_back_as_the_same_stored_spec(target):
    spec = target.spec
    record = json.loads(spec.to_json(4, 224))
    stored = StoredSpec.from_record(record, declarations=False)  # nothing may come from the module
    assert stored == spec.stored_spec(4, 224)
    assert (stored.name, stored.variant, stored.target_id, stored.grid) == (spec.name, spec.variant,
                                                                             spec.target_id, spec.grid)
    assert stored.clip_shape == spec.clip_shape(4, 224) and stored.clip_scope is spec.clip_scope
    assert stored.paper_scaling == spec.paper_scaling and stored.stored == spec.stored
    assert stored.default_variant == is_default_variant(spec.name, spec.variant)
    assert stored.matches(spec.target_id) and stored.matches(f"{spec.name}:{spec.variant}")
    assert stored.matches(spec.name) == stored.default_variant
    assert stored.needs_video == (spec.clip_scope is not ClipScope.FRAME)


def test_target_ids_did_not_change(target, monkeypatch):
    ref = f"{target.spec.name}:{target.spec.variant}"
    if ref not in IDS_BEFORE_DECLARATIONS:
        pytest.skip(f"{ref} was added after the declarations; no earlier id to compare with")
    if "precision" in factory_parameters(ref):
        # A teacher's "auto" precision, part of its id, depends on the CPU (bf16 where bf16 autocast helps,
        # i.e. with AMX); the ids above were recorded on such a CPU, so build as it did.
        monkeypatch.setattr(runtime, "bf16_autocast_helps", lambda device: True)
        target = build_target(ref, **options_for(ref))
    assert target.spec.target_id == IDS_BEFORE_DECLARATIONS[ref]


def test_declarations_do_not_change_the_id(target):
    """Every declaration may change without moving the target to a new folder."""
    import dataclasses

    spec = target.spec
    changed = dataclasses.replace(spec, paper_scaling=PaperScaling("sum", 7.0), picture=lambda d, s: [],
                                  clip_scope=ClipScope.CLIP, normalize_as_input=not spec.normalize_as_input)
    assert changed.target_id == spec.target_id


# ---- computing ----------------------------------------------------------------------------------

def test_output_shape_dtype_and_finite_values(computed):
    out = computed.compute(clips(2))
    data = out["data"]
    assert data.shape == (2, *computed.spec.clip_shape(T, S))
    assert data.dtype == np.dtype(computed.spec.dtype)
    for name, array in out.items():
        assert array.shape[0] == 2, name
        if array.dtype.kind == "f":
            assert np.isfinite(array).all(), name
    assert np.abs(data.astype(np.float64)).sum() > 0  # real content gives a non-zero target


def test_deterministic(computed):
    first, second = computed.compute(clips(2)), computed.compute(clips(2))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_batch_independent(computed):
    batch = clips(3, seed=1)
    together = computed.compute(batch)
    for i in range(3):
        alone = computed.compute(batch[i:i + 1])
        for name in together:
            np.testing.assert_array_equal(together[name][i], alone[name][0])


def test_derived_targets_are_their_compute(computed):
    """A target that is never stored is read back as `derive(frames)`: that must be what it computes."""
    spec = computed.spec
    if spec.stored:
        pytest.skip(f"{spec.name}:{spec.variant} is stored, nothing is derived")
    frames = clips(2, seed=4)
    data = computed.compute(frames)["data"]
    for i in range(2):
        derived = spec.derive(frames[i])
        assert derived.shape == spec.clip_shape(T, S) and derived.dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(derived, data[i])


def test_pictures_are_one_rgb_image_per_frame_or_pair(computed):
    spec = computed.spec
    data = computed.compute(clips(1, seed=2))["data"][0]
    stored = spec.stored_spec(T, S)
    pictures = target_images(stored, data, S)
    assert len(pictures) == data.shape[0] == T - spec.frames_needed + 1
    for picture in pictures:
        assert picture.shape == (S, S, 3) and picture.dtype == np.uint8
    if spec.picture is not None:  # the declared picture is the one drawn
        for got, want in zip(pictures, spec.picture(data, S)):
            np.testing.assert_array_equal(got, want)
    elif stored.grid is not Grid.DENSE or data.ndim == 3 or data.shape[1] == 1:
        assert [p.shape for p in grid_pictures(stored, data, S)] == [(S, S, 3)] * len(pictures)


# ---- references ---------------------------------------------------------------------------------

def test_config_hash_changes_with_values_affecting_settings():
    assert build_target("hog:paper").spec.target_id != build_target("hog:maskfeat").spec.target_id


def test_aliases_resolve_to_registered_names():
    for alias, name in ALIASES.items():
        assert canonical_name(alias) == name


def test_unknown_name_lists_the_known_names():
    known = ", ".join(list_targets())
    with pytest.raises(UnknownTargetError, match=rf"unknown target 'hgo'; known targets: {known}"):
        build_target("hgo")
    name = list_targets()[0]
    with pytest.raises(UnknownTargetError, match=rf"unknown variant 'fancy' for target '{name}'"):
        build_target(f"{name}:fancy")


@pytest.mark.parametrize("ref, key", [
    ("hog", "hog"),  # metric names of existing runs (`mvm_hog`, `mvm_flow_dis`) stay valid
    ("flow:dis", "flow_dis"),
    ("hog:maskfeat", "hog_maskfeat"),
    ("sif:swin-b-in22k", "sif_swin_b_in22k"),
    ("flow-dis-656ec163", "flow_dis_656ec163"),
    ("depth:v2.1 x/y", "depth_v2_1_x_y"),
])
def test_ref_key_is_the_one_file_safe_form(ref, key):
    assert ref_key(ref) == key
    assert ref_key(key) == key  # a key is its own key


def test_every_ref_key_is_an_identifier_and_refs_do_not_collide():
    keys = [ref_key(ref) for ref in REFS]
    assert all(key.isidentifier() or key.replace("_", "a").isalnum() for key in keys)
    assert len(set(keys)) == len(keys)


# ---- nothing outside a target's module knows its name --------------------------------------------

def _string_literals(path: Path) -> list[tuple[int, str]]:
    """String constants of a Python file, without docstrings (comments are not tokens of the AST)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((node.lineno, node.value))
    # f-string pieces are Constants inside JoinedStr and are covered above; tokenize double-checks that
    # the file has no string tokens the AST walk could miss (e.g. implicit concatenation keeps one node)
    list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    return found


def test_trainer_and_harness_code_never_names_a_target():
    names = set(list_targets()) | set(ALIASES)
    offenders = []
    for package in ("violet_core", "ablations"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, value in _string_literals(path):
                stripped = value.strip()
                if stripped in names or any(stripped.startswith(f"{n}:") or stripped.startswith(f"{n}/")
                                            for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not offenders, "target names in trainer/harness code:\n" + "\n".join(offenders)


def test_the_store_resolves_references_without_importing_target_modules(tmp_path):
    """Writes two sets of one target, then resolves a bare name in a fresh interpreter."""
    from mvm_targets.store.shard_set import ClipRecord, ShardSet

    hog_paper, hog_feat = build_target("hog:paper"), build_target("hog:maskfeat")
    frames = clips(1)
    root = tmp_path / "cache" / "toy" / "frames-t3-s64-0000"
    for target in (hog_paper, hog_feat):
        data = target.compute(frames)["data"][0]
        record = ClipRecord(key="a", data=data, frame_indices=np.arange(T), timestamps=np.arange(T, dtype=float),
                            source={"key": "a"})
        ShardSet(root / target.spec.target_id).commit([record], {"target_spec": target.spec.to_json(T, S)}, None)
    script = (
        "import sys; from pathlib import Path; from mvm_targets.store.layout import ClipCache\n"
        f"cache = ClipCache(Path({str(root)!r}))\n"
        "print(cache.resolve_target('hog').set_id, cache.resolve_target('hog:maskfeat').set_id)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mvm_targets.targets.') and "
        "m.rsplit('.', 1)[1] not in ('spec', 'registry')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids, modules = done.stdout.strip().splitlines()
    assert ids == f"{hog_paper.spec.target_id} {hog_feat.spec.target_id}"
    assert modules == "[]"


def test_old_records_resolve_a_bare_name_only_when_one_set_has_it(tmp_path):
    from mvm_targets.errors import InputError
    from mvm_targets.store.layout import ClipCache
    from mvm_targets.store.shard_set import ClipRecord, ShardSet

    root = tmp_path / "frames-t3-s64-0000"
    targets = [build_target("hog:paper"), build_target("hog:maskfeat")]
    for i, target in enumerate(targets):
        record = json.loads(target.spec.to_json(T, S))
        del record["default_variant"]  # as written before records said which variant is the default
        data = target.compute(clips(1))["data"][0]
        ShardSet(root / target.spec.target_id).commit(
            [ClipRecord(key="a", data=data, frame_indices=np.arange(T), timestamps=np.arange(T, dtype=float),
                        source={"key": "a"})], {"target_spec": json.dumps(record)}, None)
        cache = ClipCache(root)
        if i == 0:
            assert cache.resolve_target("hog").set_id == target.spec.target_id
    with pytest.raises(InputError, match="matches several configurations"):
        ClipCache(root).resolve_target("hog")
    assert ClipCache(root).resolve_target("hog:maskfeat").set_id == targets[1].spec.target_id
