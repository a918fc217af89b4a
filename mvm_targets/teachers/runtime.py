"""How teachers run: device choice, bf16 autocast where it pays, inference mode, load once.

Every teacher target calls `load_teacher(key, build)` so that one process builds each network
once, however many targets or batches use it, and runs it through `run_batched`, which splits
the input into chunks, disables autograd and applies the autocast policy. On CUDA `run_batched`
also keeps the device busy (docs/method.md §4): inputs travel from pinned host memory on a side
stream, the next chunk's copy overlapping the current chunk's compute, and results are cast on the
device to the dtype they are stored in before one copy back each, with one synchronisation at the
end. Two runtime settings change only speed, never a target id: `channels_last` (convolutional
teachers' weights in NHWC layout, on CUDA by default) and `compile` (torch.compile of the forward).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

_TEACHERS: dict[tuple, torch.nn.Module] = {}


DEVICE_AUTO = "auto"


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """`"cuda"` / `"cuda:1"` / `"cpu"` / `"auto"` (CUDA where present, else the CPU); a one-line
    error when CUDA is asked for but absent."""
    if device == DEVICE_AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available on this machine")
    return resolved


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """bf16 matmuls are fast on CPUs with AMX tiles (Sapphire Rapids and later); elsewhere they are not.

    Read from the kernel's CPU flags (torch exposes no stable query for it).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags.split()


def bf16_autocast_helps(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_amx()


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """A teacher's effective precision: "fp32" or "bf16" ("auto": bf16 where `bf16_autocast_helps`).

    Targets record the result in `spec.params["precision"]` (bf16 changes the values, so it is part
    of the target id) and pass `bf16=(precision == "bf16")` to `run_batched`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        return "bf16" if bf16_autocast_helps(torch.device(device)) else "fp32"
    return precision


@contextlib.contextmanager
def inference(device: torch.device, bf16: bool | None = None) -> Iterator[None]:
    """No autograd; bf16 autocast when `bf16` is True, or by default where it helps."""
    use_bf16 = bf16_autocast_helps(device) if bf16 is None else bf16
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        yield


def load_teacher(key: tuple, build: Callable[[], torch.nn.Module], channels_last: bool = False) -> torch.nn.Module:
    """Build a teacher once per process (keyed by everything that defines it), frozen in eval mode.

    channels_last: store its 4-D weights in NHWC layout, which cuDNN's fastest convolutions read
    (and then produce NHWC activations); a separate copy from the default-layout one, so a caller
    asking for either layout gets it.
    """
    if channels_last:
        key = (*key, "channels_last")
    teacher = _TEACHERS.get(key)
    if teacher is None:
        teacher = build().eval()
        if channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        _TEACHERS[key] = teacher
    return teacher


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def as_flag(value: bool | int | str, name: str) -> bool:
    """A boolean option; CLI options arrive as strings (`-o depth.compile=true`), and "false" is truthy."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError(f"{name} must be true or false, got '{value}'")
        return lowered in _TRUE
    return bool(value)


def resolve_channels_last(value: bool | str | None, device: str | torch.device) -> bool:
    """The `channels_last` setting: None or "auto" means on CUDA (where cuDNN's NHWC kernels are the
    fast ones) and off elsewhere; true / false force it."""
    if value is None or (isinstance(value, str) and value.strip().lower() == DEVICE_AUTO):
        return torch.device(device).type == "cuda"
    return as_flag(value, "channels_last")


# compiled forwards, keyed like the probe memo: a new wrapper per call would not reuse dynamo's cache
_COMPILED: dict[tuple, Callable] = {}
# keyword arguments of that torch.compile call (e.g. a benchmark's {"backend": "eager"} on a CPU)
COMPILE_OPTIONS: dict[str, Any] = {}


def compiled(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`torch.compile(fn)`, built once per function (by `_function_key`: the code and the objects it
    holds). The wrapper keeps those objects alive, so their ids cannot be reused by others."""
    key = _function_key(fn)
    wrapper = _COMPILED.get(key)
    if wrapper is None:
        wrapper = _COMPILED[key] = torch.compile(fn, **COMPILE_OPTIONS)
    return wrapper


def forget_teachers() -> None:
    """Drop every loaded teacher, compiled forward and probe result, so that their memory can go
    (a benchmark measuring one teacher after another)."""
    _TEACHERS.clear()
    _COMPILED.clear()
    _ELEMENTS_PER_ITEM.clear()


# CUDA kernels index with 32-bit ints: several (upsample_bilinear2d_nhwc, some convolutions) refuse a
# tensor of more elements than this, so no chunk may make one.
INT_MAX_ELEMENTS = 2**31 - 1
# Devices whose kernels have that limit; CPU kernels index with 64 bits, so there a chunk is never
# split and no probe forward runs.
INDEX_LIMITED_DEVICES = frozenset({"cuda"})

# largest tensor (elements) one input item makes inside `fn`, measured once per (fn, item shape, ...)
_ELEMENTS_PER_ITEM: dict[tuple, int] = {}


def safe_chunk_size(batch_size: int, elements_per_item: int, limit: int = INT_MAX_ELEMENTS) -> int:
    """The largest chunk <= `batch_size` whose largest tensor (`elements_per_item` per item, growing
    linearly with the chunk) stays within `limit` elements; at least 1 (one item cannot be split)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if elements_per_item <= 0:
        return batch_size
    return max(1, min(batch_size, limit // elements_per_item))


def run_batched(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int,
                device: torch.device, bf16: bool | None = None, elements_per_item: int | None = None, *,
                out_dtype: torch.dtype = torch.float32, compile: bool = False,
                pipelined: bool | None = None) -> torch.Tensor:
    """Apply `fn` to `inputs` (N, ...) in chunks of at most `batch_size` on `device`; results on the CPU.

    out_dtype: the dtype the results are returned in, cast on `device` from what `fn` returns (float32
    by default; float16 for a target stored in float16, so that half the bytes travel back; a
    float16 cast rounds to nearest even, as numpy's does). compile: run `torch.compile(fn)` (the
    probe below runs `fn` itself). pipelined: None means on CUDA; see `_run_pipelined`.

    On CUDA a chunk is made smaller still when its largest tensor would pass `INT_MAX_ELEMENTS`:
    `elements_per_item` (the largest activation one input item makes) is that size when the caller
    knows it; otherwise `fn` runs once on one item the first time and every tensor an operator
    returns inside it is measured (memoised per function, item shape, dtype, device and precision).
    """
    n = inputs.shape[0]
    if n == 0:
        return torch.zeros((0,), dtype=out_dtype)
    with inference(device, bf16):
        if device.type not in INDEX_LIMITED_DEVICES:
            elements_per_item = 0  # no limit to keep to
        elif elements_per_item is None:
            key = (_function_key(fn), tuple(inputs.shape[1:]), inputs.dtype, str(device), bf16)
            if key not in _ELEMENTS_PER_ITEM:
                _ELEMENTS_PER_ITEM[key] = largest_tensor_elements(fn, inputs[:1].to(device))
            elements_per_item = _ELEMENTS_PER_ITEM[key]
        # read at call time so a test (or a device with a lower limit) can lower it
        step = safe_chunk_size(batch_size, elements_per_item, INT_MAX_ELEMENTS)
        run = compiled(fn) if compile else fn
        if device.type == "cuda" if pipelined is None else pipelined:
            return _run_pipelined(run, inputs, step, device, out_dtype)
        outputs = []
        for start in range(0, n, step):
            chunk = inputs[start:start + step].to(device)
            outputs.append(run(chunk).to(out_dtype).cpu())
    return torch.cat(outputs)


def _run_pipelined(run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, step: int,
                   device: torch.device, out_dtype: torch.dtype) -> torch.Tensor:
    """`run` over chunks of `step` items with the transfers hidden behind compute (on CUDA).

    Inputs are pinned once so that their copies are truly asynchronous; each chunk's copy is issued
    on a side stream before the previous chunk's compute, so the two overlap; each result is cast to
    `out_dtype` on the device and copied (non-blocking) into one pinned output, read after a single
    synchronisation. Elsewhere the same order of operations runs synchronously, with equal values.
    """
    n = inputs.shape[0]
    cuda = device.type == "cuda"
    source = inputs.pin_memory() if cuda and inputs.device.type == "cpu" and not inputs.is_pinned() else inputs
    copy_stream = torch.cuda.Stream(device) if cuda else None
    compute_stream = torch.cuda.current_stream(device) if cuda else None

    def stage(start: int) -> torch.Tensor:
        with torch.cuda.stream(copy_stream) if copy_stream is not None else contextlib.nullcontext():
            return source[start:start + step].to(device, non_blocking=True)

    out: torch.Tensor | None = None
    pending = stage(0)
    for start in range(0, n, step):
        chunk = pending
        if copy_stream is not None:
            compute_stream.wait_stream(copy_stream)  # this chunk's copy only: the next is issued below
            chunk.record_stream(compute_stream)  # allocated on the copy stream, freed after its use here
        if start + step < n:
            pending = stage(start + step)
        result = run(chunk).to(out_dtype)
        if out is None:
            out = torch.empty((n, *result.shape[1:]), dtype=out_dtype, pin_memory=cuda)
        out[start:start + result.shape[0]].copy_(result, non_blocking=True)
    if compute_stream is not None:
        compute_stream.synchronize()  # the one wait: every copy back has landed in `out`
    return out


def largest_tensor_elements(fn: Callable[[torch.Tensor], Any], item: torch.Tensor) -> int:
    """Elements of the largest tensor that any operator returns while `fn(item)` runs (item: (1, ...)).

    Traced at the dispatcher (as `torch.utils.flop_counter` is), so functional calls inside a
    module's forward, such as a final `interpolate`, are seen as well as module outputs.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class _Largest(TorchDispatchMode):
        largest = item.numel()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(result):
                if isinstance(leaf, torch.Tensor):
                    self.largest = max(self.largest, leaf.numel())
            return result

    tracer = _Largest()
    with tracer:
        fn(item)
    return tracer.largest


def _function_key(fn: Callable) -> tuple:
    """What identifies `fn` across calls: targets rebuild their partials and closures per batch,
    so the key is the code and the objects it holds (the network), not the wrapper object."""
    if isinstance(fn, functools.partial):
        return ("partial", _function_key(fn.func), tuple(id(a) for a in fn.args),
                tuple(sorted((k, id(v)) for k, v in fn.keywords.items())))
    if inspect.ismethod(fn):
        return ("method", id(fn.__self__), fn.__func__)
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(id(cell.cell_contents))
            except ValueError:  # an empty cell
                cells.append(None)
        return ("function", code, tuple(cells))
    return ("object", id(fn))
