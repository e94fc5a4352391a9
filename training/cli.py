"""The training layer's commands: `mvos train`, `eval`, `soup`, `synth` and `import-backbone`. Everything they
do lives in the core modules; here are the options, the output policy checks and what gets printed."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.core import ParameterSource

from mvos.runtime.errors import MvosError
from mvos.runtime.io import check_output
from mvos.runtime.memory import MAX_QUEUE_LEN, MIN_QUEUE_LEN
from mvos.runtime.options import model_options, overwrite_option, segmenter_from_options
from mvos.runtime.settings import DEFAULT, MIN_SIZE


def _names(values: tuple[str, ...]) -> list[str] | None:
    """--sequences a,b --sequences c -> [a, b, c] (None when none are given)."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


# ------------------------------------------------------------------------------------------------- train


@click.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="YAML or TOML training config (see configs/).")
@click.argument("overrides", nargs=-1)
@click.option("--teacher", default=None, help="'stcn' (with --teacher-weights) or a mobilevos checkpoint.")
@click.option("--teacher-weights", type=click.Path(path_type=Path), default=None,
              help="The published STCN state_dict (stcn.pth) for --teacher stcn.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Overrides run_dir.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Overrides device: auto (a CUDA GPU when present), cpu or cuda. Several GPUs or nodes: start "
                   "this command with torchrun (one process per GPU).")
@click.option("--resume", is_flag=True, help="Continue the run in run_dir from its latest checkpoint.")
@click.option("--overwrite", is_flag=True,
              help="Train anew over a run_dir that holds files; the old run is replaced when the new one completes "
                   "(a killed --overwrite run cannot be resumed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(config_path: Path, overrides: tuple[str, ...], teacher: str | None, teacher_weights: Path | None,
                  run_dir: Path | None, device: str | None, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Train a student: mvos train --config FILE [section.key=value ...].

    Paths in the config are relative to the current folder.
    """
    from mvos.training.config import TrainConfig, apply_overrides, read_config_file
    from mvos.training.trainer import train

    data = apply_overrides(read_config_file(config_path), list(overrides))
    if teacher is not None:
        data.setdefault("teacher", {})["model"] = teacher
    if teacher_weights is not None:
        data.setdefault("teacher", {})["weights"] = str(teacher_weights)
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    if device is not None:
        data["device"] = device
    config = TrainConfig.from_dict(data)
    final = train(config, resume=resume, progress=not quiet, overwrite=overwrite, say=_echo_err)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the run
        click.echo(f"wrote {final} (log: {Path(config.run_dir) / 'log.csv'}, "
                   f"curve: {Path(config.run_dir) / 'loss.png'})")


# -------------------------------------------------------------------------------------------------- eval


def _explicit_model_options(ctx: click.Context, options: dict) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in options
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]


@click.command("eval")
@click.option("--dataset", default="davis2017", show_default=True, help="davis2017 | davis2016 | ytvos2019.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--split", default="val", show_default=True, help="Split list to evaluate (val, train, ...).")
@click.option("--sequences", multiple=True, help="Only these sequences (comma-separated or repeated).")
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=None,
              help="Score existing predictions (DIR/<seq>/<frame>.png) instead of running a model.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder: predictions, CSVs and summary.json (with --results: default DIR). "
                   "An earlier eval's folder is added to: the sequences run again are replaced.")
@overwrite_option
@model_options
@click.pass_context
def eval_command(ctx: click.Context, dataset: str, root: Path, split: str, sequences: tuple[str, ...],
                 results_dir: Path | None, out_dir: Path | None, overwrite: bool, **options) -> None:
    """Evaluate a model (or existing masks, --results) on DAVIS 2016/2017 or YouTube-VOS 2019."""
    from mvos.runtime.io import staged_directory
    from mvos.training.datasets import check_dataset_name, load_dataset
    from mvos.training.evaluate import evaluate, is_eval_output, results_table, score_results, stale_reports, \
        write_reports

    check_dataset_name(dataset)
    if results_dir is not None:
        explicit = _explicit_model_options(ctx, options)
        if explicit:
            raise MvosError(f"--results scores existing masks; drop the model options ({', '.join(explicit)})")
        if dataset == "ytvos2019":
            raise MvosError("YouTube-VOS has no public ground truth: submit the zip to the official server")
    elif out_dir is None:
        raise MvosError("--out is required to write the predictions (or pass --results DIR to score existing ones)")
    seqs = load_dataset(dataset, root, split, _names(sequences))
    base = {"dataset": dataset, "split": split, "root": str(root), "sequences": len(seqs)}

    if results_dir is not None:
        out_dir = out_dir or results_dir
        # The CSVs go beside the scored masks (documented); elsewhere they follow the usual policy.
        same = Path(out_dir).resolve() == Path(results_dir).resolve()
        check_output(out_dir, inputs=(root,), overwrite=overwrite, merges=same or is_eval_output(out_dir))
        scores = score_results(dataset, seqs, results_dir)
        global_results = write_reports(out_dir, split, scores, {**base, "results": str(results_dir)})
        click.echo(results_table(split, global_results, scores))
        click.echo(f"\nwrote {out_dir}/global_results-{split}.csv, per-sequence_results-{split}.csv, summary.json")
        return

    merge = is_eval_output(out_dir)
    weights = options.get("weights")
    check_output(out_dir, inputs=(root, None if weights == "random" else weights, options.get("model_dir")),
                 overwrite=overwrite, merges=merge)
    segmenter = segmenter_from_options(options)
    run_info = {**base, "weights": weights}
    if merge:
        for stale in stale_reports(out_dir, split):  # they would describe the predictions we overwrite
            stale.unlink(missing_ok=True)
        run = evaluate(segmenter, dataset, split, seqs, out_dir, run_info)
    else:  # a new folder (or --overwrite of another): it appears whole, once complete
        with staged_directory(out_dir) as staging:
            run = evaluate(segmenter, dataset, split, seqs, staging, run_info)
    s = run.summary
    speed = f"{s['fps']:.1f} FPS, {s['parameters'] / 1e6:.2f}M parameters, T={s['queue_len']}, {s['variant']}"
    if run.scores is None:
        click.echo(f"{len(seqs)} videos, {run.masks} masks -> {out_dir / 'submission.zip'} "
                   f"(score it on the YouTube-VOS server); {speed}")
        return
    click.echo(results_table(split, run.global_results, run.scores))
    click.echo(f"\n{speed}; wrote {out_dir}")


# -------------------------------------------------------------------------------------------------- soup


@click.command("soup")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint to write.")
@click.option("--greedy", is_flag=True, help="Greedy soup by validation J&F (needs --val-root).")
@click.option("--val-root", type=click.Path(path_type=Path), default=None, help="Validation dataset root.")
@click.option("--dataset", default="davis2017", show_default=True, help="davis2017 | davis2016.")
@click.option("--split", default="val", show_default=True)
@click.option("--sequences", multiple=True, help="Only these sequences (comma-separated or repeated).")
@click.option("--size", type=click.IntRange(min=MIN_SIZE), default=DEFAULT.size, show_default=True,
              help="Short side.")
@click.option("--queue-len", type=click.IntRange(MIN_QUEUE_LEN, MAX_QUEUE_LEN), default=DEFAULT.queue_len,
              show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for validation.")
@click.option("--half", is_flag=True, help="Store the weights in fp16 (half the size; what the package ships).")
@overwrite_option
def soup_command(checkpoints: tuple[Path, ...], out: Path, greedy: bool, val_root: Path | None, dataset: str,
                 split: str, sequences: tuple[str, ...], size: int, queue_len: int, threads: int | None,
                 half: bool, overwrite: bool) -> None:
    """Average checkpoints of one architecture into a uniform (default) or greedy soup."""
    import torch

    from mvos.runtime.checkpoint import save_checkpoint
    from mvos.training.soup import greedy_soup, read_ingredients, uniform_soup
    from mvos.training.trainer import score_model

    check_output(out, inputs=(*checkpoints, val_root), overwrite=overwrite)
    if threads is not None:
        torch.set_num_threads(threads)
    if greedy and val_root is None:
        raise MvosError("--greedy ranks ingredients by validation J&F: pass --val-root")
    paths = list(checkpoints)
    ingredients = read_ingredients(paths)
    names = [str(p) for p in paths]
    settings = DEFAULT.replace(size=size, queue_len=queue_len, threads=threads)

    def score(model) -> float:
        return score_model(model, dataset, val_root, split, _names(sequences), settings, channels_last=True)["val_JF"]

    if greedy:
        soup, record = greedy_soup(ingredients, score, names, echo=click.echo)
        record["method"] = "greedy"
    else:
        soup = uniform_soup(ingredients)
        record = {"method": "uniform", "kept": names}
        if val_root is not None:
            record["soup_score"] = score(soup)
    save_checkpoint(out, soup, half=half, soup=record)
    summary = f" (J&F {record['soup_score']:.4f})" if "soup_score" in record else ""
    click.echo(f"wrote {out}: {record['method']} soup of {len(record['kept'])} of {len(paths)} checkpoints{summary}")


# ------------------------------------------------------------------------------------------------- synth


@click.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root to write.")
@click.option("--sequences", type=int, default=10, show_default=True, help="Number of videos.")
@click.option("--frames", type=int, default=30, show_default=True, help="Frames per video.")
@click.option("--size", default="240x432", show_default=True, help="Frame size HxW.")
@click.option("--objects", default="1..3", show_default=True, help="Objects per video: N or LO..HI.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of videos listed in val.txt.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it already holds files.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth_command(out: Path, sequences: int, frames: int, size: str, objects: str, seed: int,
                  val_fraction: float, overwrite: bool, quiet: bool) -> None:
    """Generate a synthetic DAVIS-2017-layout dataset of moving, occluding textured shapes."""
    from mvos.training.synth import generate, parse_range, parse_size

    split = generate(out, sequences, frames, parse_size(size), parse_range(objects), seed, val_fraction,
                     overwrite=overwrite, progress=not quiet)
    click.echo(f"wrote {sequences} sequences x {frames} frames to {out} "
               f"({len(split['train'])} train, {len(split['val'])} val)")


# --------------------------------------------------------------------------------------- import-backbone


@click.command("import-backbone")
@click.argument("tflite", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Where to write the key encoder's weights (a state_dict of the stride-16 MobileNetV2).")
@click.option("--check", "check_images", multiple=True, type=click.Path(path_type=Path),
              help="Images to classify with the TFLite model and the converted one (repeatable).")
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), default=None,
              help="imagenet_labels.txt, one class name per line, to print names with --check.")
@overwrite_option
def import_backbone_command(tflite: Path, out_path: Path, check_images: tuple[Path, ...], labels_path: Path | None,
                            overwrite: bool) -> None:
    """Convert a TFLite ImageNet MobileNetV2 classifier into key encoder weights."""
    from mvos.training.imagenet import check_classification, mobilenetv2_from_tflite, save_backbone

    check_output(out_path, inputs=(tflite, *check_images, labels_path), overwrite=overwrite)
    model = mobilenetv2_from_tflite(tflite)
    labels = labels_path.read_text().splitlines() if labels_path else []
    for path in check_images:
        click.echo(check_classification(model, tflite, path, labels))
    count = save_backbone(model, out_path)
    click.echo(f"wrote {out_path} ({count / 1e6:.2f}M values)")
