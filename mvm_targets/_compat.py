"""One compatibility step for a CUDA-built torchvision next to a CPU-only torch.

The registry's torchvision 0.28.0 wheel is built against CUDA torch. Next to the CPU build of
torch 2.13.0 its C++ extension cannot load, and `import torchvision` then dies in
`torchvision/_meta_registrations.py` with "operator torchvision::nms does not exist", because that
module registers fake kernels for `nms`/`qnms` unconditionally. This breaks timm and the image
classes of transformers, which import torchvision.

The fix declares only the two missing operator *schemas*, so that the import completes. It adds
no kernels: torchvision's compiled ops (nms, roi_align, deform_conv2d, ...) stay unavailable and
torchvision itself reports that clearly if called. Everything pure-PyTorch (RAFT, transforms,
model builders) works. The step runs only on that exact error; any other failure propagates.
"""

from __future__ import annotations

import sys

_MISSING_OP_ERROR = "operator torchvision::nms does not exist"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_schema_library = None  # kept alive: dropping the Library object would unregister the schemas


def import_torchvision():
    """Import torchvision, declaring the missing op schemas only if the known failure occurs."""
    global _schema_library
    try:
        import torchvision
    except RuntimeError as error:
        if _MISSING_OP_ERROR not in str(error):
            raise
        import torch

        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]  # the failed import left half-initialised modules behind
        _schema_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            _schema_library.define(schema)
        import torchvision
    return torchvision


def torchvision_has_compiled_ops() -> bool:
    """True when torchvision's C++ extension loaded (False after the compatibility step)."""
    import torchvision.extension

    return torchvision.extension._has_ops()
