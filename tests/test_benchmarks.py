"""The step-cost benchmark runs the way the README calls it and prints the promised JSON rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"
TINY = ["--preset", "tiny", "--crop", "32", "--n", "4", "--m", "2", "--repeats", "1", "--warmup", "0", "--json"]


def _rows(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("flag, nhwc", [([], True), (["--no-channels-last"], False)])
def test_step_cost_json_rows(flag: list[str], nhwc: bool) -> None:
    # AOD-Net trains in channels_last by default (backbone/aodnet.yaml): so does the benchmark.
    rows = _rows("--backbone", "aodnet", "--estimators", "fd,jvp", "--scaling-ns", "8", *TINY, *flag)
    assert [(r["estimator"], r["n"]) for r in rows] == [("fd", 4), ("jvp", 4), ("fd", 8), ("jvp", 8)]
    for r in rows:
        assert {"backbone", "estimator", "n", "m", "plain_ms", "bild_ms", "ratio"} <= r.keys()
        assert r["backbone"] == "aodnet" and r["m"] == 2 and r["channels_last"] is nhwc
        assert r["ratio"] == pytest.approx(r["bild_ms"] / r["plain_ms"], rel=1e-2)  # both rounded
        assert r["floor_ratio"] == pytest.approx(r["floor_ms"] / r["plain_ms"], rel=1e-2)


BILD_VS_PLAIN = SCRIPT.parent / "bild_vs_plain.py"


def _bild_vs_plain(*args: str) -> None:
    subprocess.run([sys.executable, str(BILD_VS_PLAIN), *args], capture_output=True, text=True, check=True)


def test_bild_vs_plain_at_tiny_settings(tmp_path: Path) -> None:
    import polars as pl

    out = tmp_path / "bench"
    args = ["--dataset", "builtin", "--backbone", "aodnet", "--preset", "tiny", "--crop", "32", "--steps", "4",
            "--epochs", "2", "--seeds", "0", "--levers", "bild,mix-0.5+rotation", "--plain-budget", "time",
            "--out", str(out)]
    _bild_vs_plain(*args)
    images = pl.read_parquet(out.with_suffix(".parquet"))
    assert set(images["lever"]) == {"plain", "bild", "mix-0.5+rotation"}
    per_lever = images.group_by("lever").agg(pl.len(), pl.col("train_s", "steps").first())
    assert per_lever["len"].n_unique() == 1  # every model scored on the same test images
    times = dict(zip(per_lever["lever"], per_lever["train_s"]))
    assert times["plain"] >= times["bild"]  # --plain-budget time: plain trains at least as long as bild
    table = out.with_suffix(".md").read_text()
    assert "| lever | seeds x images |" in table and "test " in table and "train pool" in table
    # The table's difference is the mean over test images of bild - plain on the same image.
    pairs = images.filter(pl.col("lever") == "bild").join(images.filter(pl.col("lever") == "plain"), on="pair")
    diff = (pairs["psnr"] - pairs["psnr_right"]).mean()
    row = next(line for line in table.splitlines() if line.startswith("| bild |"))
    assert row.split("|")[4].split("[")[0].strip() == f"{diff:+.3f}"
    # --summarize redraws the same table, settings included, from the Parquet file alone.
    out.with_suffix(".md").unlink()
    _bild_vs_plain("--summarize", "--out", str(out))
    assert out.with_suffix(".md").read_text() == table
    # Seeds run later pool with the first run's; a (lever, seed) run twice is refused.
    later = tmp_path / "later"
    _bild_vs_plain(*args[:-1], str(later), "--seeds", "1")
    pooled = tmp_path / "pooled"
    merge = ["--merge", str(out.with_suffix(".parquet"))]
    _bild_vs_plain(*merge, str(later.with_suffix(".parquet")), "--out", str(pooled))
    assert sorted(pl.read_parquet(pooled.with_suffix(".parquet"))["seed"].unique()) == [0, 1]
    assert "| bild | 2 x " in pooled.with_suffix(".md").read_text() and "seeds 0,1\n" in pooled.with_suffix(".md").read_text()
    twice = subprocess.run([sys.executable, str(BILD_VS_PLAIN), *merge, str(out.with_suffix(".parquet")),
                            "--out", str(tmp_path / "twice")], capture_output=True, text=True)
    assert twice.returncode != 0 and "seed 0 is in more than one file" in twice.stderr


def test_the_seed_resampled_interval_holds_the_spread_between_seeds() -> None:
    import importlib.util

    import numpy as np
    import polars as pl

    from pipeline.analysis.report import bootstrap_diff

    spec = importlib.util.spec_from_file_location("bild_vs_plain", BILD_VS_PLAIN)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # Seed 0 wins by 1 dB on every image, seed 1 loses by 1 dB: the seeds' average is 0 on every image.
    rng = np.random.default_rng(0)
    d = {0: 1.0 + 0.01 * rng.standard_normal(40), 1: -1.0 + 0.01 * rng.standard_normal(40)}
    mine = pl.DataFrame([{"seed": s, "pair": i, "psnr": 20.0 + d[s][i], "psnr_0": 20.0} for s in d for i in range(40)])
    per_image = (d[0] + d[1]) / 2
    image_low, image_high = bootstrap_diff(per_image, np.zeros(40), paired=True)
    low, high = bench.seed_and_image_ci(mine)
    assert image_high - image_low < 0.01  # the images agree, so the image-only interval is narrow ...
    assert low < -0.9 and high > 0.9  # ... while a new seed could land on either side


def test_data_scale_runs_on_a_tiny_generated_folder(tmp_path: Path) -> None:
    # The benchmark as documented, at N = 12 (6 scenes rendered twice) and 32 px crops.
    script = SCRIPT.parent / "data_scale.py"
    out = subprocess.run([sys.executable, str(script), "--sizes", "12", "--renderings", "2", "--crop", "32",
                          "--steps", "2", "--epochs", "2", "--work", str(tmp_path), "--json"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    (row,) = json.loads(out)["rows"]
    assert row["pairs"] == 12 and row["first_step_s"] > 0 and row["maxrss_mb"] > 0 and row["tree_rss_mb"] > 0
    for epoch in ("epoch1", "epoch2"):
        assert row[epoch]["steps_s"] > 0 and row[epoch]["data_s"] >= 0 and row[epoch]["eval_s"] > 0
    from pipeline.data import detect_layout, read_index

    index = read_index(tmp_path / "its-12")
    assert detect_layout(tmp_path / "its-12") == "its" and len(index) == 12 and len(index.clear) == 6
    assert index.size(0) == (460, 620)
    assert list((tmp_path / "cache-12").rglob("*.npy")), "training read through the decoded cache"


def test_crop_stream_controls_run_plain_two_ways_per_seed() -> None:
    script = SCRIPT.parents[1] / "experiments" / "crop_stream.py"
    out = subprocess.run([sys.executable, str(script), "--dataset", "builtin", "--backbone", "aodnet", "--preset",
                          "tiny", "--crop", "32", "--steps", "4", "--epochs", "2", "--seeds", "0"],
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("plain-on-split", 0), ("plain-val-draws", 0)]
    # Same seed, other crops or pairs: the two controls train different models.
    by = {(r["variant"], r["seed"]): r["psnr"] for r in rows}
    assert by[("plain-on-split", 0)] != by[("plain-val-draws", 0)]
    assert "plain-val-draws: mean" in out


def test_bild_vs_plain_eval_every_gives_a_curve_with_a_point_every_k_steps(tmp_path: Path) -> None:
    import polars as pl

    out = tmp_path / "curve"
    args = ["--dataset", "builtin", "--backbone", "aodnet", "--preset", "tiny", "--crop", "32", "--steps", "6",
            "--epochs", "2", "--seeds", "0", "--levers", "mix-0.5+adam,reference-code", "--eval-every", "2",
            "--out", str(out)]
    _bild_vs_plain(*args)
    curve = pl.read_parquet(out.with_suffix(".curve.parquet"))
    images = pl.read_parquet(out.with_suffix(".parquet"))
    for lever in ("plain", "mix-0.5+adam", "reference-code"):
        mine = curve.filter(pl.col("lever") == lever)
        assert sorted(mine["step"].unique()) == [2, 4, 6]  # 6 steps, a point every 2
        test = mine.filter(pl.col("split") == "test")
        assert test.group_by("step").len()["len"].to_list() == [images.filter(pl.col("lever") == lever).height] * 3
        assert mine.filter(pl.col("split") == "select").height > 0
    # The last point is the final model: the same scores as the end-of-training table's.
    last = curve.filter((pl.col("step") == 6) & (pl.col("split") == "test")).join(images, on=["lever", "seed", "pair"])
    assert (last["psnr"] - last["psnr_right"]).abs().max() < 1e-9
    table = out.with_suffix(".md").read_text()
    for section in ("over training", "best point on the selection set", "The protocol gap"):
        assert section in table
    assert "| 6 |" in table.split("over training")[1].split("##")[0]
    # The reference code's reweighter barely moves; the per-crop reward's does.
    shift = dict(images.group_by("lever").agg(pl.col("policy_shift").first()).iter_rows())
    assert shift["reference-code"] < 1e-6 < shift["mix-0.5+adam"] and shift["plain"] is None


def test_the_protocol_gap_and_the_test_set_protocols_gain_match_a_hand_computed_curve() -> None:
    import polars as pl

    from benchmarks.bild_vs_plain import protocol_gap

    # Test PSNR per (lever, seed) at steps 1-3, and the step the selection set peaks at.
    test = {("plain", 0): [10, 12, 11], ("plain", 1): [10, 10, 14], ("x", 0): [13, 11, 11], ("x", 1): [12, 9, 9]}
    peak = {("plain", 0): 3, ("plain", 1): 1, ("x", 0): 2, ("x", 1): 1}
    rows = [{"lever": lever, "seed": seed, "step": step, "split": split, "pair": pair, "ssim": 0.5,
             "psnr": float(psnrs[step - 1] if split == "test" else 20 + (step == peak[lever, seed]))}
            for (lever, seed), psnrs in test.items() for step in (1, 2, 3) for split in ("select", "test")
            for pair in (0, 1)]  # two images scored alike: only the seeds move the intervals
    gap = {r["lever"]: r for r in protocol_gap(pl.DataFrame(rows))}
    # plain: selected 11 and 10, best 12 and 14; x: selected 11 and 12, best 13 and 12.
    assert (gap["plain"]["selected"], gap["plain"]["best"], gap["plain"]["gap"]) == (10.5, 13.0, 2.5)
    assert (gap["x"]["selected"], gap["x"]["best"], gap["x"]["gap"]) == (11.5, 12.5, 1.0)
    assert gap["x"]["selected_step"] == 1.5
    # Each at its best test step, x - plain: +1 on seed 0, -2 on seed 1.
    assert gap["x"]["vs_plain"] == -0.5 and -2 <= gap["x"]["vs_plain_low"] < gap["x"]["vs_plain_high"] <= 1
    assert 0 <= gap["x"]["gap_low"] < gap["x"]["gap_high"] <= 2
