"""Original repositories' checkpoints in, fine-tuned models out: import, fidelity, --init, cards of any provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import REALDATA
from pipeline import evaluate, train
from pipeline.backbones import backbone_kwargs, create_backbone, original_format, to_original
from pipeline.bild.step import per_crop_l1
from pipeline.config import compose_config
from pipeline.models import load_model
from pipeline.models.__main__ import main as models_main
from pipeline.models.importing import expected_tensors, import_original
from pipeline.models.store import file_sha256
from pipeline.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PUBLISHED_AODNET = REALDATA.parent / "published" / "aodnet" / "dehazer.pth"
needs_published = pytest.mark.skipif(not PUBLISHED_AODNET.is_file(), reason="../shared/published/aodnet absent")


def _input(size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _original_file(tmp_path: Path, backbone: str, preset: str, wrap=lambda sd: sd, seed: int = 0
                   ) -> tuple[Path, torch.nn.Module]:
    """An original-format checkpoint written from a project network with random weights, and that network."""
    fmt = original_format(backbone)
    torch.manual_seed(seed)
    model = create_backbone(backbone, preset, **fmt.kwargs).eval()
    with torch.no_grad():  # every parameter off its initial value, so a slice taken wrong shows
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = to_original(fmt, model.state_dict(), backbone_kwargs(backbone, preset, **fmt.kwargs))
    file = tmp_path / f"{backbone}-original.pth"
    torch.save(wrap(state), file)
    return file, model


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# --- the published AOD-Net ------------------------------------------------------------------------


def _original_aodnet(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The PyTorch port's AOD-Net forward, written out by hand from its e_conv1..5."""
    def conv(i: int, h: torch.Tensor) -> torch.Tensor:
        w = state[f"e_conv{i}.weight"]
        return F.relu(F.conv2d(h, w, state[f"e_conv{i}.bias"], padding=w.shape[-1] // 2))

    x1 = conv(1, x)
    x2 = conv(2, x1)
    x3 = conv(3, torch.cat((x1, x2), 1))
    x4 = conv(4, torch.cat((x2, x3), 1))
    k = conv(5, torch.cat((x1, x2, x3, x4), 1))
    return F.relu(k * x - k + 1)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PUBLISHED_AODNET.is_file():
        pytest.skip("../shared/published/aodnet absent")
    out = tmp_path_factory.mktemp("models") / "published-aodnet"
    assert models_main(["import", "--backbone", "aodnet", str(PUBLISHED_AODNET), "--out", str(out)]) == 0
    return out


@needs_published
def test_published_aodnet_imports_and_computes_the_original_forward(published: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    card = json.loads((published / "card.json").read_text())
    assert card["provenance"] == "imported" and card["preset"] == "paper"
    assert card["imported"]["sha256"] == file_sha256(PUBLISHED_AODNET)
    assert "TheFairBear/PyTorch-Image-Dehazing" in card["imported"]["repository"] and card["imported"]["commit"]
    model, meta = load_model(published)
    x = _input(48)
    reference = _original_aodnet(torch.load(PUBLISHED_AODNET, map_location="cpu", weights_only=True), x)
    with torch.no_grad():
        assert (model(x) - reference).abs().max() < 1e-6


@needs_published
@pytest.mark.skipif(not (REALDATA / "sots_indoor").is_dir(), reason="../shared/realdata/sots_indoor absent")
def test_published_aodnet_scores_its_published_psnr_on_sots_indoor(published: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    argv = ["--model", str(published), "--dataset", "auto", "--data-root", str(REALDATA / "sots_indoor"),
            "--max-images", "5", "--device", "cpu", "--out", str(tmp_path / "rows.parquet")]
    assert evaluate.main(argv) == 0
    assert "aodnet@published-aodnet" in capsys.readouterr().out  # a card without source or version
    rows = pl.read_parquet(tmp_path / "rows.parquet").filter(pl.col("method") == "aodnet@published-aodnet")
    assert rows.height == 5 and rows["scene"].n_unique() == 5
    assert 17.5 < rows["psnr"].mean() < 21  # published: 19.06 dB on the full 500-image set; 18.83 on our 250


# --- round trips through the other originals' formats ---------------------------------------------


@pytest.mark.parametrize(("backbone", "preset", "wrap"), [
    ("dehazenet", "paper", lambda sd: sd),
    # zhilin007/FFA-Net saves {'model': DataParallel state dict} (plus its training state)
    ("ffanet", "small", lambda sd: {"step": 5, "model": {f"module.{k}": v for k, v in sd.items()}}),
    ("griddehazenet", "paper", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
    ("msbdn", "small", lambda sd: sd),
])
def test_round_trip_through_the_original_format(backbone: str, preset: str, wrap, tmp_path: Path) -> None:
    file, model = _original_file(tmp_path, backbone, preset, wrap)
    card = import_original(backbone, file, tmp_path / "imported", preset=preset)
    assert card["label"] == f"{backbone}@imported" and card["imported"]["sha256"] == file_sha256(file)
    imported, _ = load_model(tmp_path / "imported")
    x = _input(32)
    with torch.no_grad():
        assert (imported(x) - model(x)).abs().max() < 1e-6


def _original_ffa(sd: dict[str, torch.Tensor], hazy: torch.Tensor, groups: int, blocks: int) -> torch.Tensor:
    """zhilin007/FFA-Net's forward written out by hand from its state dict, its data loader's normalisation first."""
    x = (hazy - torch.tensor([0.64, 0.6, 0.58]).view(1, 3, 1, 1)) / torch.tensor([0.14, 0.15, 0.152]).view(1, 3, 1, 1)

    def conv(name: str, h: torch.Tensor) -> torch.Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(h, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)

    def attention(a: str, b: str, h: torch.Tensor, pooled: bool) -> torch.Tensor:
        return torch.sigmoid(conv(b, F.relu(conv(a, h.mean((2, 3), keepdim=True) if pooled else h))))

    def block(p: str, h: torch.Tensor) -> torch.Tensor:
        r = conv(f"{p}.conv2", F.relu(conv(f"{p}.conv1", h)) + h)
        r = r * attention(f"{p}.calayer.ca.0", f"{p}.calayer.ca.2", r, pooled=True)
        return r * attention(f"{p}.palayer.pa.0", f"{p}.palayer.pa.2", r, pooled=False) + h

    h, outs = conv("pre.0", x), []
    for g in range(1, groups + 1):
        r = h
        for k in range(blocks):
            r = block(f"g{g}.gp.{k}", r)
        h = conv(f"g{g}.gp.{blocks}", r) + h
        outs.append(h)
    w = attention("ca.1", "ca.3", torch.cat(outs, 1), pooled=True).view(-1, groups, h.shape[1], 1, 1)
    out = sum(w[:, i] * outs[i] for i in range(groups))
    out = out * attention("palayer.pa.0", "palayer.pa.2", out, pooled=False)
    return conv("post.1", conv("post.0", out)) + x


def test_imported_ffanet_computes_the_original_forward(tmp_path: Path) -> None:
    file, _ = _original_file(tmp_path, "ffanet", "small")
    import_original("ffanet", file, tmp_path / "ffa", preset="small")
    model, _ = load_model(tmp_path / "ffa")
    x = _input(24)
    with torch.no_grad():
        reference = _original_ffa(torch.load(file, weights_only=True), x, groups=1, blocks=3)
        assert (model(x) - reference).abs().max() < 1e-5


def _original_grid(sd: dict[str, torch.Tensor], x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """proteus1991/GridDehazeNet's forward written out by hand from its state dict, its shared coefficient
    sliced to channel_num = 2**(i-1) * stride * depth_rate as the original does (sides multiples of 4)."""
    def conv(name: str, h: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(h, w, sd[f"{name}.bias"], stride=stride, padding=w.shape[-1] // 2)

    def rdb(name: str, h: torch.Tensor) -> torch.Tensor:
        out, i = h, 0
        while f"{name}.residual_dense_layers.{i}.conv.weight" in sd:
            out = torch.cat((out, F.relu(conv(f"{name}.residual_dense_layers.{i}.conv", out))), 1)
            i += 1
        return conv(f"{name}.conv_1x1", out) + h

    def down(r: int, c: int, h: torch.Tensor) -> torch.Tensor:
        return F.relu(conv(f"downsample_module.{r}_{c}.conv2", F.relu(conv(f"downsample_module.{r}_{c}.conv1", h, 2))))

    def up(r: int, c: int, h: torch.Tensor) -> torch.Tensor:
        p = f"upsample_module.{r}_{c}"
        h = F.conv_transpose2d(h, sd[f"{p}.deconv.weight"], sd[f"{p}.deconv.bias"], stride=2, padding=1,
                               output_padding=1)
        return F.relu(conv(f"{p}.conv", F.relu(h)))

    depth, coef, half = sd["conv_in.weight"].shape[0], sd["coefficient"], width // 2

    def fuse(i: int, j: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = int(2 ** (i - 1) * 2 * depth)
        return coef[i, j, 0, :n][None, :, None, None] * a + coef[i, j, 1, :n][None, :, None, None] * b

    g = {(0, 0): rdb("rdb_in", conv("conv_in", x))}
    for j in range(1, half):
        g[0, j] = rdb(f"rdb_module.0_{j - 1}", g[0, j - 1])
    for i in range(1, height):
        g[i, 0] = down(i - 1, 0, g[i - 1, 0])
    for i in range(1, height):
        for j in range(1, half):
            g[i, j] = fuse(i, j, rdb(f"rdb_module.{i}_{j - 1}", g[i, j - 1]), down(i - 1, j, g[i - 1, j]))
    bottom = height - 1
    for j in range(half, width):
        g[bottom, j] = rdb(f"rdb_module.{bottom}_{j - 1}", g[bottom, j - 1])
    for j in range(half, width):  # column half first for every row, then the columns after it, as the original
        for i in range(height - 2, -1, -1):
            g[i, j] = fuse(i, j, rdb(f"rdb_module.{i}_{j - 1}", g[i, j - 1]), up(i, j, g[i + 1, j]))
    return F.relu(conv("conv_out", rdb("rdb_out", g[0, width - 1])))


def test_imported_griddehazenet_computes_the_original_forward(tmp_path: Path) -> None:
    file, _ = _original_file(tmp_path, "griddehazenet", "small")
    import_original("griddehazenet", file, tmp_path / "grid", preset="small")
    model, _ = load_model(tmp_path / "grid")
    x = _input(32)
    with torch.no_grad():
        reference = _original_grid(torch.load(file, weights_only=True), x, height=3, width=4)
        assert (model(x) - reference).abs().max() < 1e-5


def _original_msbdn(sd: dict[str, torch.Tensor], x: torch.Tensor, blocks: int) -> torch.Tensor:
    """BookerDeWitt/MSBDN-DFF's Net forward (4 levels, DFF mode iter2) written out by hand from its state dict."""
    def layer(name: str, h: torch.Tensor, stride: int = 1) -> torch.Tensor:  # ConvLayer: reflection pad + conv
        w = sd[f"{name}.conv2d.weight"]
        return F.conv2d(F.pad(h, (w.shape[-1] // 2,) * 4, mode="reflect"), w, sd[f"{name}.conv2d.bias"], stride)

    def residuals(names: list[str], h: torch.Tensor) -> torch.Tensor:
        for p in names:
            h = layer(f"{p}.conv2", F.prelu(layer(f"{p}.conv1", h), sd[f"{p}.relu.weight"])) * 0.1 + h
        return h

    def resample(p: str, h: torch.Tensor, up: bool) -> torch.Tensor:  # DeconvBlock / ConvBlock, 4x4 stride 2
        op, kind = (F.conv_transpose2d, "deconv") if up else (F.conv2d, "conv")
        return F.prelu(op(h, sd[f"{p}.{kind}.weight"], sd[f"{p}.{kind}.bias"], stride=2, padding=1),
                       sd[f"{p}.act.weight"])

    def dff(p: str, h: torch.Tensor, memory: list[torch.Tensor], encoder: bool) -> torch.Tensor:
        first, back = ("up_convs", "down_convs") if encoder else ("down_convs", "up_convs")
        steps = sum(k.startswith(f"{p}.{first}.") and k.endswith(".act.weight") for k in sd)
        fused = h
        for i, feat in enumerate(memory):
            t = fused
            for j in range(steps - i):
                t = resample(f"{p}.{first}.{j}", t, up=encoder)
            t = t - feat
            for j in range(steps - i):
                t = resample(f"{p}.{back}.{steps - i - j - 1}", t, up=not encoder)
            fused = fused + t
        return fused

    stack = lambda name: [f"{name}.{k}" for k in range(blocks)]  # noqa: E731
    feat = layer("conv_input", x)
    memory, skips = [feat], []
    for n, scale in enumerate((2, 4, 8, 16)):
        skip = residuals(stack(f"dense{n}"), feat) + feat
        skips.append(skip)
        feat = dff(f"fusion{n + 1}", layer(f"conv{scale}x", skip, 2), memory, encoder=True)
        memory.append(feat)
    bottleneck = [k[:-len(".relu.weight")] for k in sd if k.startswith("dehaze.") and k.endswith(".relu.weight")]
    feat = residuals(bottleneck, 2 * feat) + 2 * feat - feat
    memory = [feat]
    for n, scale in zip((3, 2, 1, 0), (16, 8, 4, 2)):
        upsampled = F.conv_transpose2d(feat, sd[f"convd{scale}x.conv2d.weight"], sd[f"convd{scale}x.conv2d.bias"], stride=2)
        upsampled = F.interpolate(upsampled, size=skips[n].shape[2:], mode="bilinear")
        strengthened = upsampled + skips[n]
        feat = residuals(stack(f"dense_{n + 1}"), strengthened) + strengthened - upsampled
        feat = dff(f"fusion_{n + 1}", feat, memory, encoder=False)
        memory.append(feat)
    return layer("conv_output", feat)


def test_imported_msbdn_computes_the_original_forward(tmp_path: Path) -> None:
    file, _ = _original_file(tmp_path, "msbdn", "small")
    import_original("msbdn", file, tmp_path / "msbdn", preset="small")
    model, _ = load_model(tmp_path / "msbdn")
    x = _input(32)
    with torch.no_grad():
        reference = _original_msbdn(torch.load(file, weights_only=True), x, blocks=2)
        assert (model(x) - reference).abs().max() < 1e-5


def _original_count(backbone: str) -> int:
    fmt = original_format(backbone)
    _, shapes = expected_tensors(fmt, backbone, backbone_kwargs(backbone, "paper", **fmt.kwargs))
    return sum(math.prod(shape) for shape in shapes.values())


@pytest.mark.parametrize(("backbone", "original"), [
    ("aodnet", 1_761), ("dehazenet", 8_305), ("ffanet", 4_455_913), ("griddehazenet", 958_051),
    ("msbdn", 31_353_061),
])
def test_paper_networks_have_the_originals_parameter_counts(backbone: str, original: int) -> None:
    assert _original_count(backbone) == original  # GridDehazeNet: 958,051 with its shared coefficient tensor


def test_griddehazenet_takes_each_nodes_slice_of_the_shared_attention(tmp_path: Path) -> None:
    file, model = _original_file(tmp_path, "griddehazenet", "tiny")
    coefficient = torch.load(file, weights_only=True)["coefficient"]
    assert coefficient.shape == (3, 2, 2, 16)
    import_original("griddehazenet", file, tmp_path / "g", preset="tiny")
    imported, _ = load_model(tmp_path / "g")
    # tiny: width 2, so the up half's nodes (0, 1) and (1, 1) fuse, with 4 and 8 channels
    assert torch.equal(imported.fusion["1_1"].weight, coefficient[1, 1, :, :8])
    assert torch.equal(imported.fusion["0_1"].weight, coefficient[0, 1, :, :4])


# --- refused imports -------------------------------------------------------------------------------


class Evil:
    def __reduce__(self) -> tuple:
        return print, ("ran code from a checkpoint",)


@pytest.mark.parametrize(("change", "message"), [
    (lambda sd: {**sd, "extra.weight": torch.zeros(1)}, "has tensor 'extra.weight'"),
    (lambda sd: {k: v for k, v in sd.items() if k != "e_conv3.bias"}, "lacks tensor 'e_conv3.bias'"),
    (lambda sd: {**sd, "e_conv2.weight": torch.zeros(3, 3, 5, 5)}, "tensor 'e_conv2.weight' has shape [3, 3, 5, 5]"),
    (lambda sd: [sd], "holds a list, not a state dict"),
    (lambda sd: {**sd, "x": Evil()}, "refused: unpickling it would need more"),
])
def test_refused_imports_give_one_line(change, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file, _ = _original_file(tmp_path, "aodnet", "paper", change)
    assert models_main(["import", "--backbone", "aodnet", str(file), "--out", str(tmp_path / "m")]) == 2
    assert message in _one_error_line(capsys) and not (tmp_path / "m").exists()


def test_import_of_the_wrong_backbone_names_the_first_missing_tensor(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    file, _ = _original_file(tmp_path, "aodnet", "paper")
    assert models_main(["import", "--backbone", "ffanet", str(file)]) == 2
    assert "lacks tensor 'pre.0.weight'" in _one_error_line(capsys)


# --- --init ------------------------------------------------------------------------------------------


@pytest.fixture
def imported_aodnet(tmp_path: Path) -> Path:
    file, _ = _original_file(tmp_path, "aodnet", "paper", seed=3)
    return Path(import_original("aodnet", file, tmp_path / "aodnet-imported")["path"])


@pytest.mark.parametrize("mode", ["plain", "bild"])
def test_init_first_step_loss_is_the_init_models_loss(imported_aodnet: Path, mode: str) -> None:
    cfg = compose_config(["backbone=aodnet", "backbone.preset=paper", f"mode={mode}", "dataset.crop=32",
                          "train.steps_per_epoch=1", "train.loader_workers=0", "progress=false", "device=cpu",
                          f"train.init={imported_aodnet}"])
    trainer = Trainer(cfg)
    first = []
    trainer.train_epoch(on_step=lambda batch, stats: first.append((batch.hazy, batch.clear, stats.crop_loss)))
    hazy, clear, loss = first[0]
    model, _ = load_model(imported_aodnet)
    with torch.no_grad():
        assert abs(per_crop_l1(model(hazy), clear).mean().item() - loss) < 1e-6
    assert trainer.cfg.train.init_sha256 == file_sha256(imported_aodnet / "model.safetensors")


def test_train_init_records_the_model_and_refuses_another_preset(imported_aodnet: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    common = ["--backbone", "aodnet", "--init", str(imported_aodnet), "--epochs", "1", "--steps", "1", "--crop", "32",
              "--device", "cpu", "train.loader_workers=0", "progress=false", "dataset.select_images=2"]
    assert train.main([*common, "--preset", "paper", "--run-dir", str(tmp_path / "run")]) == 0
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")  # the run's config records the model and its sha256
    assert saved.train.init == str(imported_aodnet)
    assert saved.train.init_sha256 == file_sha256(imported_aodnet / "model.safetensors")
    capsys.readouterr()
    assert train.main([*common, "--preset", "tiny", "--run-dir", str(tmp_path / "other")]) == 2
    assert "is a aodnet paper model; expected a aodnet tiny model" in _one_error_line(capsys)


def test_search_trials_start_from_init_and_the_card_records_it(imported_aodnet: Path, tmp_path: Path) -> None:
    import ray

    from pipeline.checkpoints import load_checkpoint
    from pipeline.models.promotion import promote
    from pipeline.search import search

    try:
        summary = search(["--backbone", "aodnet", "--preset", "paper", "--init", str(imported_aodnet),
                          "--storage", str(tmp_path), "--name", "init", "--trials", "2", "--epochs", "1",
                          "train.steps_per_epoch=2", "dataset.crop=32", "dataset.select_images=2"])
    finally:
        ray.shutdown()
    sha256 = file_sha256(imported_aodnet / "model.safetensors")
    checkpoints = sorted(Path(summary["experiment_dir"]).rglob("checkpoint.pt"))
    assert len(checkpoints) >= 2
    for ckpt in checkpoints:
        assert load_checkpoint(ckpt)["config"]["train"]["init_sha256"] == sha256
    card = promote(summary["experiment_dir"], tmp_path / "models")
    assert card["config"]["train"]["init"] == str(imported_aodnet) and card["config"]["train"]["init_sha256"] == sha256


def test_bild_vs_plain_fine_tunes_from_init_and_scores_it(imported_aodnet: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "bench"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bild_vs_plain.py"
    subprocess.run([sys.executable, str(script), "--dataset", "builtin", "--preset", "paper", "--crop", "32",
                    "--steps", "4", "--epochs", "2", "--seeds", "0", "--levers", "bild", "--init", str(imported_aodnet),
                    "--out", str(out)], capture_output=True, text=True, check=True)
    images = pl.read_parquet(out.with_suffix(".parquet"))
    steps = dict(images.group_by("lever").agg(pl.col("steps").first()).iter_rows())
    assert steps == {"init": 0, "plain": 4, "bild": 4}  # the model as imported, then both fine-tunes at equal steps
    init = images.filter(pl.col("lever") == "init")
    assert init.height == images.filter(pl.col("lever") == "plain").height and init["psnr"].is_finite().all()
    assert f"fine-tuning {imported_aodnet}" in out.with_suffix(".md").read_text()


# --- cards of any provenance -------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "message"), [
    ("source", "somewhere", "source is missing or not a dict"),
    ("version", 3, "version is missing or not a str"),
    ("source", {"checkpoint": 7}, "source.checkpoint is missing or not a str"),
])
def test_malformed_card_fields_give_one_line(imported_aodnet: Path, make_dataset, field: str, value, message: str,
                                             capsys: pytest.CaptureFixture) -> None:
    card_file = imported_aodnet / "card.json"
    card = json.loads(card_file.read_text())
    card_file.write_text(json.dumps({**card, field: value}))
    root = make_dataset(["a_1.png"], ["a.png"])
    argv = ["--model", str(imported_aodnet), "--dataset", "auto", "--data-root", str(root), "--device", "cpu"]
    assert evaluate.main(argv) == 2
    line = _one_error_line(capsys)
    assert str(card_file) in line and message in line


def test_a_card_without_provenance_is_labelled_by_its_folder(imported_aodnet: Path, make_dataset,
                                                             capsys: pytest.CaptureFixture) -> None:
    card_file = imported_aodnet / "card.json"
    card = json.loads(card_file.read_text())
    bare = {k: card[k] for k in ("format", "backbone", "preset", "kwargs", "weights")}  # no source, no version
    card_file.write_text(json.dumps(bare))
    root = make_dataset(["a_1.png"], ["a.png"])
    assert evaluate.main(["--model", str(imported_aodnet), "--dataset", "auto", "--data-root", str(root),
                          "--device", "cpu"]) == 0
    assert "aodnet@aodnet-imported" in capsys.readouterr().out
