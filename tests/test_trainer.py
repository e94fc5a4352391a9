"""`mvos train`: config files, the training rollout against the inference engine, a short distillation run on
`mvos synth` data, exact resume, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mvos.runtime.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, TorchBackend
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from mvos.training.config import TrainConfig, apply_overrides, load_config
from mvos.training.synth import generate
from mvos.runtime.memory import FixedQueueMemory
from mvos.runtime.settings import DEFAULT
from mvos.training.cli import train_command
from mvos.training.trainer import build_dataset, memory_frames, rollout, set_train_mode, train


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, sequences=4, frames=6, size=(64, 80), objects=(1, 2), seed=3, val_fraction=0.25, progress=False)
    return root


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    # A wider decoder than the student's (z: 48 vs 24 channels), so the representation embedding is exercised.
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    save_checkpoint(path, build_model("resnet18"))
    return path


def tiny_config(synth_root: Path, run_dir: Path, **top) -> dict:
    config = {
        "run_dir": str(run_dir), "seed": 1, "threads": 1, "batch_size": 2, "iterations": 10,
        "checkpoint_every": 4, "log_every": 2,
        "data": {"sources": [{"dataset": "davis2017", "root": str(synth_root), "split": "train"}],
                 "clip_frames": 3, "crop": 64, "max_objects": 2, "max_gap": 2},
        "val": {"dataset": "davis2017", "root": str(synth_root), "split": "val", "sequences": ["synth0003"],
                "size": 64, "every": 5},
        "student": {"variant": "mobilenetv2-noaspp"},
        "loss": {"top_p_hold_iters": 2, "top_p_warmup_iters": 4},
        "optim": {"lr": 1e-3},
    }
    for key, value in top.items():
        config[key] = value
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")), ids=str)
def test_every_config_in_the_repository_loads(path):
    """The configs the docs point users to stay valid as the schema changes."""
    config = load_config(path)
    assert config.iterations > 0 and config.stage in ("static", "main")


def test_yaml_and_toml_configs_agree_and_overrides_apply(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "stage: main\nbatch_size: 3\ndata:\n  sources:\n    - {root: /d, dataset: davis2016, exclude: [bear]}\n"
        "optim: {lr: 1e-5, lr_steps: [10]}\nloss: {w: 0.95}\n")
    (tmp_path / "a.toml").write_text(
        'stage = "main"\nbatch_size = 3\n[[data.sources]]\nroot = "/d"\ndataset = "davis2016"\nexclude = ["bear"]\n'
        "[optim]\nlr = 1e-5\nlr_steps = [10]\n[loss]\nw = 0.95\n")
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.toml")
    assert a == b
    assert a.optim.lr == 1e-5 and a.data.sources[0].exclude == ["bear"] and a.loss.w == 0.95
    assert a.optim.weight_decay == 1e-7 and a.optim.freeze_bn == "all"  # the paper's defaults
    c = load_config(tmp_path / "a.yaml", ["optim.lr=3e-4", "teacher.model=stcn", "loss.logit_weight=1",
                                          "data.sources=[{root: /e}]"])
    assert c.optim.lr == 3e-4 and c.teacher.model == "stcn" and c.data.sources[0].root == "/e"
    assert a.optim.lr == 1e-5  # overrides do not touch the file's dict


@pytest.mark.parametrize("data, message", [
    ({"optim": {"lrr": 1}}, "unknown key optim.lrr"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be float"),
    ({"batch_size": 2.5}, "batch_size must be int"),
    ({"data": {"sources": [{"root": "/d"}], "crop": 100}}, "multiple of 16"),
    ({"data": {"sources": []}}, "needs data.sources"),
    ({"loss": {"repr_weight": 1.0}}, "need a teacher"),
    ({"loss": {"w": 2}}, "loss.w must be in [0, 1]"),
])
def test_bad_configs_are_one_line_errors(data, message):
    full = apply_overrides({"data": {"sources": [{"root": "/d"}]}}, [])
    full.update(data)
    with pytest.raises(MvosError) as info:
        TrainConfig.from_dict(full)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_main_stage_mixes_in_static_pseudo_clips_at_the_asked_share(synth_root, tmp_path):
    config = tiny_config(synth_root, tmp_path / "run")
    config["data"]["images"] = [{"images": str(synth_root / "JPEGImages/480p"),
                                 "masks": str(synth_root / "Annotations/480p")}]
    config["data"]["images_share"] = 0.25
    dataset = build_dataset(TrainConfig.from_dict(config))
    rng = np.random.default_rng(0)
    names = [dataset.sample(rng)["info"]["name"] for _ in range(400)]
    static_share = sum(not name.startswith("synth") for name in names) / len(names)
    assert 0.19 < static_share < 0.31  # binomial sd 0.022 around 0.25
    del config["data"]["images_share"]  # images in stage main without a share: an error, not silently unused
    with pytest.raises(MvosError, match="images_share"):
        TrainConfig.from_dict(config)


def test_cli_reports_config_errors_in_one_line(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"optim": {"momentum": 0.9}})
    result = subprocess.run([sys.executable, "-c", "from mvos.cli import main; main()", "train", "--config", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: config: unknown key optim.momentum "
                                                  "(known: lr, weight_decay, lr_steps, lr_gamma, freeze_bn, grad_clip)"]


# ----------------------------------------------------------------------------------------------- the step


@pytest.mark.parametrize("queue_len", [1, 2, 3, 4])
def test_training_memory_is_the_engines_memory(queue_len):
    """Slot by slot, the rollout reads the frames the inference engine's memory holds."""
    memory = FixedQueueMemory(queue_len)
    for frame in range(8):
        memory.write(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), frame)
        assert memory_frames(frame + 1, queue_len) == memory.frame_of_slot
    assert memory_frames(4, None) == [0, 1, 2, 3]  # the teacher: every previous frame


@pytest.mark.parametrize("queue_len", [2, 3])
def test_training_rollout_matches_the_inference_engine(queue_len):
    """The student trains on exactly the computation it runs at test time."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2-noaspp").eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), np.uint8)
    mask[8:30, 10:40], mask[35:60, 40:75] = 1, 2
    engine = Segmenter(TorchBackend(model), DEFAULT.replace(queue_len=queue_len, size=None))
    expected = [engine.step(frames[0], mask)] + [engine.step(f) for f in frames[1:]]

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    first = torch.from_numpy(np.stack([mask == 1, mask == 2, mask == 9])).float()[None]  # 3rd: padding
    with torch.no_grad():
        out = rollout(model, x[None], first, torch.tensor([2]), queue_len)
    probs = torch.softmax(out.logits, dim=1)  # 4,1+3,H,W
    assert out.z.shape == (4 * 3, 24, 16, 20)
    assert probs[:, 3].max() < 1e-5  # the padded object never gets probability
    for t in range(1, 5):
        np.testing.assert_allclose(probs[t - 1, :3].numpy(), expected[t], atol=2e-4)


def test_freeze_bn_scopes():
    model = build_model("effnetlite0")
    batchnorms = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]  # noqa: E731
    set_train_mode(model, "all")
    assert model.training and not any(bn.training for bn in batchnorms(model))
    set_train_mode(model, "key_encoder")
    assert not any(bn.training for bn in batchnorms(model.key_encoder))
    assert all(bn.training for bn in batchnorms(model.value_encoder))
    set_train_mode(model, "none")
    assert all(bn.training for bn in batchnorms(model))


# ------------------------------------------------------------------------------------------------- runs


def test_ten_iterations_with_distillation_through_the_cli(synth_root, teacher_ckpt, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(synth_root, run_dir, loss={"logit_weight": 1.0, "repr_weight": 1.0, "w": 0.5,
                                                    "top_p_hold_iters": 2, "top_p_warmup_iters": 4},
                         keep_snapshots=True)
    path = write_yaml(tmp_path / "tiny.yaml", config)
    result = CliRunner().invoke(train_command, ["--config", str(path), "--teacher", str(teacher_ckpt), "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output

    rows = read_log(run_dir)
    logged = [r for r in rows if r["loss"]]
    assert [int(r["iteration"]) for r in logged] == [2, 4, 6, 8, 10]
    for r in logged:
        parts = float(r["xe"]) + float(r["logit"]) + float(r["repr"])
        assert float(r["loss"]) == pytest.approx(parts, rel=1e-4)  # all weights are 1
        assert float(r["xe"]) > 0 and float(r["logit"]) > 0 and float(r["repr"]) != 0
        assert float(r["lr"]) == 1e-3 and float(r["it_per_s"]) > 0
    assert [float(r["top_p"]) for r in logged][-1] == pytest.approx(0.15)  # the bootstrap schedule ran
    validated = {int(r["iteration"]): float(r["val_JF"]) for r in rows if r["val_JF"]}
    assert sorted(validated) == [5, 10] and all(0 <= v <= 1 for v in validated.values())

    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = read_checkpoint(run_dir / "latest.pth")
    assert latest["iteration"] == 10 and latest["train_config"]["teacher"]["model"] == str(teacher_ckpt)
    assert {"optimizer", "scheduler", "rng", "criterion"} <= set(latest)
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == [
        "iter_0000004.pth", "iter_0000008.pth", "iter_0000010.pth"]
    student = load_checkpoint(run_dir / "final.pth", expect_variant="mobilenetv2-noaspp")
    initial = build_model("mobilenetv2-noaspp")
    assert not torch.equal(student.decoder.pred.weight, initial.decoder.pred.weight)
    # the embedding of the student's 24-channel z into the teacher's 48 is trained and saved for resuming
    assert latest["criterion"]["embed.weight"].shape == (48, 24)

    again = CliRunner().invoke(train_command, ["--config", str(path), "--teacher", str(teacher_ckpt), "--quiet"])
    assert again.exit_code != 0 and "pass --resume" in str(again.exception)


def test_resumed_run_equals_an_uninterrupted_one(synth_root, tmp_path):
    straight = train(TrainConfig.from_dict(tiny_config(synth_root, tmp_path / "a", iterations=6)), progress=False)
    # The same run stopped at iteration 4 (a checkpoint), then resumed to 6.
    first = TrainConfig.from_dict(tiny_config(synth_root, tmp_path / "b", iterations=4))
    train(first, progress=False)
    resumed = train(TrainConfig.from_dict(tiny_config(synth_root, tmp_path / "b", iterations=6)), resume=True,
                    progress=False)
    a, b = read_checkpoint(straight)["model"], read_checkpoint(resumed)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Run b also validated at iteration 4 (the end of its first part): validation must not shift the RNG.
    losses = lambda rows: [{k: r[k] for k in ("iteration", "loss", "xe", "top_p", "lr")} for r in rows if r["loss"]]  # noqa: E731
    assert losses(read_log(tmp_path / "a")) == losses(read_log(tmp_path / "b"))
    assert [r["val_JF"] for r in read_log(tmp_path / "b") if r["iteration"] == "6"] == \
        [r["val_JF"] for r in read_log(tmp_path / "a") if r["iteration"] == "6"]


def test_a_resumed_run_follows_the_configs_later_lr_steps(synth_root, tmp_path):
    """Lengthening a run: resumed with more iterations and an lr drop the first part did not have."""
    common = dict(checkpoint_every=2, log_every=1, val={"sequences": []})
    train(TrainConfig.from_dict(tiny_config(synth_root, tmp_path, iterations=4, **common)), progress=False)
    longer = tiny_config(synth_root, tmp_path, iterations=8, **common)
    longer["optim"] = {"lr": 1e-3, "lr_steps": [6], "lr_gamma": 0.5}
    train(TrainConfig.from_dict(longer), resume=True, progress=False)
    lrs = {int(r["iteration"]): float(r["lr"]) for r in read_log(tmp_path) if r["loss"]}
    assert [lrs[i] for i in range(1, 9)] == pytest.approx([1e-3] * 5 + [5e-4] * 3)


@pytest.mark.slow  # ~15 s: two training processes
def test_sigkill_then_resume_loses_at_most_one_interval(synth_root, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(synth_root, run_dir, iterations=10_000, checkpoint_every=3, log_every=1,
                         val={"sequences": []})
    path = write_yaml(tmp_path / "long.yaml", config)
    command = [sys.executable, "-c", "from mvos.cli import main; main()", "train", "--config", str(path), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            latest = run_dir / "latest.pth"
            if latest.exists() and read_checkpoint(latest)["iteration"] >= 6:
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at iteration >= 6 within 120 s")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    reached = max(int(r["iteration"]) for r in read_log(run_dir))
    saved = read_checkpoint(run_dir / "latest.pth")["iteration"]
    assert saved % 3 == 0 and 0 <= reached - saved <= 3

    resumed = subprocess.run(command + ["--resume", f"iterations={saved + 2}"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} from iteration {saved}" in resumed.stderr
    assert read_checkpoint(run_dir / "final.pth")["iteration"] == saved + 2
    assert [int(r["iteration"]) for r in read_log(run_dir)] == list(range(1, saved + 3))  # redone, not doubled
