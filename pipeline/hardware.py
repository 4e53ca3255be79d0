"""How torch runs on the machine at hand: denormal flushing, numeric precision, CUDA settings.

Plain PyTorch, no Ray. Three decisions live here so that training, evaluation and inference
make them the same way:

- **Denormals.** Trained weights drive activations into the denormal range (below about
  1e-38 in float32), where x86 CPUs take a slow microcode path: a published AOD-Net ran 20x
  slower than a fresh one. :func:`flush_denormals` sets flush-to-zero and
  denormals-are-zero. The flag is per thread, and a thread inherits it from the thread that
  creates it, so it is set when ``pipeline`` is imported (before torch's intra-op thread pool
  exists) and again at the start of each thread that trains (a Ray Tune trial's runner
  thread, a DataLoader worker).
- **Precision.** ``fp32``, ``bf16`` or ``fp16`` autocast for the backbone's forward passes;
  ``auto`` is bf16 on CUDA devices that support it and fp32 elsewhere. Parameters,
  optimiser states and checkpoints stay float32 whatever the precision.
- **CUDA.** TF32 matmuls and convolutions are allowed (float32 work on tensor cores);
  ``cudnn.benchmark`` autotunes the convolutions of fixed-size training crops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "allow_tf32", "autocast", "cudnn_autotune", "denormals_flushed", "exact_float32", "flush_denormals",
           "grad_scaler", "hide_cuda", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flush_denormals() -> bool:
    """Flush denormal floats to zero in this thread and in the threads it creates from now on.

    Returns whether the CPU supports it (x86 with SSE3, ARM). Threads that already exist keep
    their own setting, which is why this runs before torch's thread pool starts.
    """
    return torch.set_flush_denormal(True)


def denormals_flushed(threads: int | None = None) -> bool:
    """Whether every intra-op thread of this thread's torch pool treats denormals as zero.

    Multiplies a large tensor of denormal values by 1 with ``threads`` threads (default: the
    current count), so that each thread of the pool handles a slice; any slice computed by a
    thread without the flag comes back denormal, not zero. Deterministic, not timed.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        tiny = torch.full((1 << 22,), 1e-40, dtype=torch.float32)  # 1e-40 is denormal in float32
        return bool(((tiny * 1.0) == 0).all())
    finally:
        torch.set_num_threads(previous)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA device that supports it, else fp32; any other name is checked and kept."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not valid; expected one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision``'s dtype on ``device`` (fp32: no autocast at all)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (its gradients underflow without one); None for fp32 and bf16."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 work in full float32: TF32 off for the block.

    Finite differences of losses need every bit: TF32 rounds inputs to 10 mantissa bits, more
    than the perturbation the difference measures.
    """
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def allow_tf32() -> None:
    """Let float32 matmuls and convolutions use TF32 tensor cores (process-wide, CUDA only)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def cudnn_autotune(enabled: bool) -> Iterator[None]:
    """cudnn's autotuner on for the block when every batch has the same shape (training crops).

    Whole images of many sizes (evaluation) keep it off: it would tune again for every new size.
    """
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def hide_cuda() -> None:
    """Hide every GPU from this process (a trial Ray gave no GPU must never touch one).

    Effective while CUDA is not yet initialised in the process, which is the case in a fresh
    trial actor; the trial also trains on ``device=cpu`` explicitly.
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
