"""GPUs by default, on a CPU machine: a real Ray cluster started with fake GPU resources.

Ray schedules by resource counts, so a head node started with ``num_gpus=2`` hands out GPU ids
to trials exactly as it would on a machine with two cards. torch here has no CUDA, which is
what the failure test needs: a trial given a GPU it cannot use must fail with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import ray
from ray import cloudpickle, tune

from pipeline.hardware import denormals_flushed
from pipeline.results import read_table
from pipeline.search import search
from pipeline.tune.trainable import train_trial

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # trial workers cannot import the tests folder

TINY = ["--backbone", "aodnet", "--preset", "tiny", "train.steps_per_epoch=2", "dataset.crop=32",
        "dataset.select_images=2", "--epochs", "1", "--max-failures", "0"]

# A driver that starts a private Ray with two fake GPUs, prints its address, and holds it until stdin closes.
_FAKE_GPU_HEAD = """
import sys, ray
ctx = ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""


def _clean_env() -> dict[str, str]:
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH") if k in os.environ}


@pytest.fixture
def fake_gpu_cluster():
    # Without token authentication: the token of a cluster that ray.init starts stays in its own process.
    # A clean environment: what earlier searches in this process left in os.environ (Ray's own
    # variables, CUDA_VISIBLE_DEVICES) must not reach the new cluster's workers.
    env = {**_clean_env(), "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([sys.executable, "-c", _FAKE_GPU_HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        address = head.stdout.readline().strip()
        assert address, "the fake-GPU Ray head did not start"
        yield address
    finally:
        ray.shutdown()
        head.stdin.close()
        head.wait(timeout=60)


def recording_trial(config: dict[str, Any], **kwargs: Any) -> None:
    """The real trial, after writing what Ray gave it and what the trial's thread sees."""
    ctx = tune.get_context()
    seen = {
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "gpus": ctx.get_trial_resources().required_resources.get("GPU", 0.0),
        "denormals_flushed": denormals_flushed(2),
    }
    record = Path(kwargs["trials_dir"]).parent / f"seen-{ctx.get_trial_id()}.json"
    try:
        train_trial(config, **kwargs)
    finally:
        seen["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        record.write_text(json.dumps(seen))


def _seen(exp: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted(exp.glob("seen-*.json"))]


# A driver of its own, as a user's command is: this test process has already run other
# searches on private Rays, and joining a second cluster from it is not what a user does.
_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_gpu_scheduling import recording_trial
from pipeline.search import search
summary = search(sys.argv[2:], trainable=recording_trial)
print("SUMMARY " + json.dumps({"experiment_dir": summary["experiment_dir"]}))
"""


def _search_in_a_fresh_driver(argv: list[str]) -> tuple[Path, str]:
    """(experiment folder, the driver's stdout) of ``search(argv)`` with the recording trial, in a new process."""
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(Path(__file__).parent), *argv], capture_output=True,
                          text=True, timeout=300, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("SUMMARY "))
    return Path(json.loads(line.removeprefix("SUMMARY "))["experiment_dir"]), done.stdout


def test_auto_gives_each_trial_a_gpu_and_a_trial_without_cuda_fails_in_one_line(
        fake_gpu_cluster: str, tmp_path: Path) -> None:
    exp, out = _search_in_a_fresh_driver([*TINY, "--storage", str(tmp_path), "--name", "gpus", "--trials", "2",
                                          "--address", fake_gpu_cluster])
    assert "trials on GPU, 1 GPU each, 2 at once" in out
    seen = _seen(exp)
    assert len(seen) == 2 and all(s["gpus"] == 1.0 and len(s["gpu_ids"]) == 1 for s in seen)
    assert {s["gpu_ids"][0] for s in seen} <= {"0", "1"}
    trials = read_table([exp], "trials")
    assert trials["status"].to_list() == ["ERROR", "ERROR"]
    error = trials["error"][0]
    assert "torch sees no CUDA device" in error and "--gpus-per-trial 0" in error and "\n" not in error.strip()


def test_trials_per_gpu_packs_trials_on_one_gpu(fake_gpu_cluster: str, tmp_path: Path) -> None:
    exp, out = _search_in_a_fresh_driver([*TINY, "--storage", str(tmp_path), "--name", "packed", "--trials", "2",
                                          "--trials-per-gpu", "2", "--cpus-per-trial", "0.5", "--address",
                                          fake_gpu_cluster])
    assert "trials on GPU, 0.5 GPU each, 4 at once" in out
    seen = _seen(exp)
    assert len(seen) == 2 and all(s["gpus"] == 0.5 and s["gpu_ids"] for s in seen)


def test_without_gpus_trials_run_on_the_cpu_with_cuda_hidden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = search([*TINY, "--storage", str(tmp_path), "--name", "cpu", "--trials", "1"], trainable=recording_trial)
    assert "no GPU in the cluster: trials on CPU, 2 at once" in capsys.readouterr().out
    (seen,) = _seen(Path(summary["experiment_dir"]))
    assert seen["gpus"] == 0 and seen["gpu_ids"] == [] and seen["cuda_visible_devices"] == ""
    assert seen["denormals_flushed"], "the trial's thread must flush denormals in every torch thread"
    epochs = read_table([Path(summary["experiment_dir"])], "epochs")
    assert epochs["device"].to_list() == ["cpu"] and epochs["precision"].to_list() == ["fp32"]
    assert epochs.filter(pl.col("status") == "RUNNING").height == 1


def test_gpu_flags_that_contradict_each_other_are_refused_before_ray(tmp_path: Path) -> None:
    from pipeline.search import main

    for argv, message in (
        (["--gpus-per-trial", "0.5", "--trials-per-gpu", "2"], "--trials-per-gpu: goes with --gpus-per-trial auto"),
        (["--gpus-per-trial", "many"], "--gpus-per-trial: invalid _gpus value"),
        (["device=cuda"], "device=cuda: in a search Ray gives each trial its device"),
    ):
        start = time.monotonic()
        with pytest.raises((SystemExit, Exception)) as err:
            search([*TINY, "--storage", str(tmp_path), "--name", "bad", *argv])
        assert message in str(err.value) or err.type is SystemExit, argv
        assert time.monotonic() - start < 60 and not ray.is_initialized()
    assert main([*TINY, "--storage", str(tmp_path), "--name", "bad", "--gpus-per-trial", "0.5",
                 "--trials-per-gpu", "2"]) == 2
