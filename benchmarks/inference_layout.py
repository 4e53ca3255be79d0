"""Whole-image inference in NCHW against channels_last (NHWC), per backbone.

``pipeline.models.load_model`` hands every backbone out in channels_last; this measures why.
Prints, per backbone, the median time of ``dehaze_tensor`` on one image in each layout, the
speed-up, and the largest output difference.

    python benchmarks/inference_layout.py --preset small --height 480 --width 640
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pipeline.backbones import create_backbone, list_backbones
from pipeline.evaluation.inference import dehaze_tensor


def _median_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    out = dehaze_tensor(model, x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = dehaze_tensor(model, x)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(backbone: str, preset: str, height: int, width: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_backbone(backbone, preset).eval()
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    nchw_s, nchw_out = _median_seconds(model, x, repeats)
    nhwc_s, nhwc_out = _median_seconds(model.to(memory_format=torch.channels_last), x, repeats)
    return {
        "backbone": backbone, "preset": preset, "height": height, "width": width, "threads": torch.get_num_threads(),
        "nchw_ms": round(1000 * nchw_s, 1), "nhwc_ms": round(1000 * nhwc_s, 1), "speedup": round(nchw_s / nhwc_s, 2),
        "max_abs_diff": float((nchw_out - nhwc_out).abs().max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default=",".join(list_backbones()))
    p.add_argument("--preset", default="small")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = [measure(b, a.preset, a.height, a.width, a.repeats) for b in a.backbones.split(",")]
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'backbone':<14}{'NCHW ms':>9}{'NHWC ms':>9}{'speed-up':>10}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['backbone']:<14}{r['nchw_ms']:>9.1f}{r['nhwc_ms']:>9.1f}{r['speedup']:>10.2f}{r['max_abs_diff']:>12.1e}")


if __name__ == "__main__":
    main()
