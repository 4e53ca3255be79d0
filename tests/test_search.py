"""The search on a real local Ray: results, faults, the dashboard, interruption and a two-node cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import polars as pl
import pytest
import ray
from ray import tune

from faults import dies_once_after_saving_epoch, dies_once_at_epoch, nan_at_epoch

from pipeline.results import EPOCH_SCHEMA, TRIAL_SCHEMA, read_table
from pipeline.search import main, search
from pipeline.studies import study_name, study_storage
from pipeline.tune import SearchSpaceError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "aodnet", "--preset", "tiny", "train.steps_per_epoch=3", "dataset.crop=32"]


def _generic_folder(root: Path, pairs: int) -> Path:
    """Real hazed photos from the built-in data, written as a generic hazy/ + clear/ folder."""
    from PIL import Image

    from pipeline.data import load_builtin

    index = load_builtin()
    for i in range(pairs):
        hazy, clear = index.pair(i)
        ext = ".png" if i % 2 == 0 else ".JPG"  # mixed formats and case, as users' folders are
        for sub, image in (("hazy", hazy), ("clear", clear)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / sub / f"{i}{ext}")
    return root


def _argv(storage: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "--storage", str(storage), "--name", name, *extra]


@pytest.fixture(autouse=True)
def _no_ray_left_behind():
    yield
    ray.shutdown()


def test_search_both_modes_writes_parquet_that_matches_ray(tmp_path: Path) -> None:
    summary = search(_argv(tmp_path, "both", "--mode", "both", "--trials", "2", "--epochs", "2"))
    exp = Path(summary["experiment_dir"])
    assert [m["mode"] for m in summary["modes"]] == ["bild", "plain"]
    assert all(m["best"]["checkpoint"] and Path(m["best"]["checkpoint"]).exists() for m in summary["modes"])
    assert (exp / "config.yaml").read_text().count("backbone:") == 1

    epochs, trials = read_table([exp], "epochs"), read_table([exp], "trials")
    assert set(EPOCH_SCHEMA.names) <= set(epochs.columns) and set(TRIAL_SCHEMA.names) <= set(trials.columns)
    reported = 0
    for mode in ("bild", "plain"):
        analysis = tune.ExperimentAnalysis(str(exp / f"tune-{mode}"))
        reported += sum(len(df) for df in analysis.trial_dataframes.values())
        ids = {t.trial_id for t in analysis.trials}
        assert set(trials.filter(pl.col("mode") == mode)["trial_id"]) == ids
    assert epochs.height == reported and trials.height == 4
    assert trials["status"].is_in(["TERMINATED", "STOPPED"]).all()
    # Plain trials search the backbone's learning rate only; bild-only columns stay empty.
    plain = trials.filter(pl.col("mode") == "plain")
    assert plain["alpha"].is_null().all() and plain["inner_lr"].is_not_null().all()
    # The guard rail is searched with bild (search_spaces/default.yaml) and gets its own column.
    assert plain["mix"].is_null().all() and trials.filter(pl.col("mode") == "bild")["mix"].is_between(0, 1).all()
    assert epochs["store_shared"].all(), "trials must read the dataset index from the object store"
    assert epochs["select_psnr"].is_finite().all()

    # ... and on to a promoted model, its report, and dehazed photos, as a user would go.
    from pipeline import analyze, dehaze
    from pipeline.evaluation import scoring
    from pipeline.models.promotion import promote

    assert analyze.main([str(exp), "--format", "json"]) == 0
    card = promote(exp, tmp_path / "models")
    best = trials.sort("best_select_psnr", descending=True).row(0, named=True)
    assert card["source"]["trial_id"] == best["trial_id"] and card["test"]["psnr"] > 0
    model = tmp_path / "models" / "aodnet"
    bench = _generic_folder(tmp_path / "bench", pairs=2)
    rows = scoring.evaluate(model, "generic", bench)
    assert set(rows["method"]) == {"hazy", "dcp", "aodnet/v1"} and rows.height == 6
    assert dehaze.main([str(bench / "hazy"), "--model", str(model), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.JPG"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbone", "resnet"], "--backbone: unknown backbone 'resnet'"),
        (["--backbone", "aodnet", "--preset", "huge"], "--preset: unknown preset 'huge'"),
        (["--backbone", "aodnet", "--gpus-per-trial", "-1"], "--gpus-per-trial: got -1.0"),
        (["--backbone", "aodnet", "--trials", "0"], "--trials: got 0"),
        (["--backbone", "aodnet", "--dataset", "nowhere"], "unknown dataset 'nowhere'"),
        (["--backbone", "aodnet", "dataset.crop=4096"], "crop"),
        (["--backbone", "aodnet", "policy=nope"], "unknown policy 'nope'"),
    ],
)
def test_bad_flags_fail_clearly_before_ray_starts(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main([*argv, "--storage", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_malformed_search_space_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text("metric: select_psnr\nspace:\n  alpha: {key: bild.alpha, type: float, low: 2.0, high: 1.0}\n")
    with pytest.raises(SearchSpaceError, match=r"space\.yaml: space\.alpha"):
        search([*TINY, "--storage", str(tmp_path), "--search-space", str(bad)])
    bad.write_text("space:\n  alpha: {key: bild.no_such_key, type: float, low: 0.1, high: 1.0}\n")
    with pytest.raises(SearchSpaceError, match="bild.no_such_key"):
        search([*TINY, "--storage", str(tmp_path), "--search-space", str(bad)])
    assert not ray.is_initialized()


def test_killed_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    # With the paper's policy, so that --policy is seen reaching a trial and its checkpoints too.
    summary = search(_argv(tmp_path, "crash", "--trials", "1", "--epochs", "3", "--policy", "paper"),
                     trainable=dies_once_at_epoch(2))
    exp = Path(summary["experiment_dir"])
    assert "regulariser: entropy" in (exp / "config.yaml").read_text()
    trials, epochs = read_table([exp], "trials"), read_table([exp], "epochs")
    assert trials["status"].to_list() == ["TERMINATED"]
    assert "recovered after" in trials["error"][0]
    # Epoch 1 ran once, before the kill; the restarted actor continued at epoch 2, not from scratch.
    assert sorted(epochs["epoch"].to_list()) == [1, 2, 3]
    assert (Path(trials["trial_dir"][0]) / ".crashed_once").exists()


def test_a_trial_killed_with_its_last_epoch_saved_but_unreported_ends_with_it(tmp_path: Path) -> None:
    summary = search(_argv(tmp_path, "lost", "--trials", "1", "--epochs", "2"), trainable=dies_once_after_saving_epoch(2))
    exp = Path(summary["experiment_dir"])
    trials, epochs = read_table([exp], "trials"), read_table([exp], "epochs")
    # The restarted trial has nothing left to train: it reports the saved epoch, which the records take.
    assert trials["status"].to_list() == ["TERMINATED"] and trials["epochs"].to_list() == [2]
    assert sorted(epochs["epoch"].to_list()) == [1, 2]
    assert summary["modes"][0]["best"]["trial_id"] == trials["trial_id"][0]


def test_nan_loss_ends_the_trial_not_the_search(tmp_path: Path) -> None:
    summary = search(_argv(tmp_path, "nan", "--trials", "2", "--epochs", "3"), trainable=nan_at_epoch(2))
    trials = read_table([Path(summary["experiment_dir"])], "trials")
    # Every trial is poisoned at epoch 2, unless ASHA stopped it after epoch 1.
    assert "NONFINITE" in trials["status"].to_list() and trials["status"].is_in(["NONFINITE", "STOPPED"]).all()
    nonfinite = trials.filter(pl.col("status") == "NONFINITE")
    assert nonfinite["error"].str.contains("loss is nan").all()
    assert (nonfinite["best_epoch"] == 1).all()  # the last finite epoch's checkpoint stays the trial's best
    mode = summary["modes"][0]
    assert mode["errors"] == nonfinite.height  # a diverged trial counts as failed ...
    assert mode.get("best") is None or mode["best"]["trial_id"] not in set(nonfinite["trial_id"])  # ... never best


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    deadline, seen = time.time() + timeout, ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not printed within {timeout}s; output:\n{seen}")


def _finished_trials(exp: Path) -> pl.DataFrame:
    try:
        return read_table([exp], "trials").filter(pl.col("status").is_in(["TERMINATED", "STOPPED"]))
    except FileNotFoundError:
        return pl.DataFrame()


def test_dashboard_then_ctrl_c_then_same_name_resumes(tmp_path: Path) -> None:
    argv = _argv(tmp_path, "live", "--trials", "3", "--epochs", "3", "--concurrency", "1", "train.steps_per_epoch=15")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.search", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = _read_until(proc, "Ray dashboard:", 120).split()[2]
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
        deadline = time.time() + 60
        while True:  # the dashboard's HTTP server may still be coming up
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 200 and "ray_version" in json.loads(response.read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        exp = tmp_path / "live"
        deadline = time.time() + 180
        while _finished_trials(exp).height < 1:
            assert time.time() < deadline and proc.poll() is None, "no trial finished"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished_before = _finished_trials(exp)
    epochs_before = read_table([exp], "epochs")
    first = finished_before["trial_id"][0]

    summary = search(argv)  # the same --name again continues the experiment
    trials = read_table([exp], "trials")
    assert summary["modes"][0]["trials"] == 3 and trials.height == 3
    assert trials["status"].is_in(["TERMINATED", "STOPPED"]).all()
    epochs = read_table([exp], "epochs")
    # A trial that had finished is not run again.
    assert epochs.filter(pl.col("trial_id") == first).height == epochs_before.filter(pl.col("trial_id") == first).height
    # The Optuna study went through the same Ctrl-C: each trial in it once, all finished.
    study = optuna.load_study(study_name=study_name("live", "bild"), storage=study_storage(exp))
    assert sorted(t.user_attrs["trial_id"] for t in study.trials) == sorted(trials["trial_id"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


# The two-node cluster (head plus one `ray start --address` node) runs in tests/test_storage.py, with
# --storage on an S3 server: the same command, and every checkpoint checked to be in the bucket.
