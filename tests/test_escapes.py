"""Nothing escapes, nothing hangs, nothing fails quietly: experiment names stay inside --storage, the
Optuna journal survives being cut or lost, a dead --address fails fast, a search whose every trial
failed says so in its exit code, every image format Pillow reads is read or reported, a damaged
checkpoint is reported, and the private Ray listens on loopback only.

Real signals, real files, a real Ray, real sockets (listed from /proc).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import ray
from PIL import Image

from faults import cuts_checkpoint_then_dies_at_epoch, nan_at_epoch
from sockets import descendants, listening_sockets

from pipeline import dehaze, train
from pipeline.data import __main__ as data_cli
from pipeline.data.images import decode_image
from pipeline.progress import progress_bar
from pipeline.results import read_table
from pipeline.search import main, search
from pipeline.studies import study_journal, study_name, study_storage
from pipeline.tune.runner import SearchOptions, start_ray
from pipeline.tune.space import load_search_space

TINY = ["--backbone", "aodnet", "--preset", "tiny", "train.steps_per_epoch=3", "dataset.crop=32"]
TINY_TRAIN = ["--backbone", "aodnet", "--preset", "tiny", "--steps", "2", "--epochs", "1", "dataset.crop=32",
              "dataset.decoded_cache=false"]


@pytest.fixture(autouse=True)
def _no_ray_left_behind():
    yield
    ray.shutdown()


def _argv(storage: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "--storage", str(storage), "--name", name, *extra]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# 1. Experiment names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", ".", "..", "ABSOLUTE", "a/b", "with space", "x" * 101, "link"])
def test_an_experiment_name_that_leaves_storage_is_refused_before_anything_is_written(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    storage, outside = tmp_path / "runs", tmp_path / "outside"
    storage.mkdir()
    outside.mkdir()
    (storage / "link").symlink_to(outside, target_is_directory=True)
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    assert main([*TINY, "--storage", str(storage), "--name", name]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and err.startswith("error: --name") and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "runs"]  # nothing beside storage ...
    assert [p.name for p in storage.iterdir()] == ["link"] and not list(outside.iterdir())  # ... nor in it
    assert not ray.is_initialized()


# 2. The Optuna journal, cut and lost -----------------------------------------------------------


def _check_study_matches_parquet(exp: Path, name: str) -> None:
    """As tests/test_study.py checks a study: each Parquet trial once, finished, with its value and parameters."""
    trials = read_table([exp], "trials")
    searched = sorted(load_search_space("default").for_mode("bild"))
    study = optuna.load_study(study_name=study_name(name, "bild"), storage=study_storage(exp))
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert sorted(by_id) == sorted(trials["trial_id"])
    for row in trials.iter_rows(named=True):
        trial = by_id[row["trial_id"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(row["last_select_psnr"], abs=1e-12)
        assert sorted(trial.params) == searched
        assert all(trial.params[p] == pytest.approx(row[p], rel=1e-12) for p in searched)


def test_a_journal_cut_at_a_random_byte_or_deleted_is_recovered_on_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = _argv(tmp_path, "journal", "--trials", "2", "--epochs", "2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    # Tune's status table ranks by the last epoch, the summary by the best one: the summary says so.
    assert "Ray Tune's status table above ranks by the last epoch" in out
    exp = tmp_path / "journal"
    journal = study_journal(exp)
    assert journal.with_name("journal.log.last-good").read_bytes() == journal.read_bytes()

    data = journal.read_bytes()
    cut = random.Random(23).randrange(len(data) // 2, len(data) - 1)
    if data[cut - 1:cut] == b"\n":
        cut -= 1  # mid-record, as a crash leaves it
    journal.write_bytes(data[:cut])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "ended in a torn record" in err and "Traceback" not in err, err
    assert list(journal.parent.glob("journal.log.damaged-*"))  # the file as it was, kept
    _check_study_matches_parquet(exp, "journal")

    shutil.rmtree(journal.parent)  # the journal and its last good copy: only the Parquet records are left
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "rebuilt" in err and "from the Parquet records" in err and "Traceback" not in err, err
    _check_study_matches_parquet(exp, "journal")


# 3. A dead --address -------------------------------------------------------------------------


def test_a_dead_address_fails_within_30_seconds_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert main(_argv(tmp_path, "dead", "--address", f"127.0.0.1:{port}")) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1, err
    assert f"--address 127.0.0.1:{port}" in err and "tried a TCP connection" in err
    assert not ray.is_initialized()


# 4. Honest exit codes and bounds ---------------------------------------------------------------


def test_a_search_whose_every_trial_failed_exits_non_zero_with_the_common_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_argv(tmp_path, "doomed", "--trials", "2", "--epochs", "1"), trainable=nan_at_epoch(1)) == 4
    err = capsys.readouterr().err
    assert "error: all 2 trials failed; the most common failure (2 of 2)" in err and "loss is nan" in err, err


def test_out_of_bounds_ranges_and_sizes_are_refused_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  mix: {key: bild.mix, type: float, low: 0.0, high: 5.0}\n")
    assert main(_argv(tmp_path, "mix", "--search-space", str(space))) == 2
    assert "space.mix.high: bild.mix=5.0: expected a number in [0, 1]" in capsys.readouterr().err
    # A batch whose crops alone outgrow the machine is refused with the numbers, not thrashed through.
    assert main(_argv(tmp_path, "huge", "train.batch_size=100000000")) == 2
    err = capsys.readouterr().err
    assert "out of memory before the first step: train.batch_size=100000000" in err and "GiB" in err, err
    assert not ray.is_initialized() and not (tmp_path / "mix").exists() and not (tmp_path / "huge").exists()


# 5. Every format Pillow reads ------------------------------------------------------------------

FORMATS = (".webp", ".tif", ".gif")


def _write(path: Path, pixels: np.ndarray, second_frame: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if path.suffix == ".gif" and second_frame:  # animated: the first frame is the picture
        image.save(path, save_all=True, append_images=[Image.fromarray(255 - pixels)], duration=100, loop=0)
    else:
        image.save(path, **({"lossless": True} if path.suffix == ".webp" else {}))


def _mixed_format_dataset(root: Path, pairs: int = 8) -> Path:
    rng = np.random.default_rng(5)
    for k in range(pairs):
        ext = FORMATS[k % len(FORMATS)]
        clear = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        hazy = (0.6 * clear + 90).astype(np.uint8)
        _write(root / "hazy" / f"s{k}{ext}", hazy, second_frame=True)
        _write(root / "clear" / f"s{k}{ext}", clear, second_frame=False)
    (root / "hazy" / "notes.txt").write_text("where these came from")
    return root


def test_webp_tiff_and_gif_are_read_and_other_files_reported_by_inspect_train_and_dehaze(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _mixed_format_dataset(tmp_path / "mixed")
    first = decode_image(root / "hazy" / "s2.gif")
    with Image.open(root / "hazy" / "s2.gif") as gif:
        assert gif.n_frames == 2 and np.array_equal(first, np.asarray(gif.convert("RGB")))

    assert data_cli.main(["inspect", str(root)]) == 0
    report = capsys.readouterr().out
    assert "pairs     8" in report and "problems  none" in report
    assert f"skipped   1\n  - {root / 'hazy' / 'notes.txt'}: skipped, .txt is not an image" in report

    # `auto` means what it means in evaluate: detect the layout of --data-root.
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="notes.txt: skipped"):
        assert train.main([*TINY_TRAIN, "--dataset", "auto", "--data-root", str(root), "--run-dir", str(run)]) == 0

    out = tmp_path / "out"
    assert dehaze.main([str(root / "hazy"), "--model", str(run / "checkpoint.pt"), "--out", str(out), "--quiet"]) == 1
    streams = capsys.readouterr()
    assert f"skipped {root / 'hazy' / 'notes.txt'}: .txt is not an image" in streams.err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"s{k}{FORMATS[k % 3]}" for k in range(8))


# 6. A damaged checkpoint -----------------------------------------------------------------------


def test_a_truncated_checkpoint_is_skipped_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = search(_argv(tmp_path, "cut", "--trials", "1", "--epochs", "3"),
                     trainable=cuts_checkpoint_then_dies_at_epoch(2))
    trials = read_table([Path(summary["experiment_dir"])], "trials")
    assert trials["status"].to_list() == ["TERMINATED"] and trials["epochs"].to_list() == [3]
    note = trials["resumed_from"][0]
    damaged = Path(trials["trial_dir"][0]) / "checkpoint_000001" / "checkpoint.pt"
    assert f"skipped damaged checkpoint: {damaged} could not be read" in note, note
    assert note.endswith(f"resumed from {damaged.parent.parent / 'checkpoint_000000' / 'checkpoint.pt'} (epoch 1)")
    assert f"trial {trials['trial_id'][0]}: {note}" in capsys.readouterr().err  # and in the search's log
    epochs = read_table([Path(summary["experiment_dir"])], "epochs")
    assert sorted(epochs["epoch"].to_list()) == [1, 2, 3]  # went on from epoch 1, not from scratch


# 7. The private Ray listens on loopback only ----------------------------------------------------

LOOPBACK = ("127.0.0.1", "::1")


def _ray_sockets(settle_s: float = 4.0, limit_s: float = 60.0) -> list[tuple[int, str, str, int]]:
    """The listening sockets of this process's Ray, once no new one has opened for ``settle_s``."""
    deadline, seen, stable_since = time.monotonic() + limit_s, [], time.monotonic()
    while time.monotonic() < deadline:
        now = listening_sockets(descendants(os.getpid()))
        if now != seen:
            seen, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > settle_s and any(s[1] == "raylet" for s in seen):
            return seen
        time.sleep(0.5)
    return seen


def _options(tmp_path: Path, dashboard_host: str) -> SearchOptions:
    return SearchOptions(name="ports", storage=str(tmp_path), modes=("bild",), trials=1, epochs=1, concurrency=1,
                         cpus_per_trial=1, gpus_per_trial=0, seed=None, dashboard_host=dashboard_host)


def test_the_private_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    start_ray(_options(tmp_path, "127.0.0.1"))
    try:
        sockets = _ray_sockets()
    finally:
        ray.shutdown()
    names = {s[1] for s in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 8, sockets  # GCS, raylet, agents, metrics, dashboard
    assert [s for s in sockets if s[2] not in LOOPBACK] == [], sockets


def test_dashboard_host_opens_the_dashboard_alone(tmp_path: Path) -> None:
    info = start_ray(_options(tmp_path, "0.0.0.0"))
    try:
        sockets = _ray_sockets()
    finally:
        ray.shutdown()
    port = int(info["dashboard_url"].rsplit(":", 1)[1])
    assert [(s[2], s[3]) for s in sockets if s[2] not in LOOPBACK] == [("0.0.0.0", port)], sockets


# 8. Smaller inconsistencies ----------------------------------------------------------------------


def test_a_file_given_as_the_dataset_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "data.zip"
    a_file.write_bytes(b"PK")
    assert train.main([*TINY_TRAIN, "--dataset", "auto", "--data-root", str(a_file), "--run-dir",
                       str(tmp_path / "run")]) == 2
    assert f"dataset folder {a_file} is a file, not a folder" in capsys.readouterr().err
    assert data_cli.main(["inspect", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_progress_bars_into_a_file_update_every_few_seconds_and_quiet_silences_them(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = io.StringIO()  # not a terminal, as a redirected log is
    for _ in progress_bar(range(200), file=log, desc="steps"):
        time.sleep(0.01)  # 2 s of steps: redrawn at the start and the end only
    assert log.getvalue().count("steps:") <= 3, log.getvalue()
    argv = ["--backbone", "aodnet", "--preset", "tiny", "--steps", "8", "--epochs", "1", "dataset.crop=32",
            "train.loader_workers=0"]
    assert train.main([*argv, "--run-dir", str(tmp_path / "a")]) == 0
    assert 1 <= capsys.readouterr().err.count("epoch 1:") <= 4
    assert train.main([*argv, "--run-dir", str(tmp_path / "b"), "--quiet"]) == 0
    assert "epoch 1:" not in capsys.readouterr().err
