"""Synthetic video-text data with known ground truth: shapes that move, rotate, grow, shrink, appear and
disappear over drifting textures, with captions, retrieval splits and QA derived from the true content.

Entry point: `build_synthetic_dataset(out_dir, clips, seed, ...)`, which the `mvmtargets synth` CLI calls.
"""

from .build import GENERATOR_VERSION, SynthSummary, build_synthetic_dataset

__all__ = ["GENERATOR_VERSION", "SynthSummary", "build_synthetic_dataset"]
