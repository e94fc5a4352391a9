"""`mvos bench` (latency of every subgraph against memory queue length, on a phone or the host) and `mvos plot`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from mvos.export.subgraphs import parse_size
from mvos.runtime.errors import MvosError
from mvos.runtime.manifest import ENCODERS, Manifest
from mvos.runtime.memory import MAX_QUEUE_LEN, parse_queue_lens
from mvos.runtime.settings import DEFAULT, DEFAULT_EXPORT_SIZE, PRECISIONS

# Both commands: the clip's mean frame spreads the value encoder over the frames between memorised ones.
mem_every_option = click.option(
    "--mem-every", type=click.IntRange(min=1), default=DEFAULT.mem_every, show_default=True,
    help="Memorise one frame in this many (the engine's interval), for the clip's mean frame.")


def bench_points(model_dir: Path, label: str, manifest: Manifest, precisions: list[str], queue_lens: list[int]):
    """The points of one exported model: each encoder once (recorded with T=0), a decoder per queue length."""
    from mvos.device.results import ENCODER_QUEUE_LEN
    from mvos.device.runner import BenchPoint

    points = []
    for precision in precisions:
        for subgraph, queue_len in [*((s, None) for s in ENCODERS), *(("decoder", t) for t in queue_lens)]:
            entry = manifest.entry(precision, subgraph, queue_len)
            if entry is None:  # a precision that failed to convert is recorded in the manifest's failures
                continue
            points.append(BenchPoint(label, precision, ENCODER_QUEUE_LEN if queue_len is None else queue_len,
                                     subgraph, model_dir / entry.path))
    return points


def plot_outputs(plot_path: Path | None) -> list[Path]:
    """The files `plot_results` writes for --out/--plot PATH."""
    from mvos.device.plots import plot_paths

    return [] if plot_path is None else plot_paths(plot_path)


@click.command("bench")
@click.option("--device", "device_spec", required=True,
              help="A phone's serial, an alias from the device table (e.g. s22), or `host`.")
@click.option("--variant", "variants", multiple=True, help="Variant(s) to measure (repeatable).")
@click.option("--weights", "weights", multiple=True, type=click.Path(path_type=Path),
              help="Checkpoint(s) to measure (repeatable), in addition to --variant.")
@click.option("--random-weights", is_flag=True,
              help="Measure --variant with random weights (speed does not depend on them) instead of shipped ones.")
@click.option("--queue-len", "queue_len_text", default=f"1..{MAX_QUEUE_LEN}", show_default=True,
              help=f"Memory queue lengths: a range 1..{MAX_QUEUE_LEN} or a list 1,2,4.")
@click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True, help="GPU delegate or CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--precision", "precision_text", default="fp32", show_default=True, help="fp32, fp16, int8 (comma list).")
@click.option("--size", "size_text", default=DEFAULT_EXPORT_SIZE, show_default=True,
              help="Input size HxW of the exports.")
@click.option("--objects", type=click.IntRange(min=1), default=1, show_default=True,
              help="Objects tracked: the value encoder runs once per object in the per-frame latency.")
@mem_every_option
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of exports (one sub-folder per model); what is missing is exported first.")
@click.option("--app", "from_app", is_flag=True,
              help="Instead of running benchmark_model, pull the demo app's benchmark-mode CSV from the phone "
                   "and add its rows (source app) to --out.")
@click.option("--app-csv", default=None, help="Where the app wrote its CSV on the phone (default: the app's files folder).")
@click.option("--out", "out_csv", required=True, type=click.Path(path_type=Path),
              help="Results CSV; an existing one needs --resume (add to it) or --overwrite.")
@click.option("--benchmark-binary", type=click.Path(path_type=Path), default=None,
              help="The official TFLite benchmark_model for the phone's ABI (or $MVOS_BENCHMARK_MODEL).")
@click.option("--num-runs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--warmup-runs", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--op-profiling", is_flag=True, help="Pass --enable_op_profiling to benchmark_model.")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True, help="Seconds per run.")
@click.option("--resume", is_flag=True, help="Add to an existing results CSV, skipping the points it already has.")
@click.option("--overwrite", is_flag=True, help="Replace an existing results CSV (and plots) once the new one is complete.")
@click.option("--no-verify", is_flag=True, help="Skip the PyTorch parity check of new exports.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Also write the plots.")
def bench_command(device_spec, variants, weights, random_weights, queue_len_text, use_gpu, threads, precision_text,
                  size_text,
                  objects, mem_every, model_dir, from_app, app_csv, out_csv, benchmark_binary, num_runs, warmup_runs, op_profiling,
                  timeout_s, resume, overwrite, no_verify, plot_path) -> None:
    """Per-frame latency against memory queue length: a memorised frame (key encoder + value encoder + decoder)
    and a clip's mean frame; an int8 export measured beside fp32 also as int8 reading fp32's memory."""
    from mvos.device.adb import resolve_device
    from mvos.device.app import APP_CSV, app_rows
    from mvos.device.plots import plot_results
    from mvos.device.results import per_frame_latency, read_results
    from mvos.runtime.io import check_output

    if resume and overwrite:
        raise MvosError("--resume adds to the results CSV and --overwrite replaces it: choose one")
    if from_app:
        if model_dir is not None or variants or weights or benchmark_binary is not None:
            raise MvosError("--app reads what the app measured: drop --model-dir, --variant, --weights and "
                            "--benchmark-binary")
        check_output(out_csv, overwrite=overwrite, merges=resume, merge_flag="--resume")
        for path in plot_outputs(plot_path):
            check_output(path, inputs=(out_csv,), overwrite=overwrite or resume, flag="--plot")
        rows = app_rows(resolve_device(device_spec), app_csv or APP_CSV)
        write_rows(out_csv, rows, replace=overwrite)
        click.echo(f"{len(rows)} row(s) from the app written to {out_csv}")
        labels = {row["variant"] for row in rows}
        queue_lens = sorted({int(row["queue_len"]) for row in rows})
    else:
        if model_dir is None:
            raise MvosError("--model-dir is required (where the exports to measure are kept), unless --app")
        if app_csv is not None:
            raise MvosError("--app-csv goes with --app")
        labels, queue_lens = measure(device_spec, variants, weights, random_weights, queue_len_text, use_gpu,
                                     threads, precision_text, size_text, model_dir, out_csv, benchmark_binary,
                                     num_runs, warmup_runs, op_profiling, timeout_s, resume, overwrite, no_verify,
                                     plot_path)

    table = per_frame_latency(read_results(out_csv), objects=objects, mem_every=mem_every)
    table = table[table["variant"].isin(labels) & table["queue_len"].isin(queue_lens)]
    if not table.empty:
        click.echo(f"\nper-frame latency (ms, {objects} object(s)): frame_ms a memorised frame, clip_mean_ms the "
                   f"mean frame memorising one in {mem_every}")
        columns = ["variant", "precision", "memory_precision", "delegate", "source", "queue_len", "key_encoder_ms",
                   "value_encoder_ms", "decoder_ms", "frame_ms", "clip_mean_ms"]
        if not table["memory_precision"].any():
            columns.remove("memory_precision")
        if table["measured_frame_ms"].notna().any():
            columns.append("measured_frame_ms")
        click.echo(table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if plot_path is not None:
        for path in plot_results(out_csv, plot_path, objects=objects, mem_every=mem_every):
            click.echo(f"wrote {path}")


def write_rows(out_csv: Path, rows: list[dict], replace: bool) -> None:
    """Add rows to the results CSV, or with `replace` make them its whole content (atomically either way)."""
    from mvos.device.results import append_rows
    from mvos.runtime.io import staging_path

    if not replace:
        append_rows(out_csv, rows)
        return
    fresh = staging_path(out_csv)
    append_rows(fresh, rows)
    os.replace(fresh, out_csv)


def measure(device_spec, variants, weights, random_weights, queue_len_text, use_gpu, threads, precision_text,
            size_text, model_dir, out_csv, benchmark_binary, num_runs, warmup_runs, op_profiling, timeout_s, resume,
            overwrite, no_verify, plot_path) -> tuple[set[str], list[int]]:
    """Export what is missing and run benchmark_model on every point; the labels and queue lengths measured."""
    from mvos.device.adb import resolve_device
    from mvos.device.runner import SweepSettings, locate_benchmark_binary, run_points
    from mvos.export.exporter import ensure_exported
    from mvos.runtime.io import check_output, staging_path
    from mvos.runtime.loading import RANDOM, load_model
    from mvos.runtime.model import DEFAULT_VARIANT

    inputs = (*weights, benchmark_binary)
    check_output(out_csv, inputs=(*inputs, model_dir), overwrite=overwrite, merges=resume, merge_flag="--resume")
    for path in plot_outputs(plot_path):
        check_output(path, inputs=(*inputs, out_csv), overwrite=overwrite or resume, flag="--plot")
    queue_lens = parse_queue_lens((queue_len_text,))
    size = parse_size(size_text)
    precisions = [p.strip() for p in precision_text.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise MvosError(f"--precision {precision_text!r}: choose from {', '.join(PRECISIONS)}")
    specs = [(v, RANDOM if random_weights else None) for v in variants]
    specs += [(None, w) for w in weights]
    if not specs:
        specs = [(DEFAULT_VARIANT, RANDOM if random_weights else None)]

    # Resolve the device and its benchmark tool before exporting anything: both fail fast and cheaply.
    device = resolve_device(device_spec)
    locate_benchmark_binary(device, benchmark_binary)

    points, labels = [], set()
    for variant, weights_spec in specs:
        loaded = load_model(variant, weights_spec)
        label = (loaded.model.variant if weights_spec in (None, RANDOM)
                 else f"{loaded.model.variant}:{Path(weights_spec).stem}")
        labels.add(label)
        folder = Path(model_dir) / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        click.echo(f"exports for {label} ({loaded.source}): {folder}", err=True)
        result = ensure_exported(folder, loaded.model, loaded.source, size, queue_lens, precisions, max_objects=1,
                                 verify=not no_verify, on_message=lambda message: click.echo(f"  {message}", err=True))
        points += bench_points(folder, label, result.manifest, precisions, queue_lens)

    settings = SweepSettings(use_gpu=use_gpu, threads=threads, num_runs=num_runs, warmup_runs=warmup_runs,
                             op_profiling=op_profiling, timeout_s=timeout_s, benchmark_binary=benchmark_binary)
    if overwrite:  # measure into a new file beside it: the old results stay until the new ones are complete
        fresh = staging_path(out_csv)
        written = run_points(device, points, fresh, settings, resume=False)
        if fresh.exists():
            os.replace(fresh, out_csv)
    else:
        written = run_points(device, points, out_csv, settings, resume=resume)
    click.echo(f"{written} measurement(s) written to {out_csv}" + (" (others already done)" if resume else ""))
    return labels, queue_lens


@click.command("plot")
@click.argument("results_csv", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="PNG of latency vs queue length; the per-subgraph plot goes beside it (<name>_subgraphs.png).")
@click.option("--objects", type=click.IntRange(min=1), default=1, show_default=True)
@mem_every_option
@click.option("--overwrite", is_flag=True, help="Replace existing plots.")
def plot_command(results_csv: Path, out_path: Path, objects: int, mem_every: int, overwrite: bool) -> None:
    """Latency vs memory queue length per variant (paper Figure 4) and per-subgraph stacked latency."""
    from mvos.device.plots import plot_results
    from mvos.runtime.io import check_output

    for path in plot_outputs(out_path):
        check_output(path, inputs=(results_csv,), overwrite=overwrite)

    for path in plot_results(results_csv, out_path, objects=objects, mem_every=mem_every):
        click.echo(f"wrote {path}")
