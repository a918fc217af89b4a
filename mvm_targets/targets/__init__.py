"""MVM targets: one module per target, one registry (`build_target`, `list_targets`)."""

from mvm_targets.targets.registry import (
    ALIASES,
    PAPER_TARGETS,
    TargetUnavailableError,
    UnknownTargetError,
    build_target,
    canonical_name,
    list_targets,
    list_variants,
    parse_target_ref,
    register_target,
)
from mvm_targets.targets.spec import PATCH_PX, TOKEN_PX, Grid, Target, TargetSpec

__all__ = [
    "ALIASES", "PAPER_TARGETS", "PATCH_PX", "TOKEN_PX", "Grid", "Target", "TargetSpec",
    "TargetUnavailableError", "UnknownTargetError", "build_target", "canonical_name", "list_targets", "list_variants",
    "parse_target_ref", "register_target",
]
