"""`mvos export`: TFLite subgraphs with an explicit memory state, a manifest, and parity checks."""

from __future__ import annotations

from pathlib import Path

import click

from mvos.runtime.memory import MAX_QUEUE_LEN
from mvos.runtime.settings import DEFAULT, DEFAULT_EXPORT_SIZE


@click.command("export")
@click.option("--variant", default=None, help="Architecture (default mobilenetv2, or the one in --weights).")
@click.option("--weights", default=None,
              help="A mobilevos checkpoint, or `random` (timing); default: the variant's shipped weights.")
@click.option("--size", "size_text", default=DEFAULT_EXPORT_SIZE, show_default=True,
              help="Input size HxW, multiples of 16 (frames are fitted inside and padded).")
@click.option("--queue-len", "queue_lens", multiple=True, default=(str(DEFAULT.queue_len),), show_default=True,
              help=f"Memory slots T of the decoder: N, a list N,M or a range A..B (1..{MAX_QUEUE_LEN}); repeatable.")
@click.option("--precision", "precision_text", default="fp32", show_default=True,
              help="Comma-separated: fp32, fp16 (fp16 weights), int8 (int8 weights and activations, "
                   "calibrated on real frames; GPTQ-rounded weights and corrected biases).")
@click.option("--calibration", "calibration", multiple=True, metavar="VIDEO:MASK",
              help="A real clip and its first-frame mask to calibrate int8 on and to check every precision "
                   "against PyTorch with (repeatable; default: the examples/ clips of a source checkout).")
@click.option("--int8-float", "int8_float_text", default="", metavar="GRAPHS",
              help="Comma-separated graphs (key_encoder, value_encoder, decoder) whose int8 version computes in "
                   "float between int8 inputs and outputs: value_encoder makes int8 follow fp32's masks more "
                   "closely at the value encoder's fp32 speed (docs/benchmarks.md).")
@click.option("--max-objects", type=int, default=1, show_default=True,
              help="Objects per decoder call (more are run in chunks, fewer zero-padded).")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Top-k memory read (off by default).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Export folder (manifest.json, <precision>/*.tflite); re-running adds missing pieces and "
                   "makes again listed files that are gone or changed.")
@click.option("--no-verify", is_flag=True, help="Skip the parity checks against PyTorch.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for verification.")
@click.option("--overwrite", is_flag=True,
              help="Export everything anew and replace --out once complete (without it, an export of the same "
                   "model is added to and any other non-empty folder is refused).")
def export_command(variant: str | None, weights: str | None, size_text: str, queue_lens: tuple[str, ...],
                   precision_text: str, calibration: tuple[str, ...], int8_float_text: str, max_objects: int,
                   top_k: int | None,
                   out_dir: Path, no_verify: bool, threads: int | None, overwrite: bool) -> None:
    """Export key encoder, value encoder and decoder (per queue length) as TFLite files, verify them against
    PyTorch and write manifest.json for the runtime, the device benchmark and the Android app."""
    from mvos.export.calibrate import read_clip, video_and_mask
    from mvos.export.exporter import ensure_exported
    from mvos.export.subgraphs import parse_size
    from mvos.runtime.io import check_output
    from mvos.runtime.loading import RANDOM, load_model
    from mvos.runtime.manifest import MANIFEST_NAME
    from mvos.runtime.memory import parse_queue_lens

    check_output(out_dir, inputs=(None if weights in (None, RANDOM) else weights,), overwrite=overwrite,
                 merges=(Path(out_dir) / MANIFEST_NAME).is_file())
    size = parse_size(size_text)
    lens = parse_queue_lens(queue_lens)
    precisions = [p.strip() for p in precision_text.split(",") if p.strip()]
    clips = [read_clip(*video_and_mask(text)) for text in calibration] or None
    loaded = load_model(variant, weights)
    if loaded.warning:
        click.echo(loaded.warning, err=True)
    result = ensure_exported(out_dir, loaded.model, loaded.source, size, lens, precisions, max_objects,
                             verify=not no_verify, threads=threads, top_k=top_k,
                             on_message=lambda message: click.echo(message, err=True), overwrite=overwrite,
                             clips=clips, int8_float=[g.strip() for g in int8_float_text.split(",") if g.strip()])
    click.echo(report(result.manifest, {e.path for e in result.added}, out_dir))


def report(manifest, added: set[str], out_dir: Path) -> str:
    """The files of an export with size, parity, the share of MACs in int8 and GPU-delegate fallbacks; end-to-end
    checks; failures."""
    lines = [f"{manifest.variant} {manifest.input_size[0]}x{manifest.input_size[1]}, "
             f"max objects {manifest.max_objects}, weights {manifest.weights_source} -> {out_dir}",
             f"{'':2}{'precision':<10}{'graph':<15}{'MB':>7}  {'max |diff| (rel.)':<20}{'int8 MACs':<11}gpu fallback"]
    for e in manifest.files:
        rel = e.parity.get("max_rel_diff")
        parity = f"{max(rel.values()):.1e}" if rel else "not verified"
        share = e.ops.get("int8_mac_share")  # absent in manifests written before it was recorded
        share = "" if share is None else f"{share:.0%}"
        fallback = ", ".join(e.ops.get("gpu_fallback", [])) or "none"
        lines.append(f"{'*' if e.path in added else ' ':<2}{e.precision:<10}{e.key:<15}"
                     f"{e.bytes / 1e6:>7.2f}  {parity:<20}{share:<11}{fallback}")
    if manifest.end_to_end:
        lines.append("end to end (TFLite runtime vs fp32 PyTorch, masks; one step: from PyTorch's memory masks):")
        for c in manifest.end_to_end:
            one_step = "" if c.one_step_iou is None else f"one step {c.one_step_iou:.4f}  "
            if c.one_step_band_flips is not None:
                one_step += f"unsure band flipped {c.one_step_band_flips:.3f}  "
            lines.append(f"  {c.engine:<18} T={c.queue_len:<3} {c.clip:<12} mean IoU {c.mean_iou:.4f}  "
                         f"{one_step}max |prob diff| {c.max_prob_diff:.1e}  ties {c.tie_fraction:.0%}")
    for f in manifest.failures:
        lines.append(f"not converted: {f.precision} {f.subgraph}"
                     f"{'' if f.queue_len is None else ' T=' + str(f.queue_len)}: {f.error}")
    lines.append("(* = written by this run)" if added else "nothing to do: every requested piece was already there")
    return "\n".join(lines)
