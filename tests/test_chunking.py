"""`run_batched` never makes a tensor of more than INT_MAX elements: it splits chunks further."""

from __future__ import annotations

import functools

import pytest
import torch

from mvm_targets.teachers import runtime

CPU = torch.device("cpu")


def test_int_max_arithmetic():
    assert runtime.INT_MAX_ELEMENTS == 2147483647
    # 128 items of 2^24 elements make exactly 2^31 elements, one more than a 32-bit index reaches
    assert runtime.safe_chunk_size(128, 2**24) == 127
    assert runtime.safe_chunk_size(64, 2**24) == 64  # 2^30 fits: the asked batch size stands
    assert runtime.safe_chunk_size(8, 2**31) == 1  # one item is never split
    assert runtime.safe_chunk_size(10, 100, limit=1000) == 10
    assert runtime.safe_chunk_size(10, 101, limit=1000) == 9
    with pytest.raises(ValueError, match="batch_size"):
        runtime.safe_chunk_size(0, 10)


class _Upsampler(torch.nn.Module):
    """(N, 3, 8, 8) -> conv to 4 channels -> bilinear x4: the largest tensor per item is 4*32*32 = 4096."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        up = torch.nn.functional.interpolate(self.conv(x), scale_factor=4, mode="bilinear", align_corners=False)
        return up.mean(1)  # (N, 32, 32)


def _recording(model, seen):
    def forward(net, x):
        seen.append(x.shape[0])
        return net(x)
    return functools.partial(forward, model)


def test_probe_measures_the_largest_tensor_inside_a_functional_call():
    model = _Upsampler()
    assert runtime.largest_tensor_elements(model, torch.zeros(1, 3, 8, 8)) == 4 * 32 * 32


@pytest.fixture
def limited_cpu(monkeypatch):
    """The CPU treated like a CUDA device with 32-bit indexing, with an empty probe memo."""
    monkeypatch.setattr(runtime, "INDEX_LIMITED_DEVICES", frozenset({"cuda", "cpu"}))
    monkeypatch.setattr(runtime, "_ELEMENTS_PER_ITEM", {})


def test_on_the_cpu_nothing_is_probed_or_split(monkeypatch):
    monkeypatch.setattr(runtime, "INT_MAX_ELEMENTS", 10)
    model, seen = _Upsampler(), []
    runtime.run_batched(_recording(model, seen), torch.rand(9, 3, 8, 8), 4, CPU, bf16=False)
    assert seen == [4, 4, 1]


def test_a_fake_limit_forces_smaller_chunks_and_outputs_match_the_unchunked_result(monkeypatch, limited_cpu):
    monkeypatch.setattr(runtime, "INT_MAX_ELEMENTS", 3 * 4096 + 100)  # room for 3 items, not 4
    model, seen = _Upsampler(), []
    inputs = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = runtime.run_batched(_recording(model, seen), inputs, 8, CPU, bf16=False)
    assert seen == [1, 3, 3, 3, 1]  # the 1-item probe, then chunks of 3 instead of 8
    with torch.inference_mode():
        expected = model(inputs)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # memoised: the same network on the same item shape is not probed again
    seen.clear()
    runtime.run_batched(_recording(model, seen), inputs[:4], 8, CPU, bf16=False)
    assert seen == [3, 1]


def test_a_hint_replaces_the_probe(monkeypatch, limited_cpu):
    monkeypatch.setattr(runtime, "INT_MAX_ELEMENTS", 1000)
    model, seen = _Upsampler(), []
    inputs = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = runtime.run_batched(_recording(model, seen), inputs, 8, CPU, bf16=False, elements_per_item=400)
    assert seen == [2, 2, 1] and not runtime._ELEMENTS_PER_ITEM
    with torch.inference_mode():
        torch.testing.assert_close(out, model(inputs), rtol=0, atol=1e-6)


def test_under_the_real_limit_the_batch_size_is_kept(limited_cpu):
    model, seen = _Upsampler(), []
    runtime.run_batched(_recording(model, seen), torch.rand(9, 3, 8, 8), 4, CPU, bf16=False)
    assert seen == [1, 4, 4, 1]
