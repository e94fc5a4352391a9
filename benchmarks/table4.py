"""The paper's Table 4 protocol on this CPU: a random 480x910 video of 50 and of 500 frames, batch 1; FPS and
peak RSS for each variant with the fixed queue, and for STCN-style unbounded memory.

Each (model, memory, frames) point runs in its own process so its peak RSS is its own. Writes a CSV and a
Markdown table, and checks the fixed-queue promise: FPS(500)/FPS(50) >= 0.95 and peak RSS growth < 10%.

    python benchmarks/table4.py --out results/table4            # every variant, 50 and 500 frames
    python benchmarks/table4.py --variants mobilenetv2 --frames 20,100 --out /tmp/t4   # quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from mvos.runtime.io import atomic_path, write_csv

FIELDS = ["model", "memory", "queue_len", "frames", "fps", "ms_per_frame", "peak_rss_mb", "parameters",
          "memory_mb", "fps_first50", "fps_last50"]
WINDOW = 50  # frames compared at the start and the end of one run: robust to load drifting between runs


def run_point(model: str, memory: str, frames: int, size: tuple[int, int], queue_len: int, threads: int,
              teacher_weights: str | None) -> dict:
    """Segments a random video in this process and returns its figures."""
    import torch

    from mvos.runtime.inference import Segmenter, Timing, TorchBackend, track
    from mvos.runtime.loading import RANDOM, load_model
    from mvos.runtime.settings import DEFAULT

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    if model.startswith("teacher:"):
        from mvos.training.teacher import build_teacher_segmenter

        segmenter, _ = build_teacher_segmenter(model.split(":", 1)[1], weights=teacher_weights)
    else:  # speed does not depend on the weights
        settings = DEFAULT.replace(queue_len=queue_len, memory=memory, size=size[0])
        segmenter = Segmenter(TorchBackend(load_model(model, RANDOM).model), settings)
    height, width = size
    mask = np.zeros(size, np.uint8)
    mask[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = 1
    # A few distinct random frames cycled: generating 500 full-size noise frames would dominate the timing.
    pool = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(8)]
    timing = Timing()
    for result in track(segmenter, (pool[i % len(pool)] for i in range(frames)), {0: (mask, None)}):
        timing.add(result)
    steady = [ms / 1000 for ms in timing.steady]  # frame 0 includes one-off allocations
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first, last = steady[:WINDOW], steady[-WINDOW:]
    return {"model": model, "memory": memory, "queue_len": queue_len if memory == "fixed" else "",
            "frames": frames, "fps": round(len(steady) / sum(steady), 3),
            "ms_per_frame": round(1000 * sum(steady) / len(steady), 2), "peak_rss_mb": round(peak_kb / 1024, 1),
            "parameters": segmenter.num_parameters, "memory_mb": round(segmenter.memory_nbytes() / 2**20, 2),
            "fps_first50": round(len(first) / sum(first), 3), "fps_last50": round(len(last) / sum(last), 3)}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | memory | frames | FPS | ms/frame | peak RSS (MB) | memory (MB) | params (M) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        memory = f"fixed T={r['queue_len']}" if r["memory"] == "fixed" else "unbounded"
        lines.append(f"| {r['model']} | {memory} | {r['frames']} | {float(r['fps']):.2f} | "
                     f"{float(r['ms_per_frame']):.1f} | {r['peak_rss_mb']} | {r['memory_mb']} | "
                     f"{int(r['parameters']) / 1e6:.2f} |")
    return "\n".join(lines)


def constant_cost_checks(rows: list[dict], short: int, long: int) -> list[str]:
    """One line per fixed-queue model comparing its long run with its short run."""
    lines = []
    by_key = {(r["model"], r["memory"], int(r["frames"])): r for r in rows}
    for (model, memory, frames), r_long in sorted(by_key.items()):
        if memory != "fixed" or frames != long or (model, memory, short) not in by_key:
            continue
        r_short = by_key[(model, memory, short)]
        fps_ratio = float(r_long["fps"]) / float(r_short["fps"])
        rss_growth = float(r_long["peak_rss_mb"]) / float(r_short["peak_rss_mb"]) - 1
        ok = fps_ratio >= 0.95 and rss_growth < 0.10
        window = ""
        if r_long.get("fps_last50") not in (None, ""):
            window = (f"; within the {long}-frame run, FPS(last {WINDOW})/FPS(first {WINDOW}) = "
                      f"{float(r_long['fps_last50']) / float(r_long['fps_first50']):.3f}")
        lines.append(f"{model}: FPS({long})/FPS({short}) = {fps_ratio:.3f}, peak RSS growth {rss_growth:+.1%} "
                     f"-> {'OK' if ok else 'FAIL'}{window}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="mobilenetv2-noaspp,mobilenetv2,resnet18")
    parser.add_argument("--unbounded", default="mobilenetv2", help="variants also run with unbounded memory")
    parser.add_argument("--teacher", default="", help="teacher to add, e.g. 'stcn' or a checkpoint path")
    parser.add_argument("--teacher-weights", default=None)
    parser.add_argument("--frames", default="50,500")
    parser.add_argument("--size", default="480x910")
    parser.add_argument("--queue-len", type=int, default=None, help="default: the inference default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/table4"))
    parser.add_argument("--resume", action="store_true", help="keep the points already in OUT/table4.csv")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point, print JSON
    args = parser.parse_args()
    if args.queue_len is None:
        from mvos.runtime.settings import DEFAULT

        args.queue_len = DEFAULT.queue_len
    size = tuple(int(s) for s in args.size.lower().split("x"))

    if args.point:
        model, memory, frames = args.point.split("|")
        print(json.dumps(run_point(model, memory, int(frames), size, args.queue_len, args.threads,
                                   args.teacher_weights)))
        return

    frames = [int(f) for f in args.frames.split(",")]
    points = [(v, "fixed", n) for v in args.variants.split(",") if v for n in frames]
    points += [(v, "unbounded", n) for v in args.unbounded.split(",") if v for n in frames]
    if args.teacher:
        points += [(f"teacher:{args.teacher}", "unbounded", n) for n in frames]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.resume and (args.out / "table4.csv").is_file():
        with open(args.out / "table4.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        done = {(r["model"], r["memory"], int(r["frames"])) for r in rows}
        points = [p for p in points if p not in done]
    text = ""
    for index, (model, memory, n) in enumerate(points, 1):
        print(f"[{index}/{len(points)}] {model} {memory} {n} frames ...", flush=True)
        command = [sys.executable, __file__, "--point", f"{model}|{memory}|{n}", "--size", args.size,
                   "--queue-len", str(args.queue_len), "--threads", str(args.threads)]
        if args.teacher_weights:
            command += ["--teacher-weights", args.teacher_weights]
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            sys.exit(f"point {model}/{memory}/{n} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"    {rows[-1]['fps']} FPS, peak RSS {rows[-1]['peak_rss_mb']} MB", flush=True)
        text = write_tables(args.out, rows, frames, args.size, args.threads)  # after every point: long runs
    print(text)


def write_tables(out: Path, rows: list[dict], frames: list[int], size: str, threads: int) -> str:
    """Rewrites table4.csv and table4.md (atomically) with the points measured so far."""
    write_csv(out / "table4.csv", rows, FIELDS)
    checks = constant_cost_checks(rows, min(frames), max(frames))
    text = (f"Table 4 protocol on this machine: random {size} video, batch 1, {threads} threads, "
            f"PyTorch eager.\n\n{markdown(rows)}\n\n" + "\n".join(f"- {line}" for line in checks) + "\n")
    with atomic_path(out / "table4.md") as tmp:
        tmp.write_text(text)
    return text


if __name__ == "__main__":
    main()
