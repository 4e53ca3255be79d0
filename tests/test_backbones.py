"""Backbone registry and network contract, parametrised over the registry.

Every registered network must map (B, 3, H, W) -> (B, 3, H, W) for any H, W >= 16 (odd
sizes included), give every parameter a finite gradient, train, and support forward-mode
AD through `torch.func.functional_call` (the BILD step relies on `torch.func.jvp`).
Forward/gradient tests use the `tiny` preset; `paper` is built only to count parameters
and for one 16x16 smoke forward.
"""

from __future__ import annotations

from collections.abc import Iterator
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, jvp

from pipeline.backbones import (
    UnknownBackboneError,
    backbone_info,
    backbone_kwargs,
    build_from_kwargs,
    count_params,
    create_backbone,
    list_backbones,
    list_presets,
    register_backbone,
)
from pipeline.backbones.dehazenet import estimate_atmospheric_light

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = list_backbones()
CHEAP_PRESETS = [(n, p) for n in NAMES for p in list_presets(n) if p in ("tiny", "small")]

# Published sizes (docs/design.md, "Backbones"); aodnet must match exactly.
PAPER_PARAMS = {
    "ffanet": 4_460_000,
    "msbdn": 31_350_000,
    "griddehazenet": 960_000,
    "aodnet": 1_761,
    "dehazenet": 8_300,
}


def _hazy_batch(
    batch: int, height: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random clear image and its hazy version, I = J t + A (1 - t)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 4 + 1, width // 4 + 1, generator=gen)
    clear = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    t = 0.4 + 0.4 * torch.rand(batch, 1, 1, 1, generator=gen)
    hazy = clear * t + 0.9 * (1 - t)
    return hazy, clear


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine
    OpenMP spin-waiting makes contended runs tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, "tiny").to(dtype)


# ---------------------------------------------------------------- registry


def test_registry_has_the_five_backbones_with_presets() -> None:
    assert set(NAMES) == {"aodnet", "dehazenet", "ffanet", "griddehazenet", "msbdn"}
    for name in NAMES:
        assert {"paper", "small", "tiny"} <= set(list_presets(name))
        info = backbone_info(name)
        assert info["name"] == name and info["default_crop"] >= 16
        assert info["source"].startswith("https://") and info["paper"]


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        create_backbone("nonet")
    assert isinstance(err.value, ValueError)
    assert "nonet" in str(err.value)
    assert all(name in str(err.value) for name in NAMES)


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        create_backbone("ffanet", "huge")
    assert "huge" in str(err.value)
    assert all(p in str(err.value) for p in list_presets("ffanet"))
    with pytest.raises(UnknownBackboneError):
        list_presets("nonet")


def test_overrides_none_dropped_and_bad_kwargs_rejected() -> None:
    tiny = backbone_kwargs("ffanet", "tiny")
    assert tiny["dim"] == backbone_info("ffanet")["presets"]["tiny"]["dim"]
    assert "kernel_size" in tiny  # defaults are spelled out for checkpoints
    assert backbone_kwargs("ffanet", "tiny", dim=None) == tiny
    assert backbone_kwargs("ffanet", "tiny", dim=4)["dim"] == 4
    with pytest.raises(TypeError):
        backbone_kwargs("ffanet", "tiny", no_such_arg=1)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(
            "ffanet", presets={"tiny": {}}, default_crop=16, source="", paper=""
        )(nn.Identity)
    assert backbone_info("ffanet")["source"].endswith("FFA-Net")  # the original entry stands


@pytest.mark.parametrize("name", NAMES)
def test_kwargs_rebuild_through_json(name: str) -> None:
    kwargs = json.loads(json.dumps(backbone_kwargs(name, "tiny")))
    original, rebuilt = create_backbone(name, "tiny"), build_from_kwargs(name, kwargs)
    shapes = {k: v.shape for k, v in original.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", NAMES)
def test_paper_parameter_count(name: str) -> None:
    with torch.device("meta"):  # counting needs shapes only
        params = count_params(create_backbone(name, "paper"))
    if name == "aodnet":
        assert params == 1_761
    else:
        assert params == pytest.approx(PAPER_PARAMS[name], rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_presets_shrink(name: str) -> None:
    with torch.device("meta"):
        counts = {p: count_params(create_backbone(name, p)) for p in ("paper", "small", "tiny")}
    assert counts["tiny"] < counts["small"] <= counts["paper"]
    assert counts["tiny"] <= 50_000


@pytest.mark.parametrize("name", NAMES)
def test_no_buffers(name: str) -> None:
    # functional_call / jvp over parameters assume the network has no other state.
    assert list(create_backbone(name, "tiny").buffers()) == []


# ---------------------------------------------------------------- forward contract


@pytest.mark.parametrize("size", [(17, 23), (33, 40)])
@pytest.mark.parametrize(("name", "preset"), CHEAP_PRESETS)
def test_output_shape_and_finite(name: str, preset: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, preset).eval()
    hazy, _ = _hazy_batch(2, *size)
    with torch.no_grad():
        out = model(hazy)
    assert out.shape == hazy.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_paper_preset_runs(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, "paper").eval()
    hazy, _ = _hazy_batch(1, 16, 16)
    with torch.no_grad():
        out = model(hazy)
    assert out.shape == hazy.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------- training contract


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    model = _tiny(name)
    hazy, clear = _hazy_batch(2, 24, 20)
    (model(hazy) - clear).abs().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_adam_reduces_l1_on_a_fixed_batch(name: str) -> None:
    model = _tiny(name)
    hazy, clear = _hazy_batch(4, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = (model(hazy) - clear).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = (model(hazy) - clear).abs().mean().item()
    assert final < losses[0], losses


# Loading torch's forward-AD decompositions calls the deprecated torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", NAMES)
def test_jvp_through_functional_call_matches_finite_difference(name: str) -> None:
    model = _tiny(name, torch.float64)
    hazy, _ = _hazy_batch(1, 16, 16)
    hazy = hazy.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (hazy,))

    out, out_dot = jvp(f, (params,), (tangent,))
    eps = 1e-6
    with torch.no_grad():
        plus = f({k: v + eps * tangent[k] for k, v in params.items()})
        minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    fd = (plus - minus) / (2 * eps)
    assert out.shape == hazy.shape
    torch.testing.assert_close(out_dot, fd, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- network details


def test_aodnet_clean_image_formula() -> None:
    model = create_backbone("aodnet", "paper")
    hazy, _ = _hazy_batch(1, 16, 16)
    k = model.k_estimation(hazy)
    torch.testing.assert_close(model(hazy), torch.relu(k * hazy - k + 1))


def test_dehazenet_atmospheric_light_from_brightest_dark_channel() -> None:
    image = torch.full((1, 3, 40, 40), 0.1)
    image[:, :, :12, :12] = torch.tensor([0.9, 0.8, 0.7]).view(1, 3, 1, 1)
    image[:, 0, 30, 30] = 1.0  # a bright red pixel: high in one channel, low dark channel
    a = estimate_atmospheric_light(image, patch=3)
    torch.testing.assert_close(a.flatten(), torch.tensor([0.9, 0.8, 0.7]))


# ---------------------------------------------------------------- CLI


def test_cli_json_lists_every_preset() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.backbones", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    rows = json.loads(result.stdout)
    listed = {(r["name"], r["preset"]): r for r in rows}
    assert set(listed) == {(n, p) for n in NAMES for p in list_presets(n)}
    assert listed["aodnet", "paper"]["params"] == 1_761
    assert all(isinstance(r["params"], int) and r["default_crop"] > 0 and r["source"] for r in rows)
