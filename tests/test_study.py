"""The search's Optuna studies, where Optuna's own tools read them: one real search, checked
against its Parquet trials table, through optuna.load_study, analyze and optuna-dashboard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
import polars as pl
import pytest
import ray

from pipeline.analysis.report import analyze
from pipeline.tune.space import load_search_space
from pipeline.results import read_table
from pipeline.search import search
from pipeline.studies import dashboard_command, study_journal, study_name, study_storage
from pipeline.tune.experiment import format_summary

ARGV = ["--backbone", "aodnet", "--preset", "tiny", "train.steps_per_epoch=3", "dataset.crop=32",
        "--name", "studied", "--mode", "both", "--trials", "3", "--epochs", "2"]
SEARCHED = {mode: sorted(load_search_space("default").for_mode(mode)) for mode in ("bild", "plain")}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    storage = tmp_path_factory.mktemp("runs")
    try:
        summary = search([*ARGV, "--storage", str(storage)])
    finally:
        ray.shutdown()
    return Path(summary["experiment_dir"]), summary


def _study_rows(exp: Path, mode: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name("studied", mode), storage=study_storage(exp))
    return {t.user_attrs["trial_id"]: t for t in study.trials}


def test_study_matches_parquet_and_a_rerun_adds_nothing(experiment: tuple[Path, dict[str, Any]],
                                                        capsys: pytest.CaptureFixture) -> None:
    exp, summary = experiment
    assert summary["optuna"]["storage"] == str(study_journal(exp))
    assert dashboard_command(exp) in format_summary(summary)
    trials = read_table([exp], "trials")
    for mode in ("bild", "plain"):
        rows = trials.filter(pl.col("mode") == mode)
        study = _study_rows(exp, mode)
        assert sorted(study) == sorted(rows["trial_id"]) and rows.height == 3  # each trial once, no other
        for row in rows.iter_rows(named=True):
            trial = study[row["trial_id"]]
            assert row["status"] in ("TERMINATED", "STOPPED") and trial.state == optuna.trial.TrialState.COMPLETE
            # OptunaSearch tells the last reported epoch's metric, ASHA-stopped or not.
            assert trial.value == pytest.approx(row["last_select_psnr"], abs=1e-12)
            assert sorted(trial.params) == SEARCHED[mode]
            assert all(math.isclose(trial.params[p], row[p], rel_tol=1e-12) for p in SEARCHED[mode])
        assert study[rows["trial_id"][0]].distributions["inner_lr"].log  # the search space's own ranges

    # analyze takes each mode's importances from its study; the "all" scope has no study to read.
    importance = analyze([exp])["importance"]
    bild = optuna.load_study(study_name="studied-bild", storage=study_storage(exp))
    expected = optuna.importance.get_param_importances(bild, evaluator=PedAnovaImportanceEvaluator())
    assert "on study studied-bild" in importance["bild"]["method"] and importance["bild"]["n_trials"] == 3
    assert {p["name"]: p["importance"] for p in importance["bild"]["params"]} == pytest.approx(expected)
    assert "on study" in importance["plain"]["method"] and "on study" not in importance["all"]["method"]

    before = {mode: _study_rows(exp, mode) for mode in ("bild", "plain")}
    search([*ARGV, "--storage", str(exp.parent)])  # the same command again: restores, runs nothing new
    printed = capsys.readouterr().out
    assert f"Optuna dashboard: {dashboard_command(exp)}" in printed
    for mode, trials_before in before.items():
        after = _study_rows(exp, mode)
        assert {k: (t.number, t.value) for k, t in after.items()} == {k: (t.number, t.value) for k, t in trials_before.items()}


def _get(app: Any, path: str) -> dict[str, Any]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_opens_the_journal(experiment: tuple[Path, dict[str, Any]]) -> None:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    exp, _ = experiment
    # What `optuna-dashboard <journal>` serves, without a server: its WSGI app on the same path.
    app = optuna_dashboard.wsgi(str(study_journal(exp)))
    studies = {s["study_name"]: s["study_id"] for s in _get(app, "/api/studies")["study_summaries"]}
    assert sorted(studies) == ["studied-bild", "studied-plain"]
    detail = _get(app, f"/api/studies/{studies['studied-bild']}")
    ray_ids = sorted(read_table([exp], "trials").filter(pl.col("mode") == "bild")["trial_id"])
    shown = sorted(a["value"] for t in detail["trials"] for a in t["user_attrs"] if a["key"] == "trial_id")
    assert shown == ray_ids
