"""Host CPU latency of the exported TFLite subgraphs against PyTorch eager (a benchmark, not a test).

For every variant, precision and queue length: key encoder, value encoder (one object), decoder, and the
whole frame (their sum), for TFLite (ai-edge-litert, XNNPACK) and PyTorch eager on the same threads and input
size. Writes a CSV and a plot, and prints the TFLite/PyTorch frame ratio (the issue asks for <= 1).

    python benchmarks/export_latency.py --model-dir /tmp/mvos-exports --out benchmarks/results/export_latency.csv
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from tqdm import tqdm

from mvos.export.exporter import ensure_exported
from mvos.export.subgraphs import graph_specs, parse_size
from mvos.runtime.inference import TorchBackend
from mvos.runtime.io import atomic_path, write_csv
from mvos.runtime.loading import RANDOM, load_model
from mvos.runtime.manifest import graph_key
from mvos.runtime.model import VARIANTS, QueryFeatures
from mvos.runtime.settings import DEFAULT_EXPORT_SIZE, PRECISIONS
from mvos.runtime.tflite import TFLiteBackend

FIELDS = ["variant", "backend", "precision", "queue_len", "subgraph", "ms", "runs", "threads", "size"]


def timed(fn, runs: int, warmup: int) -> float:
    """Fastest of `runs` calls of `fn()` in milliseconds, after `warmup` calls. The minimum, not the median:
    the 2 cores are shared, and other processes only ever add time."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return min(samples)


def inputs_for(model, size, queue_lens) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs per graph key (latency does not depend on values: no top-k in the students)."""
    g = torch.Generator().manual_seed(0)
    return {spec.key: {k: torch.randn(shape, generator=g) for k, shape in spec.inputs.items()}
            for spec in graph_specs(model, size, queue_lens, 1)}


def torch_rows(model, inputs, queue_lens, runs, warmup) -> dict[tuple[str, int | None], float]:
    backend = TorchBackend(model)
    key, value = inputs["key_encoder"], inputs["value_encoder"]
    out = {}
    with torch.inference_mode():
        out[("key_encoder", None)] = timed(lambda: backend.encode_key(key["frame"]), runs, warmup)
        out[("value_encoder", None)] = timed(
            lambda: model.value_encoder(value["f16"], value["mask"], value["others"]), runs, warmup)
        for t in queue_lens:
            d = inputs[graph_key("decoder", t)]
            q = QueryFeatures(d["key"], d["value"], d["f8"], d["f4"])
            out[("decoder", t)] = timed(lambda: backend.decode(q, d["mem_keys"], d["mem_values"], 1), runs, warmup)
    return out


def tflite_rows(model_dir, precision, inputs, queue_lens, threads, runs, warmup):
    out = {}
    numpy_inputs = {k: {n: v.numpy() for n, v in graph.items()} for k, graph in inputs.items()}
    for t in queue_lens:
        backend = TFLiteBackend(model_dir, queue_len=t, threads=threads, precision=precision, check_hash=False)
        if t == queue_lens[0]:
            out[("key_encoder", None)] = timed(lambda: backend.key_encoder(**numpy_inputs["key_encoder"]), runs, warmup)
            out[("value_encoder", None)] = timed(
                lambda: backend.value_encoder(**numpy_inputs["value_encoder"]), runs, warmup)
        out[("decoder", t)] = timed(lambda: backend.decoder(**numpy_inputs[graph_key("decoder", t)]), runs, warmup)
    return out


def frame_rows(parts: dict, queue_lens) -> dict:
    encoders = parts[("key_encoder", None)] + parts[("value_encoder", None)]
    return {("frame", t): encoders + parts[("decoder", t)] for t in queue_lens}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({r["variant"] for r in rows})
    fig, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 3.8), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        series = sorted({(r["backend"], r["precision"]) for r in rows if r["variant"] == variant})
        for backend, precision in series:
            points = sorted((r["queue_len"], r["ms"]) for r in rows if r["variant"] == variant and
                            r["backend"] == backend and r["precision"] == precision and r["subgraph"] == "frame")
            ax.plot(*zip(*points), marker="o", linestyle="--" if backend == "torch" else "-",
                    label=f"{backend} {precision}" if backend == "tflite" else "PyTorch eager")
        ax.set(title=variant, xlabel="memory queue length T", ylabel="ms per frame (1 object)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


@click.command()
@click.option("--model-dir", required=True, type=click.Path(path_type=Path), help="Exports, one folder per variant.")
@click.option("--out", "out_csv", required=True, type=click.Path(path_type=Path), help="CSV; the plot goes beside it.")
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
@click.option("--queue-lens", default="1,2,5,10,20", show_default=True)
@click.option("--precisions", default=",".join(PRECISIONS), show_default=True)
@click.option("--size", "size_text", default=DEFAULT_EXPORT_SIZE, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--runs", type=int, default=7, show_default=True)
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--verify/--no-verify", default=False, show_default=True, help="Parity checks on new exports.")
def main(model_dir, out_csv, variants, queue_lens, precisions, size_text, threads, runs, warmup, verify):
    size = parse_size(size_text)
    lens = sorted(int(t) for t in queue_lens.split(","))
    precisions = [p for p in precisions.split(",") if p]
    torch.set_num_threads(threads)
    rows = []
    for variant in tqdm(variants.split(","), desc="variants", unit="variant"):
        folder = model_dir / variant
        loaded = load_model(variant, RANDOM)  # latency does not depend on the weights
        model = loaded.model
        result = ensure_exported(folder, model, loaded.source, size, lens, precisions, verify=verify, threads=threads)
        inputs = inputs_for(model, size, lens)
        results = {("torch", "fp32"): torch_rows(model, inputs, lens, runs, warmup)}
        for precision in precisions:
            if precision in result.manifest.precisions():
                results[("tflite", precision)] = tflite_rows(folder, precision, inputs, lens, threads, runs, warmup)
        frames = {key: frame_rows(parts, lens) for key, parts in results.items()}
        for (backend, precision), parts in results.items():
            for (subgraph, t), ms in {**parts, **frames[(backend, precision)]}.items():
                rows.append({"variant": variant, "backend": backend, "precision": precision, "queue_len": t or 0,
                             "subgraph": subgraph, "ms": round(ms, 3), "runs": runs, "threads": threads,
                             "size": f"{size[0]}x{size[1]}"})
        for t in lens:
            torch_decoder_ms = results[("torch", "fp32")][("decoder", t)]
            torch_frame_ms = frames[("torch", "fp32")][("frame", t)]
            ratios = "  ".join(f"{p} {frames[(b, p)][('frame', t)] / torch_frame_ms:.2f}"
                               for b, p in frames if b == "tflite")
            tqdm.write(f"{variant:<20} T={t:<3} torch frame {torch_frame_ms:8.1f} ms "
                       f"(decoder {torch_decoder_ms:.1f})  tflite/torch: {ratios}")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out_csv, rows, FIELDS)
    plot(rows, out_csv.with_suffix(".png"))
    click.echo(f"wrote {out_csv} and {out_csv.with_suffix('.png')}")


if __name__ == "__main__":
    main()
