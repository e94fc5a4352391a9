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

from mvos.export.convert import ConversionError, convert_graph, quantize
from mvos.export.manifest import (check_same_model, file_entry, identity, new_manifest, put_entry, weights_sha256,
                                  write_manifest)
from mvos.export.ops import inspect_ops
from mvos.export.subgraphs import SUBGRAPHS, GraphSpec, check_queue_len, check_size, graph_specs, \
    sample_inputs
from mvos.export.verify import (FP32_MAX_REL_DIFF, FP32_MIN_IOU, end_to_end, interpreter_outputs, output_parity,
                                signature_details)
from mvos.runtime.errors import MvosError
from mvos.runtime.io import staged_directory
from mvos.runtime.model import VARIANTS, MobileVOS
from mvos.runtime.tflite import MANIFEST_NAME, PRECISIONS, load_manifest, manifest_entry

MAX_EXPORT_OBJECTS = 16
RANDOM_INIT_SEED = 0  # a variant without weights is initialised from this seed, so re-runs are the same model


@dataclass
class ExportResult:
    model_dir: Path
    manifest: dict
    added: list[dict] = field(default_factory=list)  # entries written by this call
    failures: list[dict] = field(default_factory=list)  # this call's conversion failures
    end_to_end: list[dict] = field(default_factory=list)  # this call's end-to-end checks


def resolve_model(model: MobileVOS | str | Path, top_k: int | None = None,
                  expect_variant: str | None = None) -> tuple[MobileVOS, str]:
    """A model and a description of where its weights came from: a MobileVOS, a checkpoint path, or a variant
    name (random init from a fixed seed; EfficientNet-Lite0 gets its ImageNet encoder, as `mvos segment`).
    `expect_variant`: MvosError when a checkpoint holds another variant."""
    from mvos.runtime.options import load_model

    if isinstance(model, MobileVOS):
        source = "in-memory model"
    elif isinstance(model, str) and model in VARIANTS:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)
            model = load_model(variant=model, quiet=True)
        source = f"random init (torch seed {RANDOM_INIT_SEED}); ImageNet key encoder where the variant ships one"
    elif isinstance(model, (str, Path)) and (Path(model).suffix in (".pt", ".pth", ".ckpt") or Path(model).is_file()):
        path = Path(model)
        model = load_model(variant=expect_variant, weights=path, quiet=True)
        source = f"checkpoint {path.name}"
    else:
        raise MvosError(f"unknown variant {model!r}; choose one of {', '.join(VARIANTS)} or pass a checkpoint")
    if expect_variant is not None and model.variant != expect_variant:
        raise MvosError(f"the model is a {model.variant!r} model, not {expect_variant!r}")
    if top_k is not None:
        model.config = type(model.config).from_dict({**model.config.to_dict(), "top_k": top_k})
    return model.eval(), source


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


def _existing_manifest(model_dir: Path) -> dict | None:
    if (model_dir / MANIFEST_NAME).is_file():
        return load_manifest(model_dir)
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        raise MvosError(f"{model_dir} exists and is not an export folder (no {MANIFEST_NAME}): pass --overwrite "
                        f"to replace it, or choose another folder")
    return None


def ensure_exported(model_dir: str | Path, model: MobileVOS | str | Path, size: tuple[int, int],
                    queue_lens: Iterable[int] = (2,), precisions: Iterable[str] = ("fp32",), max_objects: int = 1,
                    *, verify: bool = True, threads: int | None = None, top_k: int | None = None,
                    expect_variant: str | None = None, progress: bool = True,
                    on_message: Callable[[str], None] | None = None, overwrite: bool = False) -> ExportResult:
    """Ensure `model_dir` holds key encoder, value encoder and decoder_T{t} for every precision and queue
    length asked for, for this model at this size; convert only the missing pieces. Returns the manifest and
    what this call added. Files land in model_dir/<precision>/{key_encoder,value_encoder,decoder_T<t>}.tflite.
    MvosError for bad arguments, a folder holding another model, an fp32 conversion failure or a failed fp32
    verification (the folder is then left as it was). `overwrite`: export everything anew, whatever the folder
    holds, and replace it once the new export is complete."""
    model_dir = Path(model_dir)
    size, queue_lens, precisions, max_objects = check_request(size, queue_lens, precisions, max_objects)
    model, source = resolve_model(model, top_k, expect_variant)
    existing = None if overwrite else _existing_manifest(model_dir)
    manifest = new_manifest(model, source, size, max_objects, weights_sha256(model))
    if existing is not None:
        check_same_model(existing, identity(manifest), model_dir)
        manifest = existing

    wanted = [(p, s, t) for p in precisions for s in SUBGRAPHS for t in (queue_lens if s == "decoder" else [None])]
    missing = [(p, s, t) for p, s, t in wanted if manifest_entry(manifest, p, s, t) is None]
    result = ExportResult(model_dir, manifest)
    if not missing and existing is not None:
        return result

    say = on_message or (lambda message: None)
    specs = {spec.key: spec for spec in graph_specs(model, size, queue_lens, max_objects)}
    with staged_directory(model_dir) as staging:
        _link_existing(model_dir, staging, existing)
        keys = list(dict.fromkeys(_spec_key(s, t) for _, s, t in missing))
        bar = tqdm(keys, desc="export", unit="graph", disable=not progress, dynamic_ncols=True)
        for key in bar:
            bar.set_description(f"export {key}")
            needed = [p for p, s, t in missing if _spec_key(s, t) == key]
            _export_graph(specs[key], model, needed, manifest, staging, verify, threads, result, say)
        bar.close()
        write_manifest(staging, manifest)
        if verify:
            _verify_end_to_end(model, staging, manifest, missing, threads, result, say, progress)
            write_manifest(staging, manifest)
    return result


def _spec_key(subgraph: str, queue_len: int | None) -> str:
    return subgraph if queue_len is None else f"decoder_T{queue_len}"


def _link_existing(model_dir: Path, staging: Path, existing: dict | None) -> None:
    """The files of the current export, hard-linked (copied across filesystems) into the staging folder."""
    if existing is None:
        return
    for precision, files in existing.get("models", {}).items():
        entries = [files.get(s) for s in ("key_encoder", "value_encoder")] + list(files.get("decoders", {}).values())
        for entry in filter(None, entries):
            source, target = model_dir / entry["path"], staging / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)


def _fp32_bytes(spec: GraphSpec, manifest: dict, staging: Path) -> bytes:
    """The fp32 flatbuffer: the one already exported (same model, checked by identity) or a new conversion."""
    entry = manifest_entry(manifest, "fp32", spec.subgraph, spec.queue_len)
    if entry is not None and (staging / entry["path"]).is_file():
        return (staging / entry["path"]).read_bytes()
    return convert_graph(spec)


def _export_graph(spec: GraphSpec, model: MobileVOS, precisions: list[str], manifest: dict,
                  staging: Path, verify: bool, threads: int | None, result: ExportResult, say) -> None:
    fp32 = _fp32_bytes(spec, manifest, staging)  # raises ConversionError (an MvosError): nothing can follow
    inputs = sample_inputs(spec, model) if verify else None
    expected = None
    if verify:
        with torch.no_grad():
            expected = spec.module(**inputs)
    for precision in precisions:
        try:
            content = quantize(fp32, precision, spec.key)
            entry = _entry(spec, precision, content)
        except ConversionError as exc:
            if precision == "fp32":
                raise
            failure = {"precision": precision, "subgraph": spec.subgraph, "queue_len": spec.queue_len,
                       "error": str(exc)}
            result.failures.append(failure)
            _record_failure(manifest, failure)
            say(f"{precision} {spec.key}: not converted: {exc}")
            continue
        if verify:
            outputs = interpreter_outputs(content, {k: v.numpy() for k, v in inputs.items()}, threads)
            rename = {o["signature_output"]: o["name"] for o in entry["outputs"]}
            entry["parity"] = output_parity(outputs, expected, rename)
            worst = max(entry["parity"]["max_rel_diff"].values())
            if precision == "fp32" and worst > FP32_MAX_REL_DIFF:
                raise MvosError(f"verification failed: fp32 {spec.key} differs from PyTorch by {worst:.2e} "
                                f"(relative; the limit is {FP32_MAX_REL_DIFF:.0e})")
        target = staging / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        put_entry(manifest, entry)
        manifest["failures"] = [f for f in manifest["failures"]
                                if (f["precision"], f["subgraph"], f["queue_len"]) !=
                                (precision, spec.subgraph, spec.queue_len)]
        result.added.append(entry)


def _entry(spec: GraphSpec, precision: str, content: bytes) -> dict:
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
    return file_entry(spec, precision, f"{precision}/{spec.filename}", content, signature, ops.to_dict())


def _record_failure(manifest: dict, failure: dict) -> None:
    same = (failure["precision"], failure["subgraph"], failure["queue_len"])
    manifest["failures"] = [f for f in manifest["failures"] if (f["precision"], f["subgraph"], f["queue_len"]) != same]
    manifest["failures"].append(failure)


def _verify_end_to_end(model: MobileVOS, staging: Path, manifest: dict, missing: list, threads: int | None,
                       result: ExportResult, say, progress: bool) -> None:
    """Every precision/queue length touched by this call: TFLite runtime vs PyTorch on a generated video."""
    touched = sorted({(p, t) for p, s, t in missing if s == "decoder"} |
                     {(p, t) for p, s, _ in missing if s != "decoder" for t in
                      (int(x) for x in manifest["models"].get(p, {}).get("decoders", {}))})
    touched = [(p, t) for p, t in touched if p in manifest["precisions"] and t in manifest["queue_lengths"]
               and manifest_entry(manifest, p, "decoder", t) is not None]
    checks = manifest["verification"]["end_to_end"]
    references: dict = {}
    for precision, queue_len in tqdm(touched, desc="verify end to end", unit="run", disable=not progress,
                                     dynamic_ncols=True):
        check = end_to_end(model, staging, precision, queue_len, threads, reference_cache=references)
        checks[:] = [c for c in checks if (c["precision"], c["queue_len"]) != (precision, queue_len)] + [check]
        result.end_to_end.append(check)
        if precision == "fp32" and check["mean_iou"] < FP32_MIN_IOU:
            raise MvosError(f"verification failed: fp32 T={queue_len} masks agree with PyTorch at mean IoU "
                            f"{check['mean_iou']:.4f} < {FP32_MIN_IOU}")
    checks.sort(key=lambda c: (PRECISIONS.index(c["precision"]), c["queue_len"]))
