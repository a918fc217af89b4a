"""`vq`: DALL-E dVAE token ids (docs/method.md §4.5), the discrete target of BEiT-style MVM.

The teacher is OpenAI's dVAE encoder (`dall_e.Encoder`, 8192 codes, one token per 8 x 8 pixels).
Each frame in [0, 1] RGB goes through `map_pixels` (x * 0.8 + 0.1), the encoder gives logits
(N, 8192, h, w), and the target is their argmax, classified with cross-entropy.

Variants:
- `v2` (default): VIOLETv2, tokens of the S x S frame: (S/8)^2, 28 x 28 at 224 (token grid).
- `v1`: VIOLET v1's pre-extracted tokens: the frame down-sampled to S/4 (56^2 at 224; bilinear,
  antialiased), giving one token per 32-px patch, 7 x 7 at 224 (patch grid).
Both store `(T, h, w)` uint16 per clip (8192 codes need 13 bits).

The encoder runs in float32 everywhere: `dall_e.Conv2d` would switch to float16 on CUDA, and the
official code forces float32 too; bf16 autocast is never applied.

Weights and pickles: OpenAI publishes only `encoder.pkl`, a full pickle of the module, and
unpickling runs whatever code the file names. It is loaded only when the caller opts in
(`allow_pickle=True`, CLI `--allow-pickle`) or when its sha256 equals a published hash.
`convert_dalle_encoder` turns it, once, into `dall-e/encoder.safetensors` (tensors plus the
constructor's hyper-parameters), which needs no opt-in and is preferred when present.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PATCH_PX, PaperScaling, TOKEN_PX,
                                      TargetSpec, check_clip_batch, register_augmentation)
from mvm_targets.teachers.weights import (PRETRAINED, RANDOM, check_teacher_options, WeightsEntry, WeightsMode, register_weights,
                                          sha256_of)

if TYPE_CHECKING:
    import torch

VQ_VERSION = 1
VARIANTS = ("v2", "v1")
V1_DOWNSAMPLE = PATCH_PX // TOKEN_PX  # v1 shrinks the frame 4x, so each token covers one 32-px patch
LOGIT_LAPLACE_EPS = 0.1  # dall_e.map_pixels: x * (1 - 2 eps) + eps
HPARAM_KEYS = ("n_hid", "n_blk_per_group", "input_channels", "vocab_size")
METADATA_KEY = "dall_e_encoder_hparams"
RANDOM_SEED = 0
# OpenAI publishes no checksum for encoder.pkl. If one is ever published, put it here: a pickle
# with exactly that hash is then trusted without `allow_pickle`.
OFFICIAL_ENCODER_SHA256: str | None = None

ENCODER_PKL = register_weights(WeightsEntry(
    weights_id="dall-e-encoder", relative_path="dall-e/encoder.pkl", source="https://cdn.openai.com/dall-e/encoder.pkl",
    used_by="vq", sha256=OFFICIAL_ENCODER_SHA256))
ENCODER_SAFETENSORS = register_weights(WeightsEntry(
    weights_id="dall-e-encoder-safetensors", relative_path="dall-e/encoder.safetensors",
    source="dall-e/encoder.pkl converted by mvm_targets.targets.vq.convert_dalle_encoder (optional)", used_by="vq"))


class PickleRefusedError(MvmTargetsError):
    """A pickle file would have to be unpickled (running its code) without the user's consent."""


def vq_clip_shape_v2(num_frames: int, size: int) -> tuple[int, ...]:
    """v2 data shape per clip: (T, S/8, S/8). Named functions, not lambdas, so targets pickle."""
    return (num_frames, size // TOKEN_PX, size // TOKEN_PX)


def vq_clip_shape_v1(num_frames: int, size: int) -> tuple[int, ...]:
    """v1 data shape per clip: (T, S/32, S/32)."""
    return (num_frames, size // PATCH_PX, size // PATCH_PX)


class VQTarget:
    """DALL-E token ids: (B, T, S, S, 3) uint8 -> {"data": (B, T, h, w) uint16}.

    The encoder is loaded when the target is built (its weights hash is part of the target id) and
    kept once per process by the teacher runtime; the target object itself holds no tensors.
    """

    def __init__(self, variant: str, *, device: str | torch.device = "cpu", weights: WeightsMode = PRETRAINED,
                 weights_dir: Path | None = None, batch_size: int = 32, allow_pickle: bool = False,
                 channels_last: bool | str | None = None, compile: bool | str = False) -> None:
        from mvm_targets.teachers.runtime import as_flag, resolve_channels_last, resolve_device

        check_teacher_options("vq", variant, VARIANTS, weights, batch_size)
        self.variant, self.batch_size = variant, batch_size
        self.device = resolve_device(device)
        # speed only (NHWC convolutions, torch.compile), so not in params or the id; an id may still
        # differ where two logits tie to within rounding, as it may between two cuDNN algorithms
        self.channels_last = resolve_channels_last(channels_last, self.device)
        self.compile = as_flag(compile, "compile")
        allow_pickle = _as_bool(allow_pickle, "allow_pickle")
        self.weights_path = _pick_weights_file(weights_dir, allow_pickle) if weights == PRETRAINED else None
        encoder = self.encoder()
        hparams = encoder_hparams(encoder)
        if hparams["vocab_size"] > np.iinfo(np.uint16).max + 1:
            raise MvmTargetsError(f"vq stores uint16 ids; this encoder has {hparams['vocab_size']} codes")
        params: dict[str, Any] = {
            "input": "frame" if variant == "v2" else f"frame / {V1_DOWNSAMPLE} bilinear-antialias",
            "map_pixels_eps": LOGIT_LAPLACE_EPS, "vocab_size": hparams["vocab_size"], "weights": weights,
        }
        if self.weights_path is None:
            model_id = "random:dall-e-encoder"
        else:
            # Of the tensors, not of the file: encoder.pkl and its safetensors conversion give one id.
            params["weights_sha256"] = _state_sha256_once(str(self.weights_path), str(self.device),
                                                          self.channels_last)
            model_id = "openai:dall-e/encoder"
        grid, clip_shape = (Grid.TOKEN, vq_clip_shape_v2) if variant == "v2" else (Grid.PATCH, vq_clip_shape_v1)
        self.spec = TargetSpec(
            name="vq", variant=variant, version=VQ_VERSION, grid=grid, dtype="uint16", loss="ce",
            clip_shape=clip_shape, params=params, model_id=model_id,
            description=f"DALL-E dVAE token ids (argmax of {hparams['vocab_size']} logits), (T, h, w) uint16; "
                        + ("one per 8-px cell" if variant == "v2" else "frame down-sampled 4x, one per 32-px patch"),
            augmentation=vq_augmentation(variant, params),
            paper_scaling=PaperScaling("mean", 1.0, "released code: CE mean over masked tokens"),
        )

    def encoder(self) -> torch.nn.Module:
        """The dall_e Encoder, built once per process (and per device / weights file)."""
        from mvm_targets.teachers.runtime import load_teacher

        key = ("vq", str(self.weights_path) if self.weights_path else RANDOM, str(self.device))
        return load_teacher(key, functools.partial(_build_encoder, self.weights_path, self.device),
                            channels_last=self.channels_last)

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, *spec.clip_shape(T, S)) uint16}."""
        import torch

        from mvm_targets.teachers.runtime import run_batched

        batch, num_frames, size = check_clip_batch(frames)
        multiple = TOKEN_PX if self.variant == "v2" else PATCH_PX
        if size % multiple:
            raise ValueError(f"vq:{self.variant} needs S to be a multiple of {multiple}, got S={size}")
        flat = torch.from_numpy(frames.reshape(batch * num_frames, size, size, 3))
        downsample = 1 if self.variant == "v2" else V1_DOWNSAMPLE
        forward = functools.partial(_tokens, self.encoder(), downsample)
        # bf16=False: the dVAE is run in float32, as the official code does. The ids are cast to the
        # stored uint16 on the device (the vocabulary fits, checked when built): a quarter of int64's bytes.
        ids = run_batched(forward, flat, self.batch_size, self.device, bf16=False, out_dtype=torch.uint16,
                          compile=self.compile)
        return {"data": ids.numpy().reshape(batch, *self.spec.clip_shape(num_frames, size))}


def _tokens(encoder: torch.nn.Module, downsample: int, frames: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 on the device -> (N, h, w) token ids (int64), h = S / 8 / downsample."""
    import torch.nn.functional as F

    images = frames.permute(0, 3, 1, 2).float() / 255
    if downsample > 1:
        size = images.shape[-1] // downsample
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    images = (1 - 2 * LOGIT_LAPLACE_EPS) * images + LOGIT_LAPLACE_EPS  # dall_e.map_pixels
    return encoder(images).argmax(dim=1)  # logits (N, vocab, h, w)


def _pick_weights_file(weights_dir: Path | None, allow_pickle: bool) -> Path:
    """The converted safetensors when present, else encoder.pkl if the caller may unpickle it."""
    if ENCODER_SAFETENSORS.present(weights_dir):
        return ENCODER_SAFETENSORS.path(weights_dir)
    pkl = ENCODER_PKL.require(weights_dir)
    _check_pickle_consent(pkl, allow_pickle)
    return pkl


def _as_bool(value: bool | int | str, name: str) -> bool:
    # `-o vq.allow_pickle=false` arrives as the string "false", which is truthy.
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got '{value}'")
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _check_pickle_consent(pkl: Path, allow_pickle: bool) -> None:
    if allow_pickle is True:  # `is True`: a stray string such as "false" must not count as consent
        return
    if OFFICIAL_ENCODER_SHA256 is not None and _file_sha256_once(str(pkl)) == OFFICIAL_ENCODER_SHA256:
        return
    raise PickleRefusedError(
        f"vq would unpickle {pkl}, which runs code from that file; pass allow_pickle=True (CLI: --allow-pickle) "
        f"if you trust it, or convert it once with mvm_targets.targets.vq.convert_dalle_encoder(pkl, out, "
        f"allow_pickle=True) to {ENCODER_SAFETENSORS.relative_path}, which loads without unpickling")


def _build_encoder(path: Path | None, device: torch.device) -> torch.nn.Module:
    """Load (or, for path None, randomly initialise) a dall_e Encoder in float32 on `device`."""
    import torch

    if path is None:
        from dall_e import Encoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)  # "random" weights are the same in every process
            encoder = Encoder(requires_grad=False)
    elif path.suffix == ".safetensors":
        encoder = load_converted_encoder(path)
    else:
        encoder = _unpickle_encoder(path)
    return force_float32(encoder).to(device)


def force_float32(encoder: torch.nn.Module) -> torch.nn.Module:
    """Stop dall_e's Conv2d from casting to float16 on CUDA (its `use_float16` flag, default True)."""
    from dall_e.utils import Conv2d

    for module in encoder.modules():
        if isinstance(module, Conv2d):
            module.use_float16 = False
    return encoder


def _unpickle_encoder(path: Path) -> torch.nn.Module:
    """Unpickle a full `dall_e.Encoder`; callers check consent first (this runs the file's code)."""
    import torch
    from dall_e import Encoder

    encoder = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(encoder, Encoder):
        raise MvmTargetsError(f"{path} holds a {type(encoder).__name__}, not a dall_e.Encoder")
    return encoder


def encoder_hparams(encoder: torch.nn.Module) -> dict[str, int]:
    """The constructor arguments that define a dall_e Encoder's architecture."""
    return {key: int(getattr(encoder, key)) for key in HPARAM_KEYS}


def convert_dalle_encoder(pkl_path: Path, out_path: Path | None = None, *, allow_pickle: bool = False) -> Path:
    """Unpickle DALL-E's `encoder.pkl` once and save it as safetensors; returns the written path.

    The file holds the state dict, and its metadata the hyper-parameters (`HPARAM_KEYS`), so that
    `load_converted_encoder` rebuilds the module without unpickling. Unpickling runs code from the
    file: it needs `allow_pickle=True` (or the published hash). Default output: `encoder.safetensors`
    next to the pickle, the path the `vq` target looks for.
    """
    from safetensors.torch import save_file

    pkl_path = Path(pkl_path)
    _check_pickle_consent(pkl_path, _as_bool(allow_pickle, "allow_pickle"))
    encoder = _unpickle_encoder(pkl_path)
    out_path = Path(out_path) if out_path is not None else pkl_path.with_name("encoder.safetensors")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    save_file(state, str(tmp_path), metadata={METADATA_KEY: json.dumps(encoder_hparams(encoder))})
    tmp_path.replace(out_path)  # never leave a half-written file at the path the target loads
    return out_path


def load_converted_encoder(path: Path) -> torch.nn.Module:
    """Rebuild a dall_e Encoder from `convert_dalle_encoder`'s file (no unpickling involved)."""
    from dall_e import Encoder
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise MvmTargetsError(f"{path} has no '{METADATA_KEY}' metadata; write it with convert_dalle_encoder")
    encoder = Encoder(**json.loads(metadata[METADATA_KEY]), requires_grad=False)
    encoder.load_state_dict(load_file(str(path)))
    return encoder


@functools.lru_cache(maxsize=None)
def _file_sha256_once(path: str) -> str:
    return sha256_of(Path(path))


@functools.lru_cache(maxsize=None)
def _state_sha256_once(path: str, device: str, channels_last: bool = False) -> str:
    """sha256 over the loaded encoder's tensors (names, dtypes, shapes, bytes, in name order); the
    same for either memory layout, as each tensor is made contiguous first."""
    import torch

    from mvm_targets.teachers.runtime import load_teacher

    encoder = load_teacher(("vq", path, device), functools.partial(_build_encoder, Path(path), torch.device(device)),
                           channels_last=channels_last)
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@register_augmentation("vq")
def vq_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Flips refused: the dVAE encoder is not flip-equivariant (a mirrored 8-px cell gets another code,
    not the same one), so mirrored token ids are not the tokens of the mirrored frame. Crops keep the
    tokens of the whole frame: the encoder's receptive field reaches across token (and crop) borders."""
    return Augmentation(flip=FlipRule.REFUSE, crop=CropRule.CONTEXT,
                        note="the dVAE's tokens of a mirrored frame are not its mirrored tokens")


@register_target("vq", variants=VARIANTS)
def build_vq(variant: str, device: str = "cpu", weights: WeightsMode = PRETRAINED, weights_dir: Path | None = None,
             batch_size: int = 32, allow_pickle: bool = False, channels_last: bool | str | None = None,
             compile: bool | str = False) -> VQTarget:
    """`vq:v2` (default, 28 x 28 tokens per 224^2 frame) or `vq:v1` (7 x 7); see the module docstring.

    Options: device, weights ("pretrained" | "random"), weights_dir, batch_size (frames per forward),
    allow_pickle (trust dall-e/encoder.pkl when no converted safetensors file is present),
    channels_last (NHWC convolutions; default on CUDA) and compile (torch.compile the forward), which
    change speed only and are not in the target id.
    """
    return VQTarget(variant, device=device, weights=weights, weights_dir=weights_dir, batch_size=batch_size,
                    allow_pickle=allow_pickle, channels_last=channels_last, compile=compile)
