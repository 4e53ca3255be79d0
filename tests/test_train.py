"""Training one model without Ray: every backbone through the CLI, learning, exact resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.backbones import list_backbones
from pipeline.bild import build_reweighter
from pipeline.config import compose_config, saved_config
from pipeline.checkpoints import load_checkpoint
from pipeline.train import main
from pipeline.trainer import Trainer, bild_config, train

REPO = Path(__file__).resolve().parents[1]
SMALL = ["progress=false", "dataset.crop=32"]


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_trains_an_epoch_from_the_cli(name: str, tmp_path: Path) -> None:
    argv = ["--backbone", name, "--preset", "tiny", "--epochs", "1", "--steps", "2", "--run-dir", str(tmp_path), *SMALL]
    assert main(argv) == 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["backbone"]["name"] == name and ckpt["epoch"] == 1
    assert set(ckpt["models"]) == {"backbone", "reweighter"} and ckpt["optimizers"]["outer"] is not None
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pipeline.train", "--backbone", "aodnet", "--preset", "tiny", "--mode", "plain",
           "--epochs", "1", "--steps", "2", "--run-dir", str(tmp_path), *SMALL]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "epoch 1/1" in out.stdout and "select PSNR" in out.stdout


def test_short_aodnet_run_beats_the_hazy_input(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=aodnet", "mode=plain", "train.epochs=3", "train.steps_per_epoch=40",
                          "train.inner_lr=1e-3", f"run_dir={tmp_path}", "progress=false", "dataset.crop=48"])
    metrics = train(cfg)
    assert metrics["select_psnr"] > metrics["hazy_psnr"] + 1.0, metrics


def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint.pt")


@pytest.mark.parametrize("rotation", [[], ["train.val_rotation=true", "train.val_fraction=0.5"]], ids=["fixed", "rotating"])
def test_resume_continues_the_same_run_exactly(tmp_path: Path, rotation: list[str]) -> None:
    # Rotating: two folds, so the resumed epoch must hold out the other fold, as the straight run did.
    common = ["backbone=ffanet", "backbone.preset=tiny", "mode=bild", "train.steps_per_epoch=3", *rotation, *SMALL]
    straight = compose_config([*common, "train.epochs=2", f"run_dir={tmp_path / 'a'}"])
    train(straight)
    first = compose_config([*common, "train.epochs=1", f"run_dir={tmp_path / 'b'}"])
    train(first)
    train(compose_config([*common, "train.epochs=2", f"run_dir={tmp_path / 'b'}"]), resume=True)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert a["step"] == b["step"] == 6
    for net in ("backbone", "reweighter"):
        for key, value in a["models"][net].items():
            assert torch.equal(value, b["models"][net][key]), f"{net}.{key} differs after resume"
    assert a["metrics"]["select_psnr"] == b["metrics"]["select_psnr"]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbone", "unet"], "unknown backbone 'unet'"),
        (["--backbone", "aodnet", "--preset", "giant"], "giant"),
        (["--backbone", "aodnet", "--crop", "500"], "crop"),
        (["--backbone", "aodnet", "--dataset", "sots-indoor", "--data-root", "/nonexistent/sots"], "/nonexistent/sots"),
        (["--backbone", "aodnet", "--resume"], "no checkpoint"),
        (["--backbone", "aodnet", "bild.estimator=magic"], "estimator='magic'"),
        (["--backbone", "aodnet", "policy=nope"], "unknown policy 'nope'"),
    ],
)
def test_bad_input_gets_a_clear_error(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "progress=false"]) == 2
    assert message in capsys.readouterr().err


def test_trainer_uses_scene_disjoint_train_and_validation(tmp_path: Path) -> None:
    trainer = Trainer(compose_config(["train.val_fraction=0.2", *SMALL]))
    scenes = lambda idx: {str(trainer.index.scenes[i]) for i in idx}  # noqa: E731
    assert trainer.val_idx and not scenes(trainer.train_idx) & scenes(trainer.val_idx)
    held_out = scenes(trainer.splits.select) | scenes(trainer.splits.test)
    assert not (scenes(trainer.train_idx) | scenes(trainer.val_idx)) & held_out


def test_val_rotation_holds_out_one_fold_per_epoch_and_trains_on_every_scene() -> None:
    cfg = compose_config(["train.val_rotation=true", "train.val_fraction=0.25", "train.steps_per_epoch=1",
                          "backbone.preset=tiny", *SMALL])
    trainer = Trainer(cfg)
    scenes = lambda idx: {trainer.index.scenes[i] for i in idx}  # noqa: E731
    folds, pool = trainer.folds, trainer.splits.train_pool
    assert len(folds) == 4 and sorted(i for fold in folds for i in fold) == pool
    trained: set[int] = set()
    for epoch in range(len(folds)):
        trainer.train_epoch()
        assert trainer.val_idx == folds[epoch] and trainer.val_crops.indices == folds[epoch]
        assert not scenes(trainer.train_idx) & scenes(trainer.val_idx)
        assert sorted(trainer.train_idx + trainer.val_idx) == pool and trainer.train_crops.indices == trainer.train_idx
        trained |= set(trainer.train_idx)
    assert trained == set(pool)  # no data tax: every pool scene was trained on
    plain = Trainer(compose_config(["mode=plain", "train.val_rotation=true", *SMALL]))
    assert plain.folds is None and plain.train_idx == plain.splits.train_pool  # plain has no split to rotate
    with pytest.raises(ValueError, match="val_rotation"):
        Trainer(cfg, train_pairs=pool[:3])


def test_warmup_steps_are_plain_and_leave_the_reweighter_untouched() -> None:
    trainer = Trainer(compose_config(["train.bild_warmup_steps=2", "train.steps_per_epoch=3",
                                      "backbone.preset=tiny", *SMALL]))
    reweighter = trainer.nets.reweighter
    start = [p.detach().clone() for p in reweighter.parameters()]
    seen: list[tuple[float, bool]] = []

    def record(batch: object, stats: object) -> None:
        seen.append((stats.ess, all(torch.equal(a, b) for a, b in zip(start, reweighter.parameters()))))

    metrics = trainer.train_epoch(on_step=record)
    assert [unchanged for _, unchanged in seen] == [True, True, False]
    assert np.isnan(seen[0][0]) and np.isnan(seen[1][0]) and np.isfinite(seen[2][0])
    assert metrics["ess"] == pytest.approx(seen[2][0])  # the epoch's mean over the steps that had weights


def test_bf16_autocast_and_channels_last_options_train(tmp_path: Path) -> None:
    # The GPU speed options must run end to end with finite losses on any device (CPU autocast is bf16 too).
    cfg = compose_config(["backbone=ffanet", "backbone.preset=tiny", "train.precision=bf16", "train.channels_last=true",
                          "train.epochs=1", "train.steps_per_epoch=3", f"run_dir={tmp_path}", *SMALL])
    metrics = train(cfg)
    assert metrics["loss"] == metrics["loss"] and metrics["select_psnr"] > 0  # finite, not NaN
    assert metrics["ess"] > 1.0


def test_on_step_sees_each_batch_with_its_pairs_and_per_crop_stats() -> None:
    # pipeline.wrong_targets relies on this: which pairs a step drew, and what BILD made of each crop.
    trainer = Trainer(compose_config(["train.steps_per_epoch=3", "train.batch_size=5", *SMALL]))
    seen = []
    trainer.train_epoch(on_step=lambda batch, stats: seen.append((batch, stats)))
    assert len(seen) == 3
    for batch, stats in seen:
        assert len(batch.pairs) == 5 and set(batch.pairs) <= set(trainer.train_idx)
        first = trainer.index.pair(batch.pairs[0])[1]  # the clear image the first crop was cut from
        crop = (batch.clear[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert any(_contains(first[:, ::step], crop) for step in (1, -1))
        assert stats.crop_weights.shape == stats.crop_align.shape == (5,)


def _contains(image, crop) -> bool:
    """Whether ``crop`` (S x S x 3) appears at some offset of ``image`` (H x W x 3)."""
    s = crop.shape[0]
    h, w = image.shape[:2]
    return any((image[t : t + s, x : x + s] == crop).all() for t in range(h - s + 1) for x in range(w - s + 1))


def test_train_pairs_replace_the_training_split() -> None:
    cfg = compose_config(["mode=plain", *SMALL])
    pool = Trainer(cfg).splits.train_pool
    trainer = Trainer(cfg, train_pairs=pool[:4])
    assert trainer.train_idx == pool[:4] and trainer.train_crops.indices == pool[:4]


@pytest.mark.parametrize(
    "policy, batch_norm",
    [([], True), (["--policy", "paper"], False)],
    ids=["default", "paper"],
)
def test_reweighting_policies_train_and_reload(tmp_path: Path, policy: list[str], batch_norm: bool) -> None:
    # The default policy (KL barrier, unbounded scores, batch-standardised features, pair
    # consistency) and the paper's (entropy, tanh-bounded scores): each checkpoint must rebuild
    # the network it was trained with.
    argv = ["--backbone", "aodnet", "--preset", "tiny", "--epochs", "1", "--steps", "3", "--run-dir", str(tmp_path),
            *SMALL, *policy]
    assert main(argv) == 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    reweighter = build_reweighter(ckpt["config"]["bild"])
    reweighter.load_state_dict(ckpt["models"]["reweighter"])  # strict: the batch-norm buffers match
    assert ckpt["config"]["bild"]["regulariser"] == ("uniform_kl" if batch_norm else "entropy")
    assert (reweighter.score_bound == 0) == batch_norm and reweighter.pair_consistency == batch_norm
    assert ("feature_norm.running_var" in ckpt["models"]["reweighter"]) == batch_norm


def test_resume_keeps_the_runs_own_policy_and_says_what_it_ignores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A run started with the paper's policy, resumed by a command that names neither it nor the
    # same alpha: it must go on with its own networks, not today's defaults, and say so.
    base = ["--backbone", "aodnet", "--preset", "tiny", "--steps", "2", "--run-dir", str(tmp_path), *SMALL]
    assert main([*base, "--epochs", "1", "--policy", "paper"]) == 0
    assert main([*base, "--epochs", "2", "--alpha", "0.5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "ignored from this command" in out and "bild.alpha=0.5" in out and "bild.regulariser='uniform_kl'" in out
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["bild"]["regulariser"] == "entropy"
    assert ckpt["config"]["bild"]["alpha"] == 1.0 and ckpt["config"]["train"]["epochs"] == 2


def test_resume_of_a_run_saved_before_an_option_existed_takes_the_commands_value(tmp_path: Path) -> None:
    # A checkpoint written before train.channels_last existed: the resumed run gets the key from
    # the command (it has no value of its own) instead of failing on a missing key.
    base = ["--backbone", "aodnet", "--preset", "tiny", "--steps", "2", "--run-dir", str(tmp_path), *SMALL]
    assert main([*base, "--epochs", "1"]) == 0
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["config"]["train"]["channels_last"]
    torch.save(state, tmp_path / "checkpoint.pt")
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["train"]["channels_last"] is True


def test_a_config_saved_before_the_policy_options_rebuilds_the_policy_it_trained() -> None:
    # Checkpoints from before regulariser / reweighter_norm / pair_consistency existed trained the
    # paper's policy; they must not pick up today's defaults when they are reloaded or resumed.
    # The oldest lack score_bound too: the reweighter's tanh bound was then fixed at 3.
    policy_keys = ("regulariser", "score_bound", "reweighter_norm", "pair_consistency")
    old_bild = {k: v for k, v in compose_config([]).bild.items() if k not in policy_keys}
    reweighter = build_reweighter(saved_config({"bild": old_bild}).bild)
    assert not reweighter.pair_consistency and isinstance(reweighter.feature_norm, torch.nn.Identity)
    assert reweighter.score_bound == 3.0
    old_cfg = OmegaConf.to_container(compose_config([]))  # as read back from a checkpoint
    del old_cfg["bild"]["regulariser"]
    assert bild_config(saved_config(old_cfg)).regulariser == "entropy"


def test_default_threads_follow_the_cpus_and_sleep_when_idle() -> None:
    from pipeline.evaluation.inference import set_threads

    previous = torch.get_num_threads()
    try:
        assert set_threads(None, cpus=3) == 3 == torch.get_num_threads()  # a trial's --cpus-per-trial
        assert set_threads(2, cpus=6) == 2  # asked for: as asked
        with pytest.raises(ValueError, match="threads=0"):
            set_threads(0)
    finally:
        torch.set_num_threads(previous)
    # Importing the package before torch makes torch's OpenMP threads sleep instead of spinning.
    probe = "import os, pipeline, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PASSIVE", out.stderr
