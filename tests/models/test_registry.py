"""Registry behaviour, plus tests generated for every registered model.

Small models (< 5 M parameters) get a real forward / shape / safetensors round trip;
bigger ones are built on the meta device only (counts, output head shape).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from medpipe.cli import main
from medpipe.errors import InputError
from medpipe.models import count_parameters, create_model, is_model, list_models, model_info, model_task

SMALL = 5_000_000
ALL = list_models()
SEG = [n for n in ALL if model_task(n) != "recon"]  # image(s) in, one output per class/component; recon tests its own IO


def _small(name: str) -> bool:
    return model_info(name, in_channels=1, num_classes=2).params < SMALL


def _input_for(model: torch.nn.Module) -> torch.Tensor:
    """The smallest input the model's pools allow (2 voxels per axis at the bottleneck)."""
    div = getattr(model, "input_shape_must_be_divisible_by", [16] * 3)
    size = getattr(model, "input_size", None) or [2 * d for d in div]  # models built for one patch size
    return torch.randn(1, model.in_channels, *size)


def test_names_and_spellings():
    assert {"stunet_xs", "stunet_s", "stunet_b", "stunet_l", "stunet_h"} <= set(ALL)
    assert list_models("stunet-?") == ["stunet_b", "stunet_h", "stunet_l", "stunet_s"]
    assert is_model("STUNet-S") and not is_model("stunet_xxl")
    with pytest.raises(InputError, match="unknown model 'unet9'; known models: .*stunet_b"):
        create_model("unet9")


@pytest.mark.parametrize("name", SEG)
def test_every_model_builds_on_meta_with_requested_io(name):
    info = model_info(name, in_channels=3, num_classes=7)
    assert info.name == name and info.dims in (2, 3) and info.params > 0
    with torch.device("meta"):
        net = create_model(name, in_channels=3, num_classes=7)
    assert count_parameters(net) == info.params
    first = next(p for p in net.parameters() if p.ndim >= 3)
    assert first.shape[1] == 3


@pytest.mark.parametrize("name", [n for n in SEG if _small(n)])
def test_small_model_forward_and_safetensors_round_trip(name, tmp_path):
    torch.manual_seed(0)
    net = create_model(name, in_channels=2, num_classes=4).eval()
    x = _input_for(net)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 4, *x.shape[2:]) and torch.isfinite(y).all()

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    twin = create_model(name, in_channels=2, num_classes=4)
    twin.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), y)


def test_cli_lists_models_as_json(capsys):
    assert main(["models", "--json", "--in-channels", "1", "--classes", "105"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(ALL)
    assert by_name["stunet_h"] == {"name": "stunet_h", "family": "stunet", "dims": 3, "params": 1457326221}
    assert round(by_name["stunet_s"]["params"] / 1e6, 2) == 14.60


def test_cli_table_and_bad_bundle(capsys, tmp_path):
    assert main(["models", "--filter", "stunet_s"]) == 0
    out = capsys.readouterr().out
    assert "stunet_s" in out and "stunet_b" not in out
    assert main(["models", "show", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
