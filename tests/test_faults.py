"""Long searches survive what happens to real ones: kill -9, SIGTERM, Ctrl-C, a full disk, a second
search on the same experiment, a foreign Ray cluster on the machine, impossible resources.

Every fault is the real thing: signals to a real driver process and its real Ray workers, a
real tmpfs that fills up, a real second cluster started with ``ray start``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import ray

from processes import ray_nodes, search_driver, trials_so_far

from pipeline.results import read_table
from pipeline.search import main, search

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "aodnet", "--preset", "tiny", "train.steps_per_epoch=3", "dataset.crop=32"]
FINAL = ["TERMINATED", "STOPPED", "ERROR", "NONFINITE"]


@pytest.fixture(autouse=True)
def _no_ray_left_behind():
    yield
    ray.shutdown()


def _argv(storage: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "--storage", str(storage), "--name", name, *extra]


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the search ended early:\n{proc.stdout.read()}"
        assert time.time() < deadline, "timed out waiting for the search"
        time.sleep(0.3)


def _epoch_stamps(exp: Path) -> dict[tuple[str, int], object]:
    epochs = read_table([exp], "epochs")
    return {(r["trial_id"], r["epoch"]): r["timestamp"] for r in epochs.iter_rows(named=True)}


def _check_exact(exp: Path, trials: int) -> pl.DataFrame:
    table = trials_so_far(exp)
    assert table.height == trials, table
    assert table["status"].is_in(FINAL).all(), table.select("trial_id", "status")
    return table


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_driver_resumes_exactly(tmp_path: Path, sig: signal.Signals) -> None:
    argv = _argv(tmp_path, "killed", "--trials", "4", "--epochs", "3", "--concurrency", "2",
                 "train.steps_per_epoch=12")
    exp = tmp_path / "killed"
    proc = search_driver(argv)
    try:
        # Kill once a trial has settled (ASHA's decision or the end) and others are mid-way.
        _wait_for(lambda: trials_so_far(exp).filter(pl.col("status").is_in(FINAL)).height >= 1
                  and trials_so_far(exp).filter(pl.col("epochs") >= 1).height >= 2, proc)
        before = trials_so_far(exp)
        stamps = _epoch_stamps(exp)
        os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == signal.SIGTERM:  # a clean stop, said in one line: not Ray's raw stack dump
        assert proc.returncode == 130, out
        assert "interrupted:" in out and "continue with: python -m pipeline.search --name killed" in out
        assert "*** SIGTERM received" not in out and "search finished" not in out

    summary = search(argv)
    table = _check_exact(exp, 4)
    assert summary["modes"][0]["trials"] == 4
    settled = before.filter(pl.col("status").is_in(FINAL))
    for row in settled.iter_rows(named=True):  # decisions made before the kill stand
        now = table.filter(pl.col("trial_id") == row["trial_id"]).row(0, named=True)
        assert (now["status"], now["epochs"]) == (row["status"], row["epochs"])
    after = _epoch_stamps(exp)
    # Every epoch reported before the kill is kept as it was: no trial started again from scratch.
    assert all(after[key] == stamp for key, stamp in stamps.items() if key[0] in set(table["trial_id"]))
    assert not list((exp / "results").rglob("*.tmp")) and "RUNNING" not in table["status"].to_list()


def test_ctrl_c_stops_both_modes_at_once_and_says_so(tmp_path: Path) -> None:
    argv = _argv(tmp_path, "both", "--mode", "both", "--trials", "2", "--epochs", "3", "--concurrency", "1",
                 "train.steps_per_epoch=12")
    exp = tmp_path / "both"
    proc = search_driver(argv)
    try:
        _wait_for(lambda: trials_so_far(exp).filter(pl.col("epochs") >= 1).height >= 1, proc)
        proc.send_signal(signal.SIGINT)  # one Ctrl-C
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "interrupted:" in out and "search finished" not in out and "pipeline.promote" not in out
    assert not (exp / "tune-plain").exists(), "the plain half must not start after Ctrl-C"


def test_a_second_search_on_the_same_experiment_stops_at_once(tmp_path: Path) -> None:
    argv = _argv(tmp_path, "busy", "--trials", "2", "--epochs", "2", "train.steps_per_epoch=15")
    first = search_driver(argv)
    try:
        _wait_for(lambda: (tmp_path / "busy" / ".search.lock").exists()
                  and (tmp_path / "busy" / ".search.lock").read_text().strip() != "", first)
        second = subprocess.run([sys.executable, "-m", "pipeline.search", *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "is being run by" in second.stderr
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    _check_exact(tmp_path / "busy", 2)


def test_a_foreign_ray_cluster_is_never_joined_without_address(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ray_nodes() as start:
        start("ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
              "--disable-usage-stats")
        out = subprocess.run([sys.executable, "-m", "pipeline.search",
                              *_argv(tmp_path, "private", "--trials", "1", "--epochs", "1")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started a private local Ray" in out.stdout and f":{port}" not in out.stdout.split("Ray:")[1].split("\n")[0]


def test_resources_no_node_has_fail_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_argv(tmp_path, "huge", "--cpus-per-trial", "64")) == 2
    err = capsys.readouterr().err
    assert "--cpus-per-trial 64: no node of this Ray cluster has 64 CPUs" in err
    assert not (tmp_path / "huge" / "tune-bild").exists()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_stops_with_one_line_then_the_same_command_resumes(tmp_path: Path) -> None:
    storage = tmp_path / "small-disk"
    if not _mount_tmpfs(storage, "400k"):
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    try:
        argv = _argv(storage, "full", "--trials", "2", "--epochs", "3")
        first = subprocess.run([sys.executable, "-m", "pipeline.search", *argv], cwd=REPO, capture_output=True,
                               text=True, timeout=300)
        assert first.returncode == 2, first.stdout + first.stderr
        errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left" in errors[0], first.stderr
        assert "Traceback" not in first.stderr
        # Nothing half-written is left where a reader would take it for whole.
        assert not [p for p in storage.rglob("checkpoint.pt") if p.stat().st_size == 0]
        subprocess.run(["mount", "-o", "remount,size=200m", str(storage)], check=True)
        summary = search(argv)  # space freed: the same command resumes
        _check_exact(storage / "full", 2)
        assert summary["modes"][0]["trials"] == 2
    finally:
        subprocess.run(["umount", "-l", str(storage)], capture_output=True)
