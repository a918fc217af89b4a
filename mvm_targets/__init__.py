"""mvm_targets: decode videos once, compute VIOLETv2's masked-visual-modeling targets, cache them
in crash-safe, self-describing HDF5 shards, and read them back by key."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("mvm-targets")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
