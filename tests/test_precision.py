"""Mixed precision on the CPU: bf16 (and fp16) autocast through the BILD step, training, checkpoints and inference.

A CUDA card runs the same code paths with a different device type; CPU autocast is what CI can
run, and what these tests check: finite steps, rewards that rank crops as fp32 does, fp32
checkpoints, and the precision recorded where a run is recorded.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.backbones import create_backbone
from pipeline.bild import BildConfig, BildNets, CropBatch, Reweighter, bild_step
from pipeline.checkpoints import load_checkpoint
from pipeline.config import compose_config
from pipeline.hardware import grad_scaler, resolve_precision
from pipeline.trainer import Trainer, train

SMALL = ["progress=false", "dataset.crop=32", "train.loader_workers=0"]


def _step_cfg(precision: str, mode: str = "bild", estimator: str = "fd") -> BildConfig:
    return BildConfig(mode=mode, alpha=0.1, temperature=1.0, weighting="softmax", estimator=estimator,
                      reward_norm="batch", regulariser="uniform_kl", mix=1.0, ess_floor=0.0, precision=precision)


def _nets(backbone: torch.nn.Module, precision: str, mode: str = "bild") -> BildNets:
    backbone = copy.deepcopy(backbone)
    nets = BildNets(backbone, torch.optim.Adam(backbone.parameters(), 1e-3),
                    scaler=grad_scaler(precision, torch.device("cpu")))
    if mode != "plain":
        torch.manual_seed(3)
        nets.reweighter = Reweighter(width=4, depth=2)
        nets.outer_opt = torch.optim.Adam(nets.reweighter.parameters(), 1e-2)
    return nets


def _batch(n: int = 16, m: int = 4, size: int = 32) -> CropBatch:
    g = torch.Generator().manual_seed(1)
    clear = torch.rand(n + m, 3, size, size, generator=g)
    # Haze of a different density per crop, so that the crops differ in how much they teach.
    t = torch.linspace(0.2, 0.9, n + m)[:, None, None, None]
    hazy = clear * t + 0.8 * (1 - t)
    return CropBatch(hazy[:n], clear[:n], hazy[n:], clear[n:])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731  (no ties in continuous values)
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def test_auto_precision_is_fp32_on_the_cpu_and_a_bad_name_is_refused() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision 'half' is not valid; expected one of auto, fp32, bf16, fp16"):
        resolve_precision("half", torch.device("cpu"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["bild", "plain"])
def test_one_step_under_autocast_has_finite_losses(precision: str, mode: str) -> None:
    torch.manual_seed(0)
    nets = _nets(create_backbone("ffanet", "tiny"), precision, mode)
    before = [p.detach().clone() for p in nets.backbone.parameters()]
    stats = bild_step(_batch(8), nets, _step_cfg(precision, mode))
    assert np.isfinite(stats.loss) and np.isfinite(stats.crop_loss)
    if mode == "bild":
        assert np.isfinite(stats.val_loss) and np.isfinite(stats.reward_mean)
    # Weights stay float32 (autocast casts copies) and the step moved them.
    assert all(p.dtype == torch.float32 for p in nets.backbone.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, nets.backbone.parameters()))


@pytest.mark.parametrize("estimator", ["fd", "jvp"])
@pytest.mark.parametrize("name", ["aodnet", "ffanet", "griddehazenet"])
def test_bf16_rewards_rank_the_crops_as_fp32_rewards_do(name: str, estimator: str) -> None:
    # One BILD step from the same state on the same batch: bf16 changes the inner step, the
    # validation gradient and (jvp) the alignment's arithmetic, but not which crops are rewarded.
    torch.manual_seed(0)
    backbone = create_backbone(name, "tiny")
    batch = _batch()
    rewards = {}
    for precision in ("fp32", "bf16"):
        nets = _nets(backbone, precision)
        stats = bild_step(batch, nets, _step_cfg(precision, estimator=estimator))
        align = (stats.crop_align - stats.crop_align.mean()) / stats.crop_align.std()
        rewards[precision] = (stats.crop_weights * align).numpy()  # R_i's data term, as eq. 6 ranks the crops
    assert not np.array_equal(rewards["fp32"], rewards["bf16"])  # autocast did change the arithmetic
    rho = _spearman(rewards["fp32"], rewards["bf16"])
    print(f"{name} {estimator}: Spearman(bf16, fp32) = {rho:.3f}")
    assert rho >= 0.9


def test_a_bf16_run_records_its_precision_and_its_checkpoint_loads_in_fp32(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=aodnet", "backbone.preset=tiny", "train.precision=bf16", "train.epochs=1",
                          "train.steps_per_epoch=2", f"run_dir={tmp_path / 'bf16'}", *SMALL])
    metrics = train(cfg)
    assert np.isfinite(metrics["loss"]) and metrics["select_psnr"] > 0
    state = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")
    assert state["config"]["train"]["precision"] == "bf16"
    assert "precision: bf16" in (tmp_path / "bf16" / "config.yaml").read_text()
    weights = state["models"]["backbone"]
    assert all(t.dtype == torch.float32 for t in weights.values())
    # The same weights in an fp32 run on the CPU: they load and score.
    fp32 = Trainer(compose_config(["backbone=aodnet", "backbone.preset=tiny", "train.precision=fp32", *SMALL]))
    fp32.backbone.load_state_dict(weights)
    assert fp32.cfg.train.precision == "fp32" and fp32.evaluate()["select_psnr"] > 0


def test_fp16_training_saves_and_restores_its_loss_scale(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=aodnet", "backbone.preset=tiny", "train.precision=fp16", "train.epochs=1",
                          "train.steps_per_epoch=2", f"run_dir={tmp_path}", *SMALL])
    train(cfg)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["optimizers"]["scaler"]["scale"] > 0
    resumed = Trainer(compose_config(["backbone=aodnet", "backbone.preset=tiny", "train.precision=fp16", *SMALL]))
    resumed.load_state_dict(state)
    assert resumed.nets.scaler.get_scale() == state["optimizers"]["scaler"]["scale"]


def test_a_run_saved_with_train_amp_resumes_in_the_precision_it_trained() -> None:
    from omegaconf import OmegaConf

    from pipeline.config import saved_config

    saved = OmegaConf.to_container(compose_config([]), resolve=True)
    del saved["train"]["precision"]
    for amp, precision in ((True, "bf16"), (False, "fp32")):
        saved["train"]["amp"] = amp
        assert saved_config(saved).train.precision == precision and "amp" not in saved_config(saved).train


def test_evaluate_and_dehaze_take_a_precision(model_dir: Path, make_dataset, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from pipeline.dehaze import main as dehaze_main
    from pipeline.evaluation.scoring import evaluate

    root = make_dataset(["1_1.png", "2_1.png"], ["1.png", "2.png"], size=(48, 40))
    rows = {p: evaluate(model_dir, "sots-indoor", root, precision=p, device="cpu") for p in ("fp32", "bf16")}
    label = [m for m in rows["fp32"]["method"].unique() if m not in ("hazy", "dcp")][0]
    psnr = {p: r.filter(r["method"] == label)["psnr"].to_numpy() for p, r in rows.items()}
    assert np.allclose(psnr["fp32"], psnr["bf16"], atol=0.5)  # bf16 rounds; the picture is the same
    assert dehaze_main([str(root / "hazy"), "--model", str(model_dir), "--out", str(tmp_path / "out"),
                        "--precision", "bf16", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "1_1.png").exists()
    with pytest.raises(SystemExit):
        dehaze_main([str(root / "hazy"), "--model", str(model_dir), "--out", str(tmp_path / "x"), "--precision", "half"])
    assert "--precision: invalid choice: 'half'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_train_compile_trains_and_checkpoints_plain_weight_names(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=aodnet", "backbone.preset=tiny", "mode=plain", "train.compile=true",
                          "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=2", "dataset.crop=16",
                          "dataset.select_images=1", f"run_dir={tmp_path}", "progress=false", "train.loader_workers=0"])
    metrics = train(cfg)
    assert np.isfinite(metrics["loss"])
    names = set(load_checkpoint(tmp_path / "checkpoint.pt")["models"]["backbone"])
    assert names == set(create_backbone("aodnet", "tiny").state_dict())  # no _orig_mod. prefix
