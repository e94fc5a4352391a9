"""`ensure_exported`: make an export folder hold the requested pieces, converting only what is missing.

The folder is staged (existing files hard-linked, new ones written, the manifest last) and renamed into place
only when everything asked for converted and fp32 passed verification, so readers never see a half-written
export. Failures of fp16/int8 are recorded in the manifest (`failures`) rather than raised.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mvos.export.calibrate import CALIBRATION_FRAMES, Clip, calibration_inputs, example_clips
from mvos.export.convert import ConversionError, convert_graph, quantize_fp16, quantize_static
from mvos.export.manifest import check_same_model, file_entry, new_manifest, weights_sha256
from mvos.export.ops import inspect_ops
from mvos.export.subgraphs import GraphSpec, check_size, graph_specs, sample_inputs
from mvos.export.verify import FP32_MAX_REL_DIFF, FP32_MIN_IOU, end_to_end, output_parity, run_graph, signature_details
from mvos.runtime.errors import MvosError
from mvos.runtime.io import staged_directory
from mvos.runtime.manifest import (MANIFEST_NAME, PRODUCERS, SUBGRAPHS, ConversionFailure, GraphFile, Manifest,
                                   graph_key)
from mvos.runtime.memory import check_queue_len
from mvos.runtime.model import MobileVOS
from mvos.runtime.settings import PRECISIONS, memory_engines

MAX_EXPORT_OBJECTS = 16


@dataclass
class ExportResult:
    model_dir: Path
    manifest: Manifest
    added: list[GraphFile] = field(default_factory=list)  # entries written by this call
    failures: list[ConversionFailure] = field(default_factory=list)  # this call's conversion failures
    end_to_end: list = field(default_factory=list)  # this call's end-to-end checks


def check_request(size, queue_lens: Iterable[int], precisions: Iterable[str], max_objects: int):
    size = check_size(size)
    queue_lens = sorted({check_queue_len(int(t)) for t in queue_lens})
    if not queue_lens:
        raise MvosError("no queue length given")
    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise MvosError(f"unknown precision {', '.join(unknown) or '(none)'}; choose from {', '.join(PRECISIONS)}")
    if not 1 <= int(max_objects) <= MAX_EXPORT_OBJECTS:
        raise MvosError(f"max objects must be in 1..{MAX_EXPORT_OBJECTS}, got {max_objects}")
    return size, queue_lens, [p for p in PRECISIONS if p in precisions], int(max_objects)


def check_int8_float(graphs: Iterable[str]) -> tuple[str, ...]:
    """The graphs whose int8 version computes in float between int8 edges (`--int8-float`)."""
    graphs = tuple(dict.fromkeys(graphs))
    unknown = [g for g in graphs if g not in SUBGRAPHS]
    if unknown:
        raise MvosError(f"unknown graph {', '.join(unknown)} for --int8-float; choose from {', '.join(SUBGRAPHS)}")
    return graphs


def _made_as_asked(entry: GraphFile | None, int8_float: bool) -> bool:
    """The graph is exported, and an int8 one computes in float inside exactly where `--int8-float` asks."""
    return entry is not None and (entry.precision != "int8" or entry.float_inside == int8_float)


def _existing_manifest(model_dir: Path) -> Manifest | None:
    if (model_dir / MANIFEST_NAME).is_file():
        return Manifest.read(model_dir)
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        raise MvosError(f"{model_dir} exists and is not an export folder (no {MANIFEST_NAME}): pass --overwrite "
                        f"to replace it, or choose another folder")
    return None


def ensure_exported(model_dir: str | Path, model: MobileVOS, source: str, size: tuple[int, int],
                    queue_lens: Iterable[int], precisions: Iterable[str] = ("fp32",), max_objects: int = 1,
                    *, verify: bool = True, threads: int | None = None, top_k: int | None = None,
                    progress: bool = True, on_message: Callable[[str], None] | None = None,
                    overwrite: bool = False, clips: list[Clip] | None = None,
                    int8_float: Iterable[str] = ()) -> ExportResult:
    """Ensure `model_dir` holds key encoder, value encoder and decoder_T{t} for every precision and queue
    length asked for, for this model at this size; convert only the missing pieces. Returns the manifest and
    what this call added. Files land where `mvos.runtime.manifest.graph_path` says. `source` says where the
    weights came from; `top_k` is baked into the decoders. `clips`: real videos to calibrate int8 on (the
    examples of a source checkout when int8 is asked for and none are given) and to check every precision
    against fp32 PyTorch on. `int8_float`: subgraphs whose int8 version is their fp32 graph behind the int8
    edges (an int8 graph made the other way is made again).
    MvosError for bad arguments, a folder holding another model, an fp32 conversion failure or a failed fp32
    verification (the folder is then left as it was). `overwrite`: export everything anew, whatever the folder
    holds, and replace it once the new export is complete."""
    model_dir = Path(model_dir)
    size, queue_lens, precisions, max_objects = check_request(size, queue_lens, precisions, max_objects)
    int8_float = check_int8_float(int8_float)
    model = model.eval()
    existing = None if overwrite else _existing_manifest(model_dir)
    manifest = new_manifest(model, source, size, max_objects, weights_sha256(model), top_k)
    say = on_message or (lambda message: None)
    wanted = [(p, s, t) for p in precisions for s in SUBGRAPHS for t in (queue_lens if s == "decoder" else [None])]
    if existing is not None:
        check_same_model(existing, manifest, model_dir)
        manifest = existing
        # A listed file that is gone or changed is made again, asked for or not: linking it on would fail or
        # keep a graph the manifest does not describe.
        for entry in list(manifest.files):
            problem = entry.file_problem(model_dir)
            if problem:
                say(f"{entry.path} {problem}: making it again")
                manifest.files.remove(entry)
                wanted.append((entry.precision, entry.subgraph, entry.queue_len))
    missing = [(p, s, t) for p, s, t in dict.fromkeys(wanted)
               if not _made_as_asked(manifest.entry(p, s, t), s in int8_float)]
    result = ExportResult(model_dir, manifest)
    if not missing and existing is not None:
        return result

    queue_lens = sorted({*queue_lens, *(t for _, _, t in missing if t is not None)})
    specs = {spec.key: spec for spec in graph_specs(model, size, queue_lens, max_objects, top_k=top_k)}
    calibration: dict = {}
    if any(p == "int8" for p, _, _ in missing):
        clips = clips if clips is not None else example_clips()
        say(f"calibrating int8 on {', '.join(c.name for c in clips)} ({CALIBRATION_FRAMES} frames each)")
        calibration = calibration_inputs(model, size, queue_lens, max_objects, clips, top_k)
    with staged_directory(model_dir) as staging:
        _link_existing(model_dir, staging, existing)
        keys = list(dict.fromkeys(graph_key(s, t) for _, s, t in missing))
        bar = tqdm(keys, desc="export", unit="graph", disable=not progress, dynamic_ncols=True)
        for key in bar:
            bar.set_description(f"export {key}")
            needed = [p for p, s, t in missing if graph_key(s, t) == key]
            _export_graph(specs[key], model, needed, manifest, staging, verify, threads, result, say,
                          calibration.get(key), specs[key].subgraph in int8_float)
        bar.close()
        manifest.write(staging)
        if verify:
            _verify_end_to_end(model, staging, manifest, missing, threads, result, progress, clips)
            manifest.write(staging)
    return result


def _link_existing(model_dir: Path, staging: Path, existing: Manifest | None) -> None:
    """The files of the current export, hard-linked (copied across filesystems) into the staging folder."""
    if existing is None:
        return
    for entry in existing.files:
        source, target = model_dir / entry.path, staging / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _fp32_bytes(spec: GraphSpec, manifest: Manifest, staging: Path) -> bytes:
    """The fp32 flatbuffer: the one already exported (same model, checked by identity) or a new conversion."""
    entry = manifest.entry("fp32", spec.subgraph, spec.queue_len)
    if entry is not None and (staging / entry.path).is_file():
        return (staging / entry.path).read_bytes()
    return convert_graph(spec)


def _export_graph(spec: GraphSpec, model: MobileVOS, precisions: list[str], manifest: Manifest, staging: Path,
                  verify: bool, threads: int | None, result: ExportResult, say,
                  calibration: list[dict] | None, int8_float: bool) -> None:
    fp32 = _fp32_bytes(spec, manifest, staging)  # raises ConversionError (an MvosError): nothing can follow
    # Parity on real inputs where there are some (int8 ranges were calibrated on them), else on random ones.
    inputs = None
    if verify:
        inputs = ({k: torch.from_numpy(v) for k, v in calibration[len(calibration) // 2].items()} if calibration
                  else sample_inputs(spec, model))
    expected = None
    if verify:
        with torch.no_grad():
            expected = spec.module(**inputs)
    for precision in precisions:
        try:
            content = {"fp32": lambda: fp32, "fp16": lambda: quantize_fp16(fp32, spec.key),
                       "int8": lambda: quantize_static(fp32, calibration, spec.key,
                                                       input_ranges=_producer_ranges(spec, manifest),
                                                       float_inside=int8_float)}[precision]()
            entry = _entry(spec, precision, content)
        except ConversionError as exc:
            if precision == "fp32":
                raise
            failure = ConversionFailure(precision, spec.subgraph, spec.queue_len, str(exc))
            result.failures.append(failure)
            manifest.record_failure(failure)
            say(f"{precision} {spec.key}: not converted: {exc}")
            continue
        if verify:
            outputs = run_graph(content, entry, {k: v.numpy() for k, v in inputs.items()}, threads)
            entry.parity = output_parity(outputs, expected)
            worst = max(entry.parity["max_rel_diff"].values())
            if precision == "fp32" and worst > FP32_MAX_REL_DIFF:
                raise MvosError(f"verification failed: fp32 {spec.key} differs from PyTorch by {worst:.2e} "
                                f"(relative; the limit is {FP32_MAX_REL_DIFF:.0e})")
        target = staging / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a hard link to the current export's file, made again: never write through it
        target.write_bytes(content)
        manifest.put(entry)
        result.added.append(entry)


def _producer_ranges(spec: GraphSpec, manifest: Manifest) -> dict[str, tuple[float, float]]:
    """The int8 range of each input another graph makes, as that graph's int8 output holds it (the producers
    come first in SUBGRAPHS order): the steps then pass between the graphs as they are, with no mapping. A
    producer's range covers its taker's: the taker only ever receives what it made."""
    ranges = {}
    for (taker, name), (graph, output) in PRODUCERS.items():
        producer = manifest.entry("int8", graph)
        if taker != spec.subgraph or producer is None:
            continue
        made = next(o for o in producer.outputs if o.name == output)
        if made.dtype == "int8":
            ranges[name] = made.int8_range()
    return ranges


def _entry(spec: GraphSpec, precision: str, content: bytes) -> GraphFile:
    """Manifest entry of a converted file; ConversionError when the interpreter cannot load it."""
    try:
        signature = signature_details(content)
    except (RuntimeError, ValueError) as exc:
        ops = inspect_ops(content)
        odd = [name for name in ops.counts if name.startswith("STABLEHLO_")]
        hint = ""
        if "STABLEHLO_SORT" in odd:
            hint = ("; torch.topk whose indices are unused lowers to STABLEHLO_SORT: the memory read must gather "
                    "the k-th value through topk's indices")
        raise ConversionError(f"{spec.key} ({precision}): the interpreter cannot load the converted graph: "
                              f"{str(exc).splitlines()[0]}{hint}") from None
    ops = inspect_ops(content)
    if ops.flex:
        raise ConversionError(f"{spec.key} ({precision}): needs Flex (TensorFlow) ops {sorted(set(ops.flex))}")
    return file_entry(spec, precision, content, signature, ops.to_dict())


def _verify_end_to_end(model: MobileVOS, staging: Path, manifest: Manifest, missing: list, threads: int | None,
                       result: ExportResult, progress: bool, clips: list[Clip] | None) -> None:
    """Every precision/queue length touched by this call: TFLite runtime vs PyTorch on a generated video (fp32
    must agree), and on the real clips (what quantisation costs; recorded, not enforced)."""
    complete = manifest.precisions()
    touched = sorted({(p, t) for p, s, t in missing if s == "decoder"} |
                     {(p, t) for p, s, _ in missing if s != "decoder" for t in manifest.queue_lens(p)})
    touched = [(p, t) for p, t in touched if p in complete and manifest.entry(p, "decoder", t) is not None]
    # A check with another precision's memory encoders runs again when those encoders were made anew.
    memory_remade = bool(complete) and any(p == complete[0] and s != "decoder" for p, s, _ in missing)
    runs = [(p, m, t) for p, m in memory_engines(complete) for t in manifest.queue_lens(p)
            if (p, t) in touched or (m is not None and memory_remade)]
    references: dict = {}
    for precision, memory, queue_len in tqdm(runs, desc="verify end to end", unit="run", disable=not progress,
                                             dynamic_ncols=True):
        check = end_to_end(model, staging, precision, queue_len, manifest.top_k, threads, reference_cache=references,
                           memory_precision=memory)
        manifest.record_check(check)
        result.end_to_end.append(check)
        if precision == "fp32" and check.mean_iou < FP32_MIN_IOU:
            raise MvosError(f"verification failed: fp32 T={queue_len} masks agree with PyTorch at mean IoU "
                            f"{check.mean_iou:.4f} < {FP32_MIN_IOU}")
        for clip in clips or []:
            check = end_to_end(model, staging, precision, queue_len, manifest.top_k, threads,
                               reference_cache=references, clip=clip, memory_precision=memory)
            manifest.record_check(check)
            result.end_to_end.append(check)
