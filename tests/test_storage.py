"""Experiments, checkpoints, studies and models on object storage, against a real S3 server.

The server is moto's, started by the fixture on a free 127.0.0.1 port (tests/s3server.py);
everything goes through pyarrow's S3 filesystem as it would to AWS, and what landed in the
bucket is checked with boto3, not with the code under test. Compaction and the lease are
checked on the local disk too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import polars as pl
import pytest
import ray

from processes import ray_nodes, search_driver, trials_so_far
from s3server import S3_ENV, S3Server, free_port, moto_s3, s3_environ

from benchmarks.results_compaction import analyze_json, compact_all, synthetic_results
from pipeline.results import compact_epochs, read_table, results_dir
from pipeline.search import main, search
from pipeline.storage import StorageError, location
from pipeline.studies import study_name, study_storage
from pipeline.tune.lease import LEASE_FILE, ExperimentBusyError, experiment_lease

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "aodnet", "--preset", "tiny", "train.steps_per_epoch=3", "dataset.crop=32"]
FINAL = ["TERMINATED", "STOPPED", "ERROR", "NONFINITE"]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with moto_s3() as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own cache (the only local files an experiment on S3 may leave)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("BILD_CACHE", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _no_ray_left_behind():
    yield
    ray.shutdown()


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("trial_id", "epoch")


# --- URIs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("storage", "message"), [
    ("ftp://host/runs", "--storage 'ftp://host/runs': Unrecognized filesystem type"),
    ("s3:/bucket/runs", "--storage 's3:/bucket/runs' is not a valid URI"),
    ("s3://KEY:SECRET@bucket/runs", "credentials do not belong in the URI"),
])
def test_a_uri_that_cannot_be_used_is_refused_never_made_a_folder(
    storage: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--storage", storage, "--name", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "SECRET" not in err[0], err
    assert list(tmp_path.iterdir()) == [] and not ray.is_initialized()


def test_a_child_of_a_uri_keeps_its_endpoint_and_reads_back(s3: S3Server) -> None:
    runs = location(s3.uri("runs"))
    file = runs / "exp" / "a.txt"
    file.write_text("hello")
    again = location(str(file))
    assert str(again).startswith(f"s3://{s3.bucket}/runs/exp/a.txt?endpoint_override=")
    assert again.read_text() == "hello" and s3.keys() == ["runs/exp/a.txt"]
    assert [f.name for f in runs.files()] == ["a.txt"] and runs.is_dir() and not (runs / "nothing").exists()
    with pytest.raises(StorageError):
        location("gopher://x/y")


# --- compaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["local", "s3"])
def test_compaction_keeps_every_row_exactly_once_and_analyze_unchanged(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    root = location(request.getfixturevalue("s3").uri("runs")) if store == "s3" else location(tmp_path / "runs")
    exp = synthetic_results(root / "synthetic", trials=4, epochs=3)
    reference = _sorted(read_table([exp], "epochs"))
    report, _ = analyze_json(exp)
    epochs = results_dir(exp) / "epochs"
    files = epochs.files()
    assert len(files) == 12

    # A crash after the compacted file was written, before any per-epoch file was removed:
    # put one trial's epoch files back beside its compacted file.
    saved = {f: f.read_bytes() for f in files if f.parent.name == "t0000"}
    compact_epochs(exp, "t0000")
    for f, data in saved.items():
        f.write_bytes(data)
    names = sorted(f.name for f in (epochs / "t0000").files())
    assert names == ["compacted-00003.parquet", "epoch-00001.parquet", "epoch-00002.parquet", "epoch-00003.parquet"]
    assert _sorted(read_table([exp], "epochs")).equals(reference)

    compact_all(exp)  # removes the leftovers too
    assert len(epochs.files()) == 4 and all(f.name == "compacted-00003.parquet" for f in epochs.files())
    assert _sorted(read_table([exp], "epochs")).equals(reference)
    assert analyze_json(exp)[0] == report


def test_a_trial_resumed_after_compaction_adds_rows_beside_it(tmp_path: Path) -> None:
    exp = synthetic_results(tmp_path / "runs" / "synthetic", trials=1, epochs=2)
    compact_epochs(exp, "t0000")
    row = read_table([exp], "epochs").filter(pl.col("epoch") == 2).to_dicts()[0]
    from pipeline.results import write_epoch_row

    write_epoch_row(exp, {**row, "epoch": 3})  # the restarted trial's next epoch
    assert read_table([exp], "epochs")["epoch"].sort().to_list() == [1, 2, 3]
    compact_epochs(exp, "t0000")
    assert [f.name for f in (results_dir(exp) / "epochs").files()] == ["compacted-00003.parquet"]
    assert read_table([exp], "epochs")["epoch"].sort().to_list() == [1, 2, 3]


_COMPACT_FOREVER = """
import sys
sys.path.insert(0, sys.argv[2])
from benchmarks.results_compaction import compact_all
from pipeline.results import read_table, write_epoch_row
from pipeline.storage import location
exp = location(sys.argv[1])
rows = read_table([exp], "epochs").to_dicts()
print("ready", flush=True)
while True:  # compact, put the per-epoch files back, compact again ... until killed
    compact_all(exp)
    for row in rows:
        write_epoch_row(exp, row)
"""


def test_a_compaction_killed_at_any_moment_leaves_every_row_once(tmp_path: Path) -> None:
    exp = synthetic_results(tmp_path / "runs" / "synthetic", trials=6, epochs=4)
    reference = _sorted(read_table([exp], "epochs"))
    proc = subprocess.Popen([sys.executable, "-c", _COMPACT_FOREVER, str(exp), str(REPO)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for delay in (0.05, 0.13, 0.29, 0.41):
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGSTOP)  # a frozen writer: what a reader meets at that instant
            assert _sorted(read_table([exp], "epochs")).equals(reference)
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()  # kill -9, mid-way through some trial
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _sorted(read_table([exp], "epochs")).equals(reference)
    compact_all(exp)
    assert _sorted(read_table([exp], "epochs")).equals(reference)
    assert len((results_dir(exp) / "epochs").files()) == 6


# --- one writer per experiment ---------------------------------------------------------------------


def _lease(folder, **fields) -> None:
    (folder / LEASE_FILE).write_text(json.dumps(fields))


def test_a_live_lease_refuses_a_second_search_and_a_stale_one_is_taken_over(
    s3: S3Server, capsys: pytest.CaptureFixture
) -> None:
    exp = location(s3.uri("runs")) / "leased"
    _lease(exp, host="node-7", pid=4242, started=time.time() - 60, refreshed=time.time() - 10)
    with pytest.raises(ExperimentBusyError, match="being run by pid 4242 on node-7"), experiment_lease(exp):
        pass
    _lease(exp, host="node-7", pid=4242, started=time.time() - 900, refreshed=time.time() - 400)
    with experiment_lease(exp, refresh=0.2):
        assert "taking over experiment" in capsys.readouterr().err
        first = json.loads((exp / LEASE_FILE).read_text())
        assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
        time.sleep(0.7)
        assert json.loads((exp / LEASE_FILE).read_text())["refreshed"] > first["refreshed"]  # kept fresh
    assert not (exp / LEASE_FILE).exists()  # released at the end


# --- searches on S3 --------------------------------------------------------------------------------


def _generic_folder(root: Path, pairs: int) -> Path:
    from PIL import Image

    from pipeline.data import load_builtin

    index = load_builtin()
    for i in range(pairs):
        hazy, clear = index.pair(i)
        for sub, image in (("hazy", hazy), ("clear", clear)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / sub / f"{i}.png")
    return root


def _local_files(root: Path, cache: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and cache not in p.parents]


def test_a_search_on_s3_keeps_everything_in_the_bucket_then_promotes_and_serves_from_it(
    s3: S3Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runs = s3.uri("runs")
    summary = search([*TINY, "--storage", runs, "--name", "s3exp", "--trials", "2", "--epochs", "2"])
    exp = location(runs) / "s3exp"
    assert summary["experiment_dir"] == str(exp)
    keys = s3.keys("runs/s3exp/")
    for key in ("config.yaml", "search.json", "summary.json", "optuna/journal.log"):
        assert f"runs/s3exp/{key}" in keys
    assert any(k.startswith("runs/s3exp/tune-bild/") and k.endswith(".json") for k in keys), "Ray Tune's own state"
    # Every trial ended, so its epoch rows are one compacted object.
    # (pyarrow leaves an empty "folder/" marker object where it deleted the last file of a prefix)
    assert [k for k in keys if "/results/epochs/" in k and "compacted-" not in k and not k.endswith("/")] == []
    assert _local_files(tmp_path, cache) == [], "no file of the experiment on the local disk outside the cache"

    trials, epochs = read_table([str(exp)], "trials"), read_table([str(exp)], "epochs")
    assert trials.height == 2 and trials["status"].is_in(["TERMINATED", "STOPPED"]).all()
    assert set(epochs["trial_id"]) == set(trials["trial_id"]), "the compacted epoch rows hold every trial"
    for path in trials["best_checkpoint_path"]:
        assert path.startswith(f"s3://{s3.bucket}/runs/s3exp/tune-bild/trial_")
        assert path.split("?")[0].removeprefix(f"s3://{s3.bucket}/") in keys

    # The study, read with Optuna's own API through the bucket (a fresh cache: as on another machine).
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "other-machine"))
    study = optuna.load_study(study_name=study_name("s3exp", "bild"), storage=study_storage(str(exp)))
    told = {t.user_attrs["trial_id"]: t.value for t in study.trials}
    assert told == dict(zip(trials["trial_id"], trials["last_select_psnr"]))

    from pipeline import analyze, dehaze, promote
    from pipeline.evaluation import scoring

    assert analyze.main([str(exp), "--format", "json"]) == 0
    models = s3.uri("models")
    assert promote.main([str(exp), "--models-dir", models, "--device", "cpu"]) == 0
    assert {"models/aodnet/LATEST", "models/aodnet/v1/model.safetensors", "models/aodnet/v1/card.json",
            "models/index.parquet"} <= set(s3.keys("models/"))
    model = str(location(models) / "aodnet")
    bench = _generic_folder(tmp_path / "bench", pairs=2)
    rows = scoring.evaluate(model, "generic", bench)
    assert set(rows["method"]) == {"hazy", "dcp", "aodnet/v1"}
    cached = list((tmp_path / "other-machine" / "models").rglob("model.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert dehaze.main([str(bench / "hazy"), "--model", model, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]
    assert cached[0].stat().st_mtime_ns == stamp, "an unchanged model is never fetched again"
    # A trial checkpoint straight from the bucket, as evaluate --model takes it.
    assert scoring.evaluate(trials["best_checkpoint_path"][0], "generic", bench).height == 6


def test_kill_9_then_the_same_command_resumes_from_the_bucket_and_a_second_search_is_refused(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = s3.uri("runs")
    exp = str(location(runs) / "killed")
    argv = [*TINY, "--storage", runs, "--name", "killed", "--trials", "3", "--epochs", "2", "--concurrency", "1",
            "train.steps_per_epoch=12"]
    env = {**s3_environ(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "BILD_CACHE": str(tmp_path / "first")}
    proc = search_driver(argv, env)
    try:
        deadline = time.time() + 240
        while trials_so_far(exp).filter(pl.col("status").is_in(FINAL)).height < 1:
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no trial finished"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen mid-search, so it cannot finish before the second one asks
        second = subprocess.run([sys.executable, "-m", "pipeline.search", *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=120, env={**env, "BILD_CACHE": str(tmp_path / "second")})
        assert second.returncode == 2 and f"being run by pid {proc.pid} on {socket.gethostname()}" in second.stderr
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Another cache, as on another machine: the journal and everything else come from the bucket.
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "resumed"))
    summary = search(argv)
    trials = read_table([exp], "trials")
    assert summary["modes"][0]["trials"] == 3 and trials.height == 3
    assert trials["status"].is_in(FINAL).all()
    study = optuna.load_study(study_name=study_name("killed", "bild"), storage=study_storage(exp))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["trial_id"] for t in finished) == sorted(trials["trial_id"])
    assert not (location(exp) / LEASE_FILE).exists()


def test_a_two_node_cluster_without_a_shared_disk_puts_every_checkpoint_in_the_bucket(
    s3: S3Server, cache: Path, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    # Each node's workers need the credentials, as in a real cluster; every node and the driver (a command
    # of its own, as a user runs it) use the cluster's token.
    env = {**s3_environ(), "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "BILD_CACHE": str(cache)}
    with ray_nodes() as start:
        start("ray", "start", "--head", f"--port={port}", "--include-dashboard=false", *common, env=env)
        start("ray", "start", f"--address={address}", *common, env=env)
        runs = s3.uri("runs")
        done = subprocess.run([sys.executable, "-m", "pipeline.search", *TINY, "--storage", runs, "--name", "cluster",
                               "--address", address, "--trials", "2", "--epochs", "2", "--concurrency", "2",
                               "--cpus-per-trial", "1", "train.steps_per_epoch=15"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    exp = str(location(runs) / "cluster")
    epochs, trials = read_table([exp], "epochs"), read_table([exp], "trials")
    assert epochs["node"].n_unique() == 2, "trials should have run on both nodes"
    keys = set(s3.keys("runs/cluster/"))
    recorded = [p for p in [*epochs["checkpoint_path"], *trials["best_checkpoint_path"]] if p]
    assert recorded and all(p.startswith(f"s3://{s3.bucket}/runs/cluster/") for p in recorded)
    for path in trials["best_checkpoint_path"]:  # the kept ones: objects in the bucket, whichever node trained them
        assert path.split("?")[0].removeprefix(f"s3://{s3.bucket}/") in keys


def test_a_node_that_cannot_read_the_dataset_is_named_before_any_trial(tmp_path: Path) -> None:
    from pipeline.config import ConfigError
    from pipeline.data import load_dataset
    from pipeline.tune.runner import check_dataset_visible

    data = _generic_folder(tmp_path / "data", pairs=2)
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare(1) with mount namespaces to give one node its own view of the disk")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # as in the two-node test above
    with ray_nodes() as start:
        start("ray", "start", "--head", f"--port={port}", "--include-dashboard=false", *common, env=env)
        # The second node sees an empty folder where the dataset is: its own disk, as on another machine.
        start("unshare", "--mount", "--propagation", "private", "sh", "-c",
              f"mount -t tmpfs tmpfs {data} && ray start --address={address} {' '.join(common)} "
              "--resources='{\"blind\": 1}'", env=env)
        try:
            ray.init(address=address, log_to_driver=False)
            deadline = time.time() + 60
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                assert time.time() < deadline, "the second node never joined"
                time.sleep(0.5)
            blind = next(n for n in ray.nodes() if n["Alive"] and "blind" in n["Resources"])
            named = rf"dataset root .*: node {re.escape(blind['NodeManagerAddress'])} \(node {blind['NodeID'][:8]}\) cannot read"
            with pytest.raises(ConfigError, match=named):
                check_dataset_visible(load_dataset("generic", str(data)), cpus_per_trial=1, gpus_per_trial=0)
        finally:
            ray.shutdown()  # the driver leaves before its nodes stop


def test_train_writes_to_a_bucket_and_resumes_from_it(s3: S3Server, cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.checkpoints import load_checkpoint
    from pipeline.train import main as train

    monkeypatch.chdir(tmp_path)
    run = s3.uri("train/run1")
    base = ["--backbone", "aodnet", "--preset", "tiny", "--steps", "2", "--run-dir", run, "dataset.crop=32",
            "progress=false"]
    assert train([*base, "--epochs", "1"]) == 0
    assert train([*base, "--epochs", "2", "--resume"]) == 0
    assert sorted(s3.keys("train/run1/")) == ["train/run1/checkpoint.pt", "train/run1/config.yaml",
                                              "train/run1/metrics.jsonl"]
    lines = (location(run) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_checkpoint(str(location(run) / "checkpoint.pt"))["epoch"] == 2
    assert _local_files(tmp_path, cache) == []
