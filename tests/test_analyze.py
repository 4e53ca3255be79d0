"""pipeline.analyze: the report of a finished search, its renderings, plots and patch-weight pictures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from pipeline.analysis.patch_weights import patch_weights
from pipeline.analysis.plots import write_plots
from pipeline.analysis.report import analyze, bootstrap_diff, render
from pipeline.analyze import main
from pipeline.config import REPO_ROOT
from pipeline.data import load_builtin
from pipeline.results import read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json_report(run_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main([str(run_dir), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_sections_and_leaderboard_order(search_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _json_report(search_run, capsys)
    assert {"leaderboard", "modes", "comparison", "importance", "curves"} <= set(report)

    trials = read_table([search_run], "trials")
    finished = trials.filter(pl.col("status") == "TERMINATED").sort("best_select_psnr", descending=True)
    board = report["leaderboard"]
    assert len(board) == trials.height == 6
    assert [r["trial_id"] for r in board[:5]] == finished["trial_id"].to_list()
    assert board[-1]["status"] == "ERROR" and board[-1]["best_select_psnr"] is None
    assert [r["rank"] for r in board] == [1, 2, 3, 4, 5, 6]
    assert {"alpha", "inner_lr", "outer_lr", "val_fraction", "epochs"} <= set(board[0])

    modes = {m["mode"]: m for m in report["modes"]}
    assert modes["plain"]["trials"] == 3 and modes["plain"]["finished"] == 2 and modes["bild"]["finished"] == 3
    plain_best = finished.filter(pl.col("mode") == "plain")["best_select_psnr"]
    assert modes["plain"]["best_psnr"] == pytest.approx(plain_best.max())
    assert modes["plain"]["mean_psnr"] == pytest.approx(plain_best.mean())


def test_comparison_has_a_bootstrap_interval(search_run: Path) -> None:
    report = analyze([search_run])
    psnr = next(c for c in report["comparison"] if c["mode"] == "bild" and c["metric"] == "best_select_psnr")
    modes = {m["mode"]: m for m in report["modes"]}
    assert psnr["difference"] == pytest.approx(modes["bild"]["mean_psnr"] - modes["plain"]["mean_psnr"])
    assert psnr["ci_low"] <= psnr["difference"] <= psnr["ci_high"] and psnr["note"] is None
    assert analyze([search_run])["comparison"] == report["comparison"]  # seeded: the same interval every time


def test_bootstrap_interval_covers_a_known_shift() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.1, 40), rng.normal(0.0, 0.1, 40)
    low, high = bootstrap_diff(a, b)
    assert low < 1.0 < high and high - low < 0.2


def test_too_few_trials_is_said_not_computed(search_run: Path, tmp_path: Path) -> None:
    # The same run without two bild trials: one bild against two plain.
    run = tmp_path / "exp-small"
    shutil.copytree(search_run / "results", run / "results")
    for trial_id in ("t3-bild", "t4-bild"):
        (run / "results" / "trials" / f"{trial_id}.parquet").unlink()
        shutil.rmtree(run / "results" / "epochs" / trial_id)
    report = analyze([run])
    psnr = next(c for c in report["comparison"] if c["metric"] == "best_select_psnr")
    assert psnr["ci_low"] is None and "not enough trials" in psnr["note"]
    assert report["importance"]["bild"]["method"] == "spearman" and report["importance"]["bild"]["note"]


def test_importance_uses_optuna_with_enough_trials(search_run: Path) -> None:
    importance = analyze([search_run])["importance"]
    everything, bild = importance["all"], importance["bild"]
    assert everything["n_trials"] == 5 and everything["method"].startswith("optuna")
    # Plain trials leave alpha, outer_lr and val_fraction empty: across modes only inner_lr and mode compare.
    assert {p["name"] for p in everything["params"]} == {"inner_lr", "mode"} and "alpha" in everything["note"]
    assert bild["n_trials"] == 3 and bild["method"].startswith("optuna") and bild["note"] is None
    assert {p["name"] for p in bild["params"]} == {"alpha", "inner_lr", "outer_lr", "val_fraction"}
    for scope in (everything, bild):
        assert sum(p["importance"] for p in scope["params"]) == pytest.approx(1.0)
    assert importance["plain"]["method"] == "spearman"  # two trials: too few for Optuna


def test_curves_follow_the_epoch_table(search_run: Path) -> None:
    curves = {c["trial_id"]: c for c in analyze([search_run])["curves"]}
    epochs = read_table([search_run], "epochs")
    assert set(curves) == set(epochs["trial_id"]) and len(curves) == 5
    t2 = epochs.filter(pl.col("trial_id") == "t2-bild").sort("epoch")
    assert curves["t2-bild"]["epoch"] == [1, 2] and curves["t2-bild"]["select_psnr"] == t2["select_psnr"].to_list()


def test_ssim_metric_ranks_by_ssim(search_run: Path) -> None:
    board = analyze([search_run], metric="select_ssim")["leaderboard"][:5]
    values = [r["best_select_ssim"] for r in board]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError, match="select_loss"):
        analyze([search_run], metric="select_loss")


def test_table_and_markdown_renderings(search_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = analyze([search_run])
    markdown = render(report, "markdown")
    assert "## Leaderboard (by best select_psnr)" in markdown and "| rank | experiment | trial_id |" in markdown
    assert main([str(search_run)]) == 0
    table = capsys.readouterr().out
    for text in ("Leaderboard", "Modes", "Mode - plain", "Hyperparameter effects", "Learning curves", "t2-bild"):
        assert text in table
    with pytest.raises(ValueError, match="--format"):
        render(report, "html")


def test_plots_are_written(search_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(search_run), "--plots", str(tmp_path / "plots")]) == 0
    names = {"curves.png", "bild_vs_plain.png", "psnr_vs_alpha.png", "psnr_vs_inner_lr.png",
             "psnr_vs_outer_lr.png", "psnr_vs_val_fraction.png"}
    assert {p.name for p in (tmp_path / "plots").iterdir()} == names
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_MAGIC


def test_a_run_where_every_trial_failed(failed_run: Path, tmp_path: Path) -> None:
    report = analyze([failed_run])
    assert [r["status"] for r in report["leaderboard"]] == ["ERROR", "ERROR"] and report["curves"] == []
    assert all("not enough trials" in c["note"] for c in report["comparison"])
    assert "(none)" in render(report, "table")
    assert {p.name for p in write_plots(report, tmp_path)} == {"curves.png", "bild_vs_plain.png"}


def test_missing_run_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


@pytest.fixture(scope="module")
def builtin_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    hazy, clear = load_builtin().pair(0)  # 96x96: a 3x3 grid of the fixture's 32 px training crops
    folder = tmp_path_factory.mktemp("pair")
    Image.fromarray(hazy).save(folder / "hazy.png")
    Image.fromarray(clear).save(folder / "clear.png")
    return folder / "hazy.png", folder / "clear.png"


def test_patch_weights_of_a_bild_checkpoint(search_run: Path, builtin_pair: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt = search_run / "t2-bild" / "checkpoint_000001" / "checkpoint.pt"
    weights = patch_weights(ckpt, *builtin_pair, tmp_path / "w.png")
    assert weights.shape == (3, 3) and weights.mean() == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG_MAGIC
    assert patch_weights(ckpt, *builtin_pair, tmp_path / "w16.png", crop=16).shape == (6, 6)


def test_patch_weights_refuse_a_plain_checkpoint(
    search_run: Path, builtin_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = search_run / "t0-plain" / "checkpoint_000001" / "checkpoint.pt"
    with pytest.raises(ValueError, match="no reweighter"):
        patch_weights(ckpt, *builtin_pair, tmp_path / "w.png")
    argv = ["--weights", str(ckpt), "--hazy", str(builtin_pair[0]), "--clear", str(builtin_pair[1]),
            "--out", str(tmp_path / "w.png")]
    assert main(argv) == 2
    assert "no reweighter" in capsys.readouterr().err and not (tmp_path / "w.png").exists()
    with pytest.raises(SystemExit):
        main(argv[:2])  # --weights without --hazy/--clear/--out


def test_python_dash_m_prints_json(search_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.analyze", str(search_run), "--format", "json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["leaderboard"]) == 6


def test_paired_comparison_of_the_two_best_trials(search_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _json_report(search_run, capsys, "--paired", "--device", "cpu")
    paired = report["paired"]
    finished = read_table([search_run], "trials").filter(pl.col("status") == "TERMINATED")
    best = {m: finished.filter(pl.col("mode") == m).sort("best_select_psnr", descending=True).row(0, named=True)
            for m in ("bild", "plain")}
    assert {m: t["trial_id"] for m, t in paired["trials"].items()} == {m: best[m]["trial_id"] for m in best}
    psnr = next(r for r in paired["rows"] if r["metric"] == "psnr")
    # Image by image, the same scores whose means the search recorded.
    assert psnr["bild"] == pytest.approx(best["bild"]["best_select_psnr"], abs=1e-4)
    assert psnr["plain"] == pytest.approx(best["plain"]["best_select_psnr"], abs=1e-4)
    assert psnr["difference"] == pytest.approx(psnr["bild"] - psnr["plain"])
    assert psnr["ci_low"] <= psnr["difference"] <= psnr["ci_high"] and 0 <= psnr["bild_wins"] <= 1
    state = torch.load(paired["trials"]["bild"]["checkpoint"], weights_only=False)
    assert psnr["images"] == len(state["data"]["splits"]["select"])
    assert "Best bild - best plain" in render(report, "markdown")
    assert "paired" not in analyze([search_run])  # off by default: no model runs


def test_paired_bootstrap_keeps_each_items_difference() -> None:
    rng = np.random.default_rng(2)
    hard = rng.normal(0.0, 5.0, 30)  # item difficulty shared by both sides: cancels when paired
    low, high = bootstrap_diff(hard + 0.3, hard, paired=True)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)
    low, high = bootstrap_diff(hard + 0.3, hard)
    assert high - low > 3  # unpaired, the difficulty swamps the shift
    with pytest.raises(ValueError, match="paired"):
        bootstrap_diff(hard, hard[:5], paired=True)
