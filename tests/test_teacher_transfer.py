"""`run_batched`'s transfer path (pinned copies, overlap, on-device cast to the stored dtype) and the
speed-only runtime settings: on the CPU the pipelined path gives the same values as the plain one, and
a requested output dtype matches numpy's cast of the float32 result."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mvm_targets.targets.build import build_targets
from mvm_targets.teachers import runtime

CPU = torch.device("cpu")


class _ConvNet(torch.nn.Module):
    """(N, 3, 8, 8) -> (N, 4, 16, 16): a conv, a ReLU and a bilinear x2, deterministic weights."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(4, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.conv(x).relu(), scale_factor=2, mode="bilinear")


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 16])
def test_pipelined_path_gives_the_plain_path_s_values_on_the_cpu(batch_size):
    model, inputs = _ConvNet(), _inputs(10)
    plain = runtime.run_batched(model, inputs, batch_size, CPU, bf16=False, pipelined=False)
    pipelined = runtime.run_batched(model, inputs, batch_size, CPU, bf16=False, pipelined=True)
    assert pipelined.dtype == plain.dtype == torch.float32 and pipelined.device.type == "cpu"
    assert torch.equal(pipelined, plain)
    with torch.inference_mode():  # the oracle: one unchunked forward (chunking may round differently)
        expected = model(inputs)
    torch.testing.assert_close(pipelined, expected, rtol=1e-5, atol=1e-5)


def test_the_cpu_default_is_the_plain_path(monkeypatch):
    calls = []
    original = runtime._run_pipelined
    monkeypatch.setattr(runtime, "_run_pipelined", lambda *a, **k: calls.append(1) or original(*a, **k))
    runtime.run_batched(_ConvNet(), _inputs(3), 2, CPU, bf16=False)
    assert calls == []  # pinned memory and streams are CUDA's; the CPU keeps today's loop
    runtime.run_batched(_ConvNet(), _inputs(3), 2, CPU, bf16=False, pipelined=True)
    assert calls == [1]


@pytest.mark.parametrize("pipelined", [False, True])
def test_float16_output_is_numpy_s_cast_of_the_float32_result(pipelined):
    # values chosen to exercise rounding: exact halves, float16 subnormals, overflow to inf, negatives
    values = np.array([[0.0, 1.0, 1 + 2**-11, 1 + 3 * 2**-11, 3e-6, -6e-8, 65519.0, 65520.0, 1e6, -1e6,
                        0.1, -2.5]], np.float32)
    values = np.concatenate([values, np.random.default_rng(0).normal(0, 100, (5, 12)).astype(np.float32)])
    inputs = torch.from_numpy(values)
    out = runtime.run_batched(lambda x: x * 1.0, inputs, 2, CPU, bf16=False, out_dtype=torch.float16,
                              pipelined=pipelined)
    assert out.dtype == torch.float16 and out.shape == inputs.shape
    with np.errstate(over="ignore"):  # 65520 and 1e6 become inf, as they must
        expected = values.astype(np.float16)
    assert np.array_equal(out.numpy().view(np.uint16), expected.view(np.uint16))  # bit for bit, inf included


@pytest.mark.parametrize("pipelined", [False, True])
def test_integer_output_cast_to_uint16_keeps_ids(pipelined):
    logits = torch.from_numpy(np.random.default_rng(2).normal(size=(7, 9000, 2)).astype(np.float32))
    out = runtime.run_batched(lambda x: x.argmax(dim=1), logits, 3, CPU, bf16=False, out_dtype=torch.uint16,
                              pipelined=pipelined)
    assert out.dtype == torch.uint16
    assert np.array_equal(out.numpy(), logits.numpy().argmax(axis=1).astype(np.uint16))


def test_empty_input_gives_an_empty_result_of_the_asked_dtype():
    out = runtime.run_batched(lambda x: x, torch.zeros(0, 3), 4, CPU, out_dtype=torch.float16)
    assert out.shape == (0,) and out.dtype == torch.float16


def test_flags_and_channels_last_default():
    assert runtime.as_flag("true", "compile") is True and runtime.as_flag("Off", "compile") is False
    assert runtime.as_flag(1, "compile") is True
    with pytest.raises(ValueError, match="compile must be true or false, got 'maybe'"):
        runtime.as_flag("maybe", "compile")
    assert runtime.resolve_channels_last(None, "cpu") is False and runtime.resolve_channels_last("auto", "cpu") is False
    assert runtime.resolve_channels_last("true", "cpu") is True
    if torch.cuda.is_available():
        assert runtime.resolve_channels_last(None, "cuda") is True


def test_channels_last_teacher_is_a_separate_nhwc_copy(monkeypatch):
    monkeypatch.setattr(runtime, "_TEACHERS", {})
    plain = runtime.load_teacher(("net",), _ConvNet)
    nhwc = runtime.load_teacher(("net",), _ConvNet, channels_last=True)
    assert nhwc is not plain and runtime.load_teacher(("net",), _ConvNet, channels_last=True) is nhwc
    assert plain.conv.weight.is_contiguous()
    assert nhwc.conv.weight.is_contiguous(memory_format=torch.channels_last) and not nhwc.training
    assert not any(p.requires_grad for p in nhwc.parameters())
    inputs = _inputs(4)
    torch.testing.assert_close(runtime.run_batched(nhwc, inputs, 2, CPU, bf16=False),
                               runtime.run_batched(plain, inputs, 2, CPU, bf16=False), rtol=1e-5, atol=1e-5)


def test_compiled_functions_are_built_once_per_function(monkeypatch):
    made = []
    monkeypatch.setattr(runtime, "_COMPILED", {})
    monkeypatch.setattr(runtime, "COMPILE_OPTIONS", {"backend": "eager"})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: made.append((fn, kw)) or fn)
    model = _ConvNet()

    def forward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net(x)

    # targets make a new partial per batch: the same function and network must reuse one wrapper
    for _ in range(3):
        runtime.run_batched(functools.partial(forward, model), _inputs(2), 2, CPU, bf16=False, compile=True)
    assert len(made) == 1 and made[0][1] == {"backend": "eager"}
    runtime.run_batched(functools.partial(forward, _ConvNet()), _inputs(2), 2, CPU, bf16=False, compile=True)
    assert len(made) == 2  # another network, another compiled function


def test_speed_settings_reach_factories_and_stay_out_of_the_target_id():
    plain, = build_targets(["depth"], runtime={"weights": "random"})
    tuned, = build_targets(["depth"], runtime={"weights": "random", "compile": True, "channels_last": True})
    assert (tuned.compile, tuned.channels_last) == (True, True)
    assert (plain.compile, plain.channels_last) == (False, False)  # CPU: channels_last defaults off
    assert tuned.spec.target_id == plain.spec.target_id
    optioned, = build_targets(["depth"], runtime={"weights": "random"},
                              options={"depth": {"compile": "true", "channels_last": "false"}})
    assert (optioned.compile, optioned.channels_last) == (True, False)
    with pytest.raises(ValueError, match="compile must be true or false"):
        build_targets(["depth"], runtime={"weights": "random"}, options={"depth": {"compile": "sometimes"}})
