"""pipeline.promote and pipeline.models: pick the best trial by selection, re-evaluate, version, load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from safetensors import safe_open

from pipeline.checkpoints import load_checkpoint
from pipeline.models import CARD_FORMAT, MODEL_FORMAT, load_model
from pipeline.models.promotion import NoFinishedTrialError, best_trial, promote, rebuild_data, refit_checkpoint
from pipeline.models.store import LEGACY_MODEL_FORMAT, file_sha256
from pipeline.promote import main
from pipeline.results import read_table, write_trial_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def promoted_twice(search_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    for _ in range(2):
        assert main([str(search_run), "--models", str(models), "--device", "cpu"]) == 0
    return models


def test_best_trial_is_the_selection_maximum(search_run: Path) -> None:
    trials = read_table([search_run], "trials").filter(pl.col("status").is_in(["TERMINATED", "STOPPED"]))
    expected = trials.sort("best_select_psnr", descending=True).row(0, named=True)
    chosen = best_trial(search_run)
    assert chosen["trial_id"] == expected["trial_id"]
    assert chosen["best_select_psnr"] == trials["best_select_psnr"].max()
    by_ssim = trials.sort("best_select_ssim", descending=True)["trial_id"][0]
    assert best_trial(search_run, "select_ssim")["trial_id"] == by_ssim


def test_versions_latest_and_index(promoted_twice: Path) -> None:
    backbone_dir = promoted_twice / "aodnet"
    assert sorted(p.name for p in backbone_dir.iterdir()) == ["LATEST", "v1", "v2"]
    assert (backbone_dir / "LATEST").read_text().strip() == "v2"
    index = pl.read_parquet(promoted_twice / "index.parquet")
    assert index.height == 2 and index["version"].to_list() == ["v1", "v2"]
    assert index["test_psnr"].is_not_null().all() and index["data_fingerprint"].n_unique() == 1


def test_card_records_source_metrics_and_provenance(search_run: Path, promoted_twice: Path) -> None:
    card = json.loads((promoted_twice / "aodnet" / "v2" / "card.json").read_text())
    chosen = best_trial(search_run)
    assert card["backbone"] == "aodnet" and card["preset"] == "tiny" and card["version"] == "v2"
    assert card["source"]["trial_id"] == chosen["trial_id"] and card["source"]["experiment"] == "exp1"
    assert Path(card["source"]["checkpoint"]) == Path(chosen["best_checkpoint_path"])
    assert card["config"]["mode"] == chosen["mode"] and card["hyperparameters"]["inner_lr"] == chosen["inner_lr"]
    selection = card["selection"]
    assert selection["metric"] == "select_psnr" and selection["matches"]
    assert selection["measured"]["psnr"] == pytest.approx(chosen["best_select_psnr"], abs=1e-4)
    assert selection["recorded"]["psnr"] == chosen["best_select_psnr"]
    assert card["test"]["images"] > 0 and 0 < card["test"]["psnr"] < 60 and 0 < card["test"]["ssim"] <= 1
    assert len(card["data"]["fingerprint"]) == 64 and card["data"]["name"] == "builtin"
    assert card["code"]["version"] and "git_commit" in card["code"] and card["promoted_at"]


def test_model_file_is_the_backbone_alone_in_safetensors(promoted_twice: Path) -> None:
    folder = promoted_twice / "aodnet" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors"]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": MODEL_FORMAT}
        assert f.keys() and all(key.startswith("k_estimation.") for key in f.keys())
    card = json.loads((folder / "card.json").read_text())
    assert card["format"] == CARD_FORMAT and card["kwargs"] and card["weights"]["file"] == "model.safetensors"
    assert card["weights"]["sha256"] == file_sha256(folder / "model.safetensors")
    # Shared like any file the user writes (the umask decides), not owner-only.
    assert (folder / "model.safetensors").stat().st_mode == (folder / "card.json").stat().st_mode


def test_load_model_takes_every_form(search_run: Path, promoted_twice: Path, tmp_path: Path) -> None:
    ckpt = best_trial(search_run)["checkpoint"]
    state = load_checkpoint(ckpt)  # an older promoted model.pt: one torch.save of the backbone alone
    old = tmp_path / "model.pt"
    torch.save({"format": LEGACY_MODEL_FORMAT, "backbone": state["backbone"],
                "state_dict": state["models"]["backbone"]}, old)
    forms = [promoted_twice / "aodnet" / "v1", promoted_twice / "aodnet" / "v1" / "model.safetensors",
             promoted_twice / "aodnet", Path(ckpt), old]
    x = torch.rand(1, 3, 24, 24)
    outputs = []
    for form in forms:
        model, meta = load_model(form)
        assert meta["backbone"] == "aodnet" and not model.training
        outputs.append(model(x))
    assert all(torch.equal(outputs[0], out) for out in outputs[1:])
    assert load_model(promoted_twice / "aodnet")[1]["version"] == "v2"  # LATEST followed
    with pytest.raises(FileNotFoundError, match="neither"):
        load_model(promoted_twice)


def test_never_overwrites_a_version(search_run: Path, tmp_path: Path) -> None:
    (tmp_path / "aodnet" / "v4").mkdir(parents=True)  # e.g. a version someone else wrote by hand
    card = promote(search_run, tmp_path, device="cpu")
    assert card["version"] == "v5" and (tmp_path / "aodnet" / "LATEST").read_text().strip() == "v5"
    assert list((tmp_path / "aodnet" / "v4").iterdir()) == []


def test_refuses_a_run_without_finished_trials(failed_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NoFinishedTrialError, match="ERROR x2") as err:
        promote(failed_run, tmp_path, device="cpu")
    assert str(failed_run) in str(err.value)
    assert main([str(failed_run), "--models", str(tmp_path)]) == 2
    assert str(failed_run) in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_skips_a_trial_whose_checkpoint_is_gone(search_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "exp1"
    shutil.copytree(search_run / "results", run / "results")
    best = best_trial(search_run)
    row = read_table([search_run], "trials").filter(pl.col("trial_id") == best["trial_id"]).row(0, named=True)
    write_trial_row(run, {**row, "best_checkpoint_path": str(tmp_path / "deleted" / "checkpoint.pt")})
    runner_up = best_trial(run)
    assert runner_up["trial_id"] != best["trial_id"]
    assert runner_up["best_select_psnr"] <= best["best_select_psnr"]


def test_refit_trains_a_bild_trial_on_every_pool_scene(search_run: Path, tmp_path: Path) -> None:
    trials = read_table([search_run], "trials").filter(pl.col("trial_id") == "t2-bild")
    state = load_checkpoint(search_run / trials["best_checkpoint_path"][0])
    index, splits, _ = rebuild_data(state)
    record = refit_checkpoint(state, index, tmp_path / "refit" / "checkpoint.pt", "cpu")
    refit = load_checkpoint(record["checkpoint"])
    assert record["epochs"] == refit["epoch"] == state["epoch"] and record["mode"] == "bild" and record["val_rotation"]
    assert record["train_pool_pairs"] == len(splits.train_pool) and refit["config"]["train"]["val_rotation"]
    assert refit["data"]["splits"]["select"] == splits.select  # the selection set is the search's, untouched
    assert any(not torch.equal(a, refit["models"]["backbone"][k]) for k, a in state["models"]["backbone"].items())


def test_promote_refit_from_the_cli_records_it_on_the_card(search_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(search_run), "--models", str(tmp_path), "--device", "cpu", "--refit"]) == 0
    assert "refit:" in capsys.readouterr().out
    card = json.loads((tmp_path / "aodnet" / "v1" / "card.json").read_text())
    chosen = best_trial(search_run)
    refit = card["refit"]
    assert refit["mode"] == chosen["mode"] and refit["epochs"] == card["source"]["epoch"]
    assert Path(refit["checkpoint"]).is_relative_to(search_run / "refit" / chosen["trial_id"])
    assert card["selection"]["matches"]  # the check is of the trial the search chose
    model, _ = load_model(tmp_path / "aodnet" / "v1")
    refit_model, _ = load_model(refit["checkpoint"])
    x = torch.rand(1, 3, 24, 24)
    assert torch.equal(model(x), refit_model(x))  # the promoted model is the refit one
    assert pl.read_parquet(tmp_path / "index.parquet")["refit"].to_list() == [True]


def test_the_check_rescores_the_epochs_subset_and_the_card_the_whole_set(tmp_path: Path) -> None:
    # The search ranked trials on 5 of the 18 selection images; promotion must compare like with like.
    from helpers import TINY, run_trial

    from pipeline.config import compose_config
    from pipeline.models.promotion import promotion_summary
    from pipeline.trainer import load_index

    cfg = compose_config([*TINY, "mode=plain", "dataset.select_images=5"])
    run_trial(tmp_path / "subset", "s0", cfg, load_index(cfg))
    card = promote(tmp_path / "subset", tmp_path / "models", device="cpu")
    selection = card["selection"]
    assert selection["matches"] and selection["measured"]["images"] == 5 and selection["full"]["images"] == 18
    assert selection["measured"]["psnr"] == pytest.approx(selection["recorded"]["psnr"], abs=1e-6)
    assert selection["note"].startswith("measured: the 5 selection images the search scored each epoch")
    index = pl.read_parquet(tmp_path / "models" / "index.parquet")
    assert index["select_psnr"][0] == selection["full"]["psnr"]  # the card's number is the whole set's
    summary = promotion_summary(card)
    assert "as scored each epoch (5 images)" in summary and "whole set (18 images)" in summary
