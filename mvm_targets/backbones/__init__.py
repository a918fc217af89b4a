"""Trainable backbones shared by the teachers and the VIOLET student (Video Swin Transformer)."""

from mvm_targets.backbones.video_swin import (
    VIDEO_SWIN_PRESETS,
    SwinTransformer3D,
    VideoSwinConfig,
    build_video_swin,
    video_swin_config,
)
from mvm_targets.backbones.video_swin_weights import (
    CheckpointMismatchError,
    load_official_checkpoint,
    load_torchvision_state_dict,
)

__all__ = [
    "VIDEO_SWIN_PRESETS", "CheckpointMismatchError", "SwinTransformer3D", "VideoSwinConfig", "build_video_swin",
    "load_official_checkpoint", "load_torchvision_state_dict", "video_swin_config",
]
