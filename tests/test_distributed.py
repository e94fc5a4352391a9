"""`mvos train` under torchrun on this CPU (gloo): two processes with half the batch each train exactly what one
process with the whole batch trains, a killed process ends the job with one clear line and a checkpoint to
resume from, and rank 0 alone writes the run folder."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mvos.runtime.checkpoint import read_checkpoint
from mvos.training.config import TrainConfig
from mvos.training.distributed import Runtime, resolve_precision
from mvos.training.synth import generate
from mvos.training.trainer import Trainer

pytestmark = pytest.mark.slow  # each test starts torchrun and two training processes


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "data"
    generate(root, sequences=4, frames=6, size=(64, 80), objects=(1, 2), seed=3, val_fraction=0.25, progress=False)
    return root


def config(data: Path, run_dir: Path, **top) -> dict:
    # BatchNorm frozen everywhere: with trained BatchNorm each process would normalise over its own half batch.
    return {"run_dir": str(run_dir), "seed": 1, "threads": 1, "batch_size": 4, "iterations": 4,
            "checkpoint_every": 2, "log_every": 1, "prefetch": False, "device": "cpu",
            "data": {"sources": [{"dataset": "davis2017", "root": str(data), "split": "train"}],
                     "clip_frames": 3, "crop": 64, "max_objects": 2, "max_gap": 2},
            "student": {"variant": "mobilenetv2-noaspp"}, "optim": {"lr": 1e-3, "freeze_bn": "all"}, **top}


def torchrun(nproc: int, config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "mvos", "train", "--config", str(config_path), "--quiet", *args]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "log.csv", newline="") as handle:
        return [(int(r["iteration"]), float(r["loss"])) for r in csv.DictReader(handle) if r["loss"]]


def test_two_processes_train_what_one_process_with_the_global_batch_trains(data, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config(data, tmp_path / "one")))
    one = subprocess.run([sys.executable, "-m", "mvos", "train", "--config", str(path), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(torchrun(2, path, f"run_dir={tmp_path / 'two'}", "batch_size=2"), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "2 process(es) x batch 2 = global batch 4" in two.stderr

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [i for i, _ in a] == [i for i, _ in b] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-4)
    assert a[-1][1] < a[0][1]  # it trained
    with open(tmp_path / "two" / "log.csv", newline="") as handle:
        assert {r["global_batch"] for r in csv.DictReader(handle)} == {"4"}
    wa, wb = read_checkpoint(tmp_path / "one" / "final.pth")["model"], read_checkpoint(tmp_path / "two" / "final.pth")["model"]
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=1e-5, rtol=1e-4)
    # rank 0 alone wrote the folder: one row per iteration, the files of one run
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.yaml", "final.pth", "latest.pth",
                                                                  "log.csv", "loss.png"]
    assert len(read_checkpoint(tmp_path / "two" / "latest.pth")["rng_ranks"]) == 2  # every rank's state


def _workers(parent: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (children of its agent, found through /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def test_a_killed_process_ends_the_job_with_one_clear_line_and_a_resumable_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config(data, run_dir, iterations=10_000, batch_size=1)))
    job = subprocess.Popen(torchrun(2, path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            latest = run_dir / "latest.pth"
            if latest.exists() and read_checkpoint(latest)["iteration"] >= 4:
                break
            assert job.poll() is None, job.stderr.read()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at iteration >= 4 within 180 s")
        workers = _workers(job.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert ours and all("--resume" in line for line in ours), err[-3000:]
    # Our processes print no traceback; torchrun's launcher prints its own report of the failed child.
    frames = [line for line in err.splitlines() if line.strip().startswith('File "')]
    assert all("torch/distributed" in f or "<frozen runpy>" in f for f in frames), err[-3000:]

    saved = read_checkpoint(run_dir / "latest.pth")["iteration"]
    resumed = subprocess.run(torchrun(2, path, "--resume", f"iterations={saved + 2}"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} from iteration {saved}" in resumed.stderr
    assert read_checkpoint(run_dir / "final.pth")["iteration"] == saved + 2


def test_only_rank_zero_writes_the_run_folder(data, tmp_path):
    """A rank other than 0 trains but writes nothing (here alone, so no collective is needed)."""
    run_dir = tmp_path / "run"
    train_config = TrainConfig.from_dict(config(data, run_dir, iterations=2))
    device = torch.device("cpu")
    trainer = Trainer(train_config, progress=False, runtime=Runtime(device, resolve_precision("fp32", device), rank=1))
    trainer.run()
    assert trainer.iteration == 2 and not run_dir.exists()


def test_device_and_precision_choices_on_a_machine_without_cuda(monkeypatch):
    from mvos.runtime.errors import MvosError
    from mvos.training.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(MvosError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(MvosError, match="device must be one of"):
        resolve_device("tpu")
    cpu = torch.device("cpu")
    with pytest.raises(MvosError, match="fp16 is for GPUs"):
        resolve_precision("fp16", cpu)
    assert resolve_precision("auto", cpu) in ("bf16", "fp32") and resolve_precision("bf16", cpu) == "bf16"


def test_auto_precision_on_gpus_prefers_bf16_and_falls_back_to_fp16(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", gpu) == "fp16"  # the trainer then scales the loss (GradScaler)
