"""What a BILD step costs next to a plain step of the same backbone, batch and crop.

Measures, after warm-up, the median wall time of a plain step and of a BILD step with
each alignment estimator, interleaved round by round so that drift in machine load hits
every variant alike, then the reward stage (alignment + eq. 6) at n = 4, 10 and 32.
Prints ratios BILD/plain; ``--json`` prints a JSON list of rows.

Each row also carries the design's floor for that backbone and machine (docs/design.md: about
1 + m/n plus one extra forward), timed rather than assumed: a plain step, the validation
gradient on the m crops and one no-grad forward of the n crops, the passes eq. 5-7 cannot
skip. ``ratio - floor_ratio`` is what the implementation adds on top (reweighter,
parameter copy, statistics); a network whose cost does not scale linearly with the batch
can have a floor above the 1.8 target.

    python benchmarks/step_cost.py --backbone ffanet --preset small --crop 64 --n 10 --m 4
    python benchmarks/step_cost.py --backbone msbdn --preset paper --crop 240 --device cuda --precision fp32 --json

On CUDA each row also gives the GPU memory a step takes beyond the weights (``*_step_mb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from pipeline.backbones import create_backbone
from pipeline.bild import BildConfig, BildNets, CropBatch, bild_step, build_reweighter, per_crop_l1
from pipeline.config import compose_config
from pipeline.evaluation.inference import resolve_device
from pipeline.hardware import PRECISIONS, grad_scaler
from pipeline.trainer import bild_config, for_device


def _nets(backbone: str, preset: str, device: torch.device, cfg: DictConfig | None, channels_last: bool,
          precision: str = "fp32") -> BildNets:
    """The backbone, and with a composed config the reweighter its ``bild`` block describes (None: plain)."""
    torch.manual_seed(0)
    model = create_backbone(backbone, preset).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    nets = BildNets(model, torch.optim.Adam(model.parameters(), 1e-4), scaler=grad_scaler(precision, device))
    if cfg is not None:
        nets.reweighter = build_reweighter(cfg.bild).to(device)
        nets.outer_opt = torch.optim.Adam(nets.reweighter.parameters(), 1e-1)
    return nets


def _batch(n: int, m: int, crop: int, device: torch.device, channels_last: bool) -> CropBatch:
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    rand = lambda k: torch.rand(k, 3, crop, crop, generator=g).to(device, memory_format=layout)  # noqa: E731
    return CropBatch(rand(n), rand(n), rand(m), rand(m))


def _design_floor_step(batch: CropBatch, nets: BildNets, plain_cfg: BildConfig) -> dict[str, float]:
    """The passes no implementation of eq. 5-7 can skip, with nothing else around them.

    A plain step on the n crops (eq. 5), the validation gradient on the m crops at the new
    parameters, and the finite difference's one extra no-grad forward of the n crops.
    """
    bild_step(batch, nets, plain_cfg)
    model = nets.backbone
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(per_crop_l1(model(batch.val_hazy), batch.val_clear).mean(), params)
    with torch.no_grad():
        model(batch.hazy)
    return {}


def _timed(step: Callable[[], dict[str, float]], device: torch.device) -> tuple[float, float, dict[str, float]]:
    """(ms, MB of GPU memory the step took on top of what was allocated before it (0 on the CPU), stage times)."""
    before = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    stages = step()
    peak = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return 1000 * (time.perf_counter() - start), peak, stages


def measure(
    backbone: str,
    preset: str,
    crop: int,
    n: int,
    m: int,
    device: torch.device,
    estimators: list[str],
    repeats: int,
    warmup: int,
    cfg: DictConfig,
    channels_last: bool = False,
) -> list[dict]:
    """Median ms of plain, of the design's floor and of each BILD estimator, interleaved; one row per estimator.

    ``cfg`` is the composed training config: BILD is timed with the policy and settings it trains with.
    """
    batch = _batch(n, m, crop, device, channels_last)
    trained = dataclasses.replace(bild_config(cfg), mode="bild", sync_timing=device.type == "cuda")
    precision = trained.precision
    plain_cfg = dataclasses.replace(trained, mode="plain")
    plain_nets = _nets(backbone, preset, device, None, channels_last, precision)
    floor_nets = _nets(backbone, preset, device, None, channels_last, precision)
    variants: dict[str, Callable[[], dict[str, float]]] = {
        "plain": lambda: bild_step(batch, plain_nets, plain_cfg).times,
        "floor": lambda: _design_floor_step(batch, floor_nets, plain_cfg),
    }
    for est in estimators:
        nets = _nets(backbone, preset, device, cfg, channels_last, precision)
        est_cfg = dataclasses.replace(trained, estimator=est)
        variants[est] = lambda nets=nets, est_cfg=est_cfg: bild_step(batch, nets, est_cfg).times
    times: dict[str, list[float]] = {k: [] for k in variants}
    reward_ms: dict[str, list[float]] = {k: [] for k in variants}
    peak_mb = dict.fromkeys(variants, 0.0)
    for r in range(warmup + repeats):
        for key, step in variants.items():
            total, peak, stages = _timed(step, device)
            peak_mb[key] = max(peak_mb[key], peak)
            if r >= warmup:
                times[key].append(total)
                reward_ms[key].append(1000 * stages.get("reward", 0.0))
    plain = statistics.median(times["plain"])
    floor = statistics.median(times["floor"])
    return [
        {
            "backbone": backbone,
            "preset": preset,
            "crop": crop,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "channels_last": channels_last,
            "precision": precision,
            "estimator": est,
            "n": n,
            "m": m,
            "plain_ms": round(plain, 2),
            "bild_ms": round(statistics.median(times[est]), 2),
            "ratio": round(statistics.median(times[est]) / plain, 3),
            "floor_ms": round(floor, 2),
            "floor_ratio": round(floor / plain, 3),
            "reward_ms": round(statistics.median(reward_ms[est]), 2),
            "reward_ratio": round(statistics.median(reward_ms[est]) / plain, 3),
            "plain_step_mb": round(peak_mb["plain"], 1),  # GPU memory a step takes beyond the weights (0 on CPU)
            "bild_step_mb": round(peak_mb[est], 1),
        }
        for est in estimators
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="ffanet")
    p.add_argument("--preset", default="small")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--n", type=int, default=10, help="training crops per step")
    p.add_argument("--m", type=int, default=4, help="validation crops per step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--estimators", default="fd,jvp", help="comma-separated: fd,jvp,loop")
    p.add_argument("--scaling-ns", default="4,10,32", help="n values for the reward-cost scaling rows ('' to skip)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (a search trial uses its CPUs)")
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="backbone and crops in NHWC layout (default: the backbone's train.channels_last, as training does)",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast of the backbone, as train.precision (auto: bf16 on a CUDA card that has it, else fp32)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    # What training uses on this device: the policy, the precision, the layout.
    cfg = for_device(compose_config([f"backbone={a.backbone}", f"train.precision={a.precision}"]), device)
    if a.channels_last is None:
        a.channels_last = cfg.train.channels_last
    estimators = a.estimators.split(",")
    rows = measure(
        a.backbone, a.preset, a.crop, a.n, a.m, device, estimators, a.repeats, a.warmup, cfg, a.channels_last
    )
    for n in [int(x) for x in a.scaling_ns.split(",") if x] if a.scaling_ns else []:
        if n != a.n:
            rows += measure(
                a.backbone, a.preset, a.crop, n, a.m, device, estimators, max(3, a.repeats // 2), 2, cfg,
                a.channels_last,
            )
    if a.json:
        print(json.dumps(rows))
        return
    print(
        f"{'backbone':<14}{'preset':<8}{'crop':>5}{'est':>6}{'n':>4}{'m':>3}"
        f"{'plain ms':>10}{'bild ms':>10}{'ratio':>7}{'floor':>7}{'reward/plain':>14}"
    )
    for r in rows:
        print(
            f"{r['backbone']:<14}{r['preset']:<8}{r['crop']:>5}{r['estimator']:>6}{r['n']:>4}{r['m']:>3}"
            f"{r['plain_ms']:>10.1f}{r['bild_ms']:>10.1f}{r['ratio']:>7.2f}{r['floor_ratio']:>7.2f}{r['reward_ratio']:>14.3f}"
        )


if __name__ == "__main__":
    main()
