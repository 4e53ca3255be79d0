"""What compaction buys ``analyze``: wall time and objects read, before and after, on disk and on S3.

Writes a synthetic results folder (``--trials`` x ``--epochs``, rows exactly as the search's
callback writes them: one Parquet file per trial and epoch, one per trial summary), runs
``python -m pipeline.analyze`` on it, compacts every trial (``pipeline.results.compact_epochs``,
as the search does when a trial ends), and runs it again. It does this in a local folder and
on an S3 server (moto's, on 127.0.0.1, as in the tests: it measures the number of requests
and the per-object overhead of the protocol, not a cloud network's latency). It prints the
objects under ``results/`` and the analyze wall time (best of ``--repeat``), and the ratios.

    python benchmarks/results_compaction.py --trials 100 --epochs 20
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.results import STEP_METRICS, compact_epochs, results_dir, write_epoch_row, write_trial_row  # noqa: E402
from pipeline.storage import Location, location  # noqa: E402


def _identity(experiment: str, trial: int) -> dict[str, Any]:
    mode = "bild" if trial % 2 else "plain"
    return {"experiment": experiment, "trial_id": f"t{trial:04d}", "backbone": "aodnet", "preset": "tiny",
            "mode": mode, "dataset": "synthetic", "inner_lr": 1e-3 * (1 + trial % 7),
            "alpha": 0.1 * (1 + trial % 5) if mode == "bild" else None,
            "outer_lr": 1e-2 if mode == "bild" else None, "val_fraction": 0.2 if mode == "bild" else None}


def _psnr(trial: int, epoch: int) -> float:
    """A learning curve that rises and differs per trial: something for analyze to rank."""
    return 18.0 + 0.3 * (trial % 11) + 4.0 * (1 - math.exp(-epoch / 5))


def synthetic_results(experiment_dir: str | os.PathLike | Location, trials: int, epochs: int) -> Location:
    """``trials`` finished trials of ``epochs`` epochs each, one file per epoch, as a search leaves them running."""
    exp = location(experiment_dir)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for t in range(trials):
        ident = _identity(exp.name, t)
        for e in range(1, epochs + 1):
            write_epoch_row(exp, {
                **ident, "epoch": e, "select_psnr": _psnr(t, e), "select_ssim": 0.6 + 0.01 * e, "hazy_psnr": 15.0,
                **{k: 0.1 for k in STEP_METRICS}, "epoch_seconds": 1.0, "wall_time_s": float(e), "device": "cpu",
                "node": "n1", "store_shared": True, "status": "RUNNING", "checkpoint_path": None,
                "timestamp": start + timedelta(seconds=t * epochs + e)})
        best = max(range(1, epochs + 1), key=lambda e: _psnr(t, e))
        write_trial_row(exp, {
            **ident, "status": "TERMINATED", "error": None, "epochs": epochs, "best_epoch": best,
            "best_select_psnr": _psnr(t, best), "best_select_ssim": 0.6 + 0.01 * best,
            "last_select_psnr": _psnr(t, epochs), "last_select_ssim": 0.6 + 0.01 * epochs,
            "wall_time_s": float(epochs), "best_checkpoint_path": None, "trial_dir": None,
            "updated_at": start + timedelta(seconds=(t + 1) * epochs)})
    return exp


def compact_all(experiment_dir: Location) -> None:
    for trial in (results_dir(experiment_dir) / "epochs").children():
        compact_epochs(experiment_dir, trial.name)


def analyze_json(experiment_dir: Location) -> tuple[str, float]:
    """(analyze's JSON report, seconds it took), run as the command runs it."""
    from pipeline import analyze

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = analyze.main([str(experiment_dir), "--format", "json"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"analyze {experiment_dir} exited {code}")
    return out.getvalue(), seconds


def _measure(exp: Location, repeat: int) -> dict[str, float]:
    objects = len(results_dir(exp).files())
    seconds = min(analyze_json(exp)[1] for _ in range(repeat))
    return {"objects": objects, "seconds": seconds}


def _where(kind: str, tmp: Path) -> Iterator[Location]:
    if kind == "local":
        yield location(tmp / "runs" / "synthetic")
        return
    sys.path.insert(0, str(REPO / "tests"))
    from s3server import S3_ENV, moto_s3

    os.environ.update(S3_ENV)
    with moto_s3() as s3:
        yield location(s3.uri("runs")) / "synthetic"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3, help="analyze runs per measurement; the best is reported")
    p.add_argument("--stores", default="local,s3", help="comma-separated: local, s3")
    args = p.parse_args(argv)
    print(f"{args.trials} trials x {args.epochs} epochs; analyze --format json, best of {args.repeat}")
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            for exp in _where(kind, Path(tmp)):
                synthetic_results(exp, args.trials, args.epochs)
                before_report, _ = analyze_json(exp)
                before = _measure(exp, args.repeat)
                compact_all(exp)
                after_report, _ = analyze_json(exp)
                after = _measure(exp, args.repeat)
                same = "identical" if before_report == after_report else "DIFFERENT"
                print(f"{kind:5s} before: {before['objects']:5d} objects, analyze {before['seconds']:.2f} s | "
                      f"after: {after['objects']:4d} objects, analyze {after['seconds']:.2f} s | "
                      f"{before['objects'] / after['objects']:.1f}x fewer objects, "
                      f"{before['seconds'] / after['seconds']:.1f}x faster; reports {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
