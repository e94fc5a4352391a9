"""`mvos soup`: the uniform soup is the exact average; the greedy soup keeps an ingredient only when the
soup's validation J&F does not drop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mvos.runtime.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.model import build_model
from mvos.training.cli import soup_command
from mvos.training.soup import greedy_soup, read_ingredients
from mvos.training.synth import generate


def _checkpoint(path: Path, seed: int, variant: str = "mobilenetv2-noaspp", bias: float | None = None) -> Path:
    torch.manual_seed(seed)
    model = build_model(variant)
    if bias is not None:
        model.decoder.pred.bias.data.fill_(bias)
    # BatchNorm statistics differ between real ingredients too; make them differ here
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.num_batches_tracked.fill_(seed + 1)
    save_checkpoint(path, model)
    return path


def test_uniform_soup_of_two_checkpoints_is_their_average(tmp_path):
    a, b = _checkpoint(tmp_path / "a.pth", 0), _checkpoint(tmp_path / "b.pth", 1)
    out = tmp_path / "soup.pth"
    result = CliRunner().invoke(soup_command, [str(a), str(b), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "uniform soup of 2 of 2 checkpoints" in result.output

    soup = load_checkpoint(out).state_dict()
    sa, sb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    floats = [k for k in sa if sa[k].is_floating_point()]
    assert any(not torch.equal(sa[k], sb[k]) for k in floats)
    for key in floats:
        torch.testing.assert_close(soup[key], (sa[key] + sb[key]) / 2, rtol=0, atol=1e-7)
    counters = [k for k in sa if k.endswith("num_batches_tracked")]
    assert counters and all(soup[k] == sa[k] for k in counters)
    assert read_checkpoint(out)["soup"] == {"method": "uniform", "kept": [str(a), str(b)]}


def test_ingredients_of_different_architectures_are_refused(tmp_path):
    a = _checkpoint(tmp_path / "a.pth", 0)
    b = _checkpoint(tmp_path / "b.pth", 0, variant="mobilenetv2")
    with pytest.raises(MvosError, match="different architecture"):
        read_ingredients([a, b])


def test_greedy_soup_keeps_an_ingredient_only_if_the_score_does_not_drop(tmp_path):
    # The score peaks when the prediction bias is 0.5: alone, c (0.7) is best; adding a (1.0) makes the
    # soup 0.85 (worse, dropped); adding b (0.0) makes it 0.35 (better, kept).
    paths = [_checkpoint(tmp_path / f"{n}.pth", i, bias=v) for i, (n, v) in enumerate([("a", 1.0), ("b", 0.0),
                                                                                      ("c", 0.7)])]
    calls = []

    def score(model) -> float:
        bias = model.decoder.pred.bias.item()
        calls.append(round(bias, 4))
        return -(bias - 0.5) ** 2

    soup, record = greedy_soup(read_ingredients(paths), score, ["a", "b", "c"])
    assert calls == [1.0, 0.0, 0.7, 0.85, 0.35]
    assert record["order"] == ["c", "a", "b"]  # a and b tie at -0.25; ties keep the given order
    assert record["kept"] == ["c", "b"]
    assert record["soup_score"] == pytest.approx(-(0.35 - 0.5) ** 2)
    assert soup.decoder.pred.bias.item() == pytest.approx(0.35)
    # the other weights are the average of c and b too
    sb, sc = read_checkpoint(paths[1])["model"], read_checkpoint(paths[2])["model"]
    torch.testing.assert_close(soup.decoder.pred.weight, (sb["decoder.pred.weight"] + sc["decoder.pred.weight"]) / 2)


def test_greedy_soup_command_scores_on_a_validation_set(tmp_path):
    root = tmp_path / "synth"
    generate(root, sequences=2, frames=5, size=(48, 64), objects=(1, 1), seed=0, val_fraction=0.5, progress=False)
    a, b = _checkpoint(tmp_path / "a.pth", 0), _checkpoint(tmp_path / "b.pth", 1)
    out = tmp_path / "greedy.pth"
    runner = CliRunner()
    refused = runner.invoke(soup_command, [str(a), str(b), "--out", str(out), "--greedy"])
    assert refused.exit_code != 0 and "--val-root" in str(refused.exception)
    result = runner.invoke(soup_command, [str(a), str(b), "--out", str(out), "--greedy", "--val-root", str(root),
                                          "--sequences", "synth0001", "--size", "48"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = read_checkpoint(out)["soup"]
    assert record["method"] == "greedy" and set(record["scores"]) == {str(a), str(b)}
    assert all(0.0 <= s <= 1.0 for s in record["scores"].values())
    assert record["kept"][0] == record["order"][0] and record["soup_score"] >= max(record["scores"].values())
    assert "greedy soup of" in result.output
