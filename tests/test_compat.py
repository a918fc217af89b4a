"""The torchvision compatibility step: torchvision, timm and RAFT import and run on this torch."""

from __future__ import annotations

import torch

from mvm_targets._compat import import_torchvision


def test_torchvision_imports_and_pure_pytorch_models_run():
    torchvision = import_torchvision()
    from torchvision.models.optical_flow import raft_small

    model = raft_small(weights=None).eval()
    frames = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.inference_mode():
        flows = model(frames, frames, num_flow_updates=2)
    assert flows[-1].shape == (1, 2, 128, 128) and torchvision.__version__


def test_timm_imports_after_the_step():
    import_torchvision()
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 512)
