"""Does the data path scale? First step, epoch split and peak memory of training on N pairs.

For each N, generates (once, outside the repository) an RESIDE-ITS-layout folder of N hazy
pairs at 620x460 made from photographs bundled with scikit-image: each scene is a random
crop, zoom and flip of one photo, with a pseudo-depth, rendered 10 times with the
scattering model I = J t + A (1 - t) at random beta and A (``hazy/<scene>_<k>_<beta>.png``,
``clear/<scene>.png``). It then runs ``python -m pipeline.train`` on it in a subprocess
(aodnet ``small``, plain mode, crop 240, batch 10, 2 loader workers by default) for two
epochs with a fresh decoded cache, and reports:

- ``first_step_s``: seconds from the training process's start to the end of its first step;
- per epoch, the time spent waiting for crops (``data_s``), in the steps (``steps_s``) and
  in the selection metric (``eval_s``), and ``wait_pct`` = data_s / steps_s; epoch 1 reads
  through a cold decoded cache, epoch 2 a warm one;
- ``maxrss_mb``: peak resident memory of the largest process of the run (``ru_maxrss`` of the
  training process and the loader workers it waited for), and ``tree_rss_mb``: the peak of
  their summed RSS sampled every 0.2 s (an upper bound: forked workers share pages).

``--evaluate`` adds ``python -m pipeline.evaluate`` of the N = smallest run's checkpoint on
500 SOTS-outdoor-sized pairs (550x413, JPEG hazy, PNG clear), hazy and DCP rows included:
once with an empty reference cache and once with it filled.

    python benchmarks/data_scale.py                          # N = 200 and 2000
    python benchmarks/data_scale.py --sizes 200,2000,14000 --evaluate
    python benchmarks/data_scale.py --sizes 12 --renderings 2 --crop 32 --steps 2 --json    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data as skdata

SIZE = (620, 460)  # (width, height) of RESIDE ITS images
EVAL_SIZE = (550, 413)  # SOTS-outdoor
RENDERINGS = 10  # ITS renders each clear scene 10 times
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera")
COMPLETE = ".complete"


def _photo(name: str) -> np.ndarray:
    if name == "motorcycle":
        return skdata.stereo_motorcycle()[0]
    photo = getattr(skdata, name)()
    return np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]


def _scene(k: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clear image and depth of scene ``k``: a random crop (60-100% of a photo), flip and resize."""
    rng = np.random.default_rng(k)
    photo = _photo(PHOTOS[k % len(PHOTOS)])
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = photo[top:top + ch, left:left + cw][:, ::rng.choice([-1, 1])]
    clear = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR))
    rows = np.linspace(1.0, 0.0, size[1], dtype=np.float32)[:, None]
    depth = 0.5 + 2.5 * (0.7 * rows + 0.3 * rng.random((1, size[0]), dtype=np.float32))
    return clear, depth


def _haze(clear: np.ndarray, depth: np.ndarray, beta: float, airlight: float) -> np.ndarray:
    t = np.exp(-beta * depth)[..., None]
    return np.round(clear.astype(np.float32) * t + 255 * airlight * (1 - t)).astype(np.uint8)


def _write_scene(args: tuple[Path, int, int, str]) -> None:
    root, k, renderings, layout = args
    size = SIZE if layout == "its" else EVAL_SIZE
    clear, depth = _scene(k, size)
    Image.fromarray(clear).save(root / "clear" / f"{k}.png")
    rng = np.random.default_rng(10_000 + k)
    for r in range(1, renderings + 1):
        beta, airlight = rng.uniform(0.3, 1.2), rng.uniform(0.7, 1.0)
        hazy = Image.fromarray(_haze(clear, depth, beta, airlight))
        if layout == "its":
            hazy.save(root / "hazy" / f"{k}_{r}_{beta:.5f}.png")
        else:
            hazy.save(root / "hazy" / f"{k}_{airlight:.2f}_{beta:.2f}.jpg", quality=95)


def generate(root: Path, pairs: int, layout: str = "its", renderings: int = RENDERINGS) -> float:
    """Write ``pairs`` hazy pairs under ``root`` (once); the seconds it took, 0 when already there."""
    marker = root / COMPLETE
    if marker.is_file() and marker.read_text() == f"{pairs} {renderings}":
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("hazy", "clear"):
        (root / sub).mkdir(parents=True)
    start = time.perf_counter()
    scenes = math.ceil(pairs / renderings)
    jobs = [(root, k, min(renderings, pairs - k * renderings), layout) for k in range(scenes)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_scene, jobs, chunksize=8))
    marker.write_text(f"{pairs} {renderings}")
    return time.perf_counter() - start


def _tree_rss_mb(pid: int) -> float:
    """Summed RSS of ``pid`` and its direct children (the loader workers), in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            if int(entry.name) == pid or ppid == pid:
                total += int(stat.rpartition(")")[2].split()[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while we looked
    return total / 2**20


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds, exit code, ru_maxrss of its process tree and the peak of its summed RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, its waited-for workers included
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    return {"seconds": time.perf_counter() - start, "returncode": proc.returncode, "output": output,
            "maxrss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": peak[0]}


def train_row(data: Path, pairs: int, opts: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    run_dir = Path(opts.work) / f"run-{pairs}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.train", "--backbone", "aodnet", "--preset", opts.preset, "--dataset", "its",
           "--data-root", str(data), "--mode", "plain", "--epochs", str(opts.epochs), "--steps", str(opts.steps),
           "--crop", str(opts.crop), "--batch-size", str(opts.batch), "--run-dir", str(run_dir),
           "--device", opts.device, "progress=false", f"train.loader_workers={opts.workers}"]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    if opts.no_decoded_cache:
        cmd.append("dataset.decoded_cache=false")
    measured = run_measured(cmd, env)
    if measured["returncode"] != 0:
        raise RuntimeError(f"training on N={pairs} failed:\n{measured['output']}")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row: dict[str, Any] = {"pairs": pairs, "first_step_s": round(epochs[0]["first_step_s"], 2),
                           "wall_s": round(measured["seconds"], 1), "maxrss_mb": round(measured["maxrss_mb"]),
                           "tree_rss_mb": round(measured["tree_rss_mb"])}
    for m in epochs:
        data_s = m["ms_data"] * opts.steps / 1000
        steps_s = m["epoch_seconds"] - data_s
        row[f"epoch{m['epoch']}"] = {"data_s": round(data_s, 2), "steps_s": round(steps_s, 2),
                                     "eval_s": round(m["eval_seconds"], 2), "wait_pct": round(100 * data_s / steps_s, 1)}
    row["checkpoint"] = str(run_dir / "checkpoint.pt")
    return row


def evaluate_rows(checkpoint: str, opts: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Seconds of two evaluations of 500 SOTS-outdoor-sized pairs: empty reference cache, then filled."""
    data = Path(opts.work) / f"sots-outdoor-{opts.eval_images}"
    generated = generate(data, opts.eval_images, layout="sots-outdoor", renderings=1)
    cache = Path(opts.work) / "cache-evaluate"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**env, "BILD_CACHE": str(cache)}
    times = {"images": opts.eval_images, "generated_s": round(generated, 1)}
    for run in ("first", "cached"):
        out = Path(opts.work) / f"evaluate-{run}.parquet"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pipeline.evaluate", "--model", checkpoint, "--dataset", "sots-outdoor",
               "--data-root", str(data), "--out", str(out), "--device", opts.device]
        measured = run_measured(cmd, env)
        if measured["returncode"] != 0:
            raise RuntimeError(f"evaluate failed:\n{measured['output']}")
        times[f"{run}_s"] = round(measured["seconds"], 1)
    return times


def _table(rows: list[dict[str, Any]], epochs: int) -> str:
    head = f"{'N':>6} {'first step':>10} {'peak RSS':>9} {'tree RSS':>9}"
    for e in range(1, epochs + 1):
        head += f" | ep{e} data/steps/eval s (wait %)"
    lines = [head]
    for r in rows:
        line = f"{r['pairs']:>6} {r['first_step_s']:>9.1f}s {r['maxrss_mb']:>7} MB {r['tree_rss_mb']:>6} MB"
        for e in range(1, epochs + 1):
            ep = r[f"epoch{e}"]
            line += f" | {ep['data_s']:6.2f} / {ep['steps_s']:6.2f} / {ep['eval_s']:5.2f} ({ep['wait_pct']:4.1f})"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="200,2000", help="comma-separated N (hazy pairs); add 14000 for full ITS")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bild-data-scale"),
                   help="where the generated folders, caches and runs go (never the repository)")
    p.add_argument("--renderings", type=int, default=RENDERINGS, help="hazy renderings per clear scene (ITS: 10)")
    p.add_argument("--preset", default="small")
    p.add_argument("--crop", type=int, default=240)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=2, help="epoch 1 reads a cold decoded cache, later ones a warm one")
    p.add_argument("--workers", type=int, default=2, help="train.loader_workers")
    p.add_argument("--threads", type=int, default=None, help="--threads of the training run (default: its own)")
    p.add_argument("--no-decoded-cache", action="store_true", help="decode every crop's files (dataset.decoded_cache=false)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--evaluate", action="store_true", help="also time pipeline.evaluate on SOTS-outdoor-sized pairs")
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    Path(opts.work).mkdir(parents=True, exist_ok=True)
    rows = []
    for pairs in (int(n) for n in opts.sizes.split(",")):
        data = Path(opts.work) / f"its-{pairs}"
        generated = generate(data, pairs, renderings=opts.renderings)
        cache = Path(opts.work) / f"cache-{pairs}"
        shutil.rmtree(cache, ignore_errors=True)  # epoch 1 must find the decoded cache cold
        env = {**os.environ, "BILD_CACHE": str(cache)}
        rows.append({**train_row(data, pairs, opts, env), "generated_s": round(generated, 1)})
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "rows": rows}
    if opts.evaluate:
        result["evaluate"] = evaluate_rows(rows[0]["checkpoint"], opts, {**os.environ})
    if opts.json:
        print(json.dumps(result))
        return
    print(_table(rows, opts.epochs))
    if opts.evaluate:
        ev = result["evaluate"]
        print(f"evaluate {ev['images']} SOTS-outdoor-sized pairs (hazy + DCP + model): first run {ev['first_s']} s, "
              f"reference rows cached {ev['cached_s']} s")


if __name__ == "__main__":
    main()
