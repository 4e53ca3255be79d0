"""Forward time of a model whose activations go denormal, against a fresh model of the same shape.

Trained weights can drive activations below float32's normal range (about 1.2e-38), where x86
CPUs compute through a slow path; the package flushes such values to zero in every thread
(``pipeline.hardware``). This runs both models on one image with the flush off (the state
before the fix: each thread as torch leaves it) and on (what the package does), each in a fresh
process so that torch's thread pool starts with the flag under test, and prints the ratios.

    python benchmarks/denormals.py                          # a fresh AOD-Net made to go denormal
    python benchmarks/denormals.py --model models/aodnet    # a real model folder (an imported published one)

Without ``--model``, the denormal model is a fresh AOD-Net with every convolution scaled by
1e-39, so that each layer computes on denormal inputs (a stand-in for trained weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

SCALE = 1e-39  # times a normal-sized activation: inside float32's denormal range


def _models(model_path: str | None) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(the model whose activations go denormal, a fresh model of the same backbone and shape, its name)."""
    from pipeline.backbones import build_from_kwargs
    from pipeline.models import load_model, model_label, resolve_model_file

    if model_path:
        slow, meta = load_model(model_path)
        return slow, _fresh_like(slow), model_label(meta, resolve_model_file(model_path))
    torch.manual_seed(0)
    fresh = build_from_kwargs("aodnet", {}).eval()
    slow = build_from_kwargs("aodnet", {}).eval()
    slow.load_state_dict(fresh.state_dict())
    with torch.no_grad():  # every convolution's output (its bias, scaled) lands in the denormal range
        for conv in (m for m in slow.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.mul_(SCALE)
            conv.bias.mul_(SCALE)
    return slow, fresh, "aodnet, every convolution scaled by 1e-39"


def _fresh_like(model: torch.nn.Module) -> torch.nn.Module:
    """The same module with its parameters re-drawn at their initial scale (normal-range activations)."""
    import copy

    fresh = copy.deepcopy(model)
    torch.manual_seed(0)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh


def _denormal_activations(model: torch.nn.Module, x: torch.Tensor) -> int:
    # Called in a process whose threads do not flush: a flushed thread would count zeros.
    """How many values of the model's intermediate outputs are denormal (nonzero, below the normal range)."""
    count = 0
    tiny = torch.finfo(torch.float32).tiny

    def hook(module: torch.nn.Module, inputs: object, out: object) -> None:
        nonlocal count
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            count += int(((out != 0) & (out.abs() < tiny)).sum())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return count


def _median_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _input(image: str | None, height: int, width: int) -> torch.Tensor:
    if image is None:
        return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    from pipeline.data import to_tensor
    from pipeline.data.images import decode_image

    return to_tensor(decode_image(image))


def child(flush: bool, model_path: str | None, image: str | None, height: int, width: int, repeats: int,
          threads: int | None) -> dict:
    """One measurement in this process: the flag is set before torch's first parallel op starts its pool."""
    import pipeline  # noqa: F401  (sets the flush, as every command does)

    torch.set_flush_denormal(flush)
    if threads:
        torch.set_num_threads(threads)
    slow, fresh, name = _models(model_path)
    x = _input(image, height, width)
    # Counted where nothing is flushed: what the model computes, not what the CPU keeps.
    denormal = None if flush else _denormal_activations(slow, x)
    fresh_s, slow_s = _median_seconds(fresh, x, repeats), _median_seconds(slow, x, repeats)
    return {"flush": flush, "model": name, "threads": torch.get_num_threads(), "height": x.shape[-2], "width": x.shape[-1],
            "denormal_activations": denormal, "fresh_ms": round(1000 * fresh_s, 2),
            "denormal_ms": round(1000 * slow_s, 2), "ratio": round(slow_s / fresh_s, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model folder or file (pipeline.models.load_model); default: synthetic")
    p.add_argument("--image", default=None, help="a real image to run on (default: random pixels, --height x --width)")
    p.add_argument("--height", type=int, default=460)
    p.add_argument("--width", type=int, default=620)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)  # one measurement, in a fresh process
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child == "on", a.model, a.image, a.height, a.width, a.repeats, a.threads)))
        return
    rows = []
    for flush in ("off", "on"):
        cmd = [sys.executable, __file__, "--child", flush, "--height", str(a.height), "--width", str(a.width),
               "--repeats", str(a.repeats), *(["--model", a.model] if a.model else []),
               *(["--image", a.image] if a.image else []),
               *(["--threads", str(a.threads)] if a.threads else [])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the flush-{flush} measurement failed:\n{done.stderr.strip()}")
        rows.append(json.loads(done.stdout))
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{rows[0]['model']}: {rows[0]['height']}x{rows[0]['width']}, {rows[0]['threads']} threads, "
          f"{rows[0]['denormal_activations']:,} denormal activation values")
    print("flush  fresh ms  denormal ms  denormal / fresh")
    for r in rows:
        print(f"{'on' if r['flush'] else 'off':>5}  {r['fresh_ms']:8.1f}  {r['denormal_ms']:11.1f}  {r['ratio']:16.2f}")
    print(f"flushing makes the denormal model {rows[0]['denormal_ms'] / rows[1]['denormal_ms']:.1f}x faster")


if __name__ == "__main__":
    main()
