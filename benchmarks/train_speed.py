"""Training speed on this machine: iterations per second of one fixed training config, with each speed-up
added in turn, in one run (ratios against the first row are what to read; absolute it/s depend on the load).

Settings, each on top of the previous one:
    fp32, 1 thread      the trainer as the first experiments ran it (configs/davis2016_*.yaml)
    + 2 threads         both cores
    + channels-last     NHWC activations (oneDNN's fast convolution path)
    + bf16 autocast     this CPU has AVX512-BF16
    + prefetch          the next batch is built in a background thread while this one trains

Each setting runs in its own process (thread counts and allocator state do not leak between them). Run it on a
quiet machine (stop any training first). By default it trains on DAVIS 2016 from ../shared when present, else
on an `mvos synth` dataset made in a temporary folder:

    python benchmarks/train_speed.py --out benchmarks/results/train_speed
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [
    ("fp32, 1 thread", {"threads": 1, "precision": "fp32", "channels_last": False, "prefetch": False}),
    ("+ 2 threads", {"threads": 2, "precision": "fp32", "channels_last": False, "prefetch": False}),
    ("+ channels-last", {"threads": 2, "precision": "fp32", "channels_last": True, "prefetch": False}),
    ("+ bf16 autocast", {"threads": 2, "precision": "bf16", "channels_last": True, "prefetch": False}),
    ("+ prefetch", {"threads": 2, "precision": "bf16", "channels_last": True, "prefetch": True}),
]
DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "davis2016-train"


def fixed_config(data_root: Path, dataset: str, crop: int, batch: int, variant: str) -> dict:
    """The shipped video stage's shape of work: 3-frame clips, two objects (one pasted), frozen key-encoder BN."""
    return {"stage": "main", "run_dir": "unused", "seed": 0, "batch_size": batch, "iterations": 1,
            "data": {"sources": [{"dataset": dataset, "root": str(data_root), "split": "train"}],
                     "clip_frames": 3, "crop": crop, "max_objects": 2, "paste_videos": True, "paste": {"p": 0.5}},
            "student": {"variant": variant, "pretrained_effnet": False},
            "optim": {"lr": 1e-4, "freeze_bn": "key_encoder"}}


def measure(config: dict, warmup: int, iterations: int) -> dict:
    """Runs in a fresh process: `warmup` steps, then times `iterations` steps (data loading included)."""
    import torch

    from mvos.training.config import TrainConfig
    from mvos.training.trainer import BatchPrefetcher, Trainer, set_train_mode

    config = TrainConfig.from_dict(config)
    trainer = Trainer(config, progress=False)
    set_train_mode(trainer.student, config.optim.freeze_bn)
    trainer.batches = BatchPrefetcher(trainer.dataset, config.seed, 0, config.batch_size, enabled=config.prefetch)
    try:
        for _ in range(warmup):
            trainer._step()
            trainer.iteration += 1
        start = time.perf_counter()
        for _ in range(iterations):
            trainer._step()
            trainer.iteration += 1
        seconds = time.perf_counter() - start
    finally:
        trainer.batches.close()
    return {"it_per_s": iterations / seconds, "s_per_it": seconds / iterations, "threads": torch.get_num_threads()}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mvos.runtime.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["setting"] for r in rows]
    speedups = [float(r["speedup"]) for r in rows]
    bars = ax.barh(names[::-1], speedups[::-1], color="#4c72b0")
    for bar, value in zip(bars, speedups[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}x", va="center", fontsize=9)
    ax.set_xlabel("training iterations per second, relative to the first row")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(speedups) * 1.2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="DAVIS 2016 root (default: ../shared's, else synth)")
    parser.add_argument("--variant", default="mobilenetv2")
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed"))
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: one setting as JSON, prints JSON
    args = parser.parse_args()

    if args.point:
        point = json.loads(args.point)
        print(json.dumps(measure(point["config"], point["warmup"], point["iterations"])))
        return

    with tempfile.TemporaryDirectory(prefix="mvos-train-speed-") as tmp:
        data, dataset = args.data, "davis2016"
        if data is None and DAVIS.is_dir():
            data = DAVIS
        if data is None:
            from mvos.training.synth import generate

            data, dataset = Path(tmp) / "synth", "davis2017"
            generate(data, sequences=6, frames=12, size=(480, 854), objects=(1, 1), seed=0, progress=False)
        base = fixed_config(data, dataset, args.crop, args.batch, args.variant)
        rows = []
        for name, changes in SETTINGS:
            config = {**base, **{k: v for k, v in changes.items()}}
            print(f"{name} ...", flush=True)
            point = json.dumps({"config": config, "warmup": args.warmup, "iterations": args.iterations})
            proc = subprocess.run([sys.executable, __file__, "--point", point], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"setting": name, **changes, "it_per_s": round(result["it_per_s"], 4),
                         "s_per_it": round(result["s_per_it"], 3)})
        for row in rows:
            row["speedup"] = round(row["it_per_s"] / rows[0]["it_per_s"], 2)
            print(f"{row['setting']:<18} {row['s_per_it']:>7.2f} s/it  {row['speedup']:>5.2f}x")

    from mvos.runtime.io import write_csv

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "train_speed.csv", rows)
    title = (f"{args.variant}, batch {args.batch} of 3-frame {args.crop}px clips, 2 objects "
             f"({'DAVIS 2016' if dataset == 'davis2016' else 'synthetic data'}), {args.iterations} timed iterations")
    plot(rows, args.out / "train_speed.png", title)
    print(f"wrote {args.out / 'train_speed.csv'} and {args.out / 'train_speed.png'}")


if __name__ == "__main__":
    main()
