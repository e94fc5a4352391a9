"""`mvos export`: subgraph files, manifest, parity with PyTorch, re-runs that add pieces, and the error cases.

One tiny export (64x64, T=1 and 2, fp32 + int8, 2 objects) is shared by this module and test_tflite_runtime.py
through `export_fixtures.tiny_export`; conversion dominates the run time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvos.export.cli import report
from mvos.export.exporter import ensure_exported
from mvos.export.manifest import weights_sha256
from mvos.export.ops import inspect_ops
from mvos.export.subgraphs import graph_specs, parse_size, sample_inputs
from export_fixtures import (TINY_MAX_OBJECTS, TINY_PRECISIONS, TINY_QUEUE_LENS, TINY_SIZE, TINY_VARIANT,
                                 calibrated_model, tiny_export)
from mvos.export.verify import mask_agreement, run_graph
from mvos.runtime.checkpoint import save_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.loading import RANDOM, load_model
from mvos.runtime.manifest import Manifest, graph_path
from mvos.runtime.memory import parse_queue_lens, protocol_description
from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD, STRIDE, build_model
from mvos.runtime.settings import DEFAULT


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def manifest(export_dir) -> Manifest:
    return Manifest.read(export_dir)


@pytest.fixture(scope="module")
def model():
    return calibrated_model()




# --------------------------------------------------------------------------------------------- manifest


def test_manifest_describes_the_export(manifest, model):
    h, w = TINY_SIZE
    assert manifest.variant == TINY_VARIANT
    assert manifest.input_size == [h, w] and manifest.feature_size == [h // STRIDE, w // STRIDE]
    assert manifest.stride == STRIDE
    assert manifest.queue_lengths() == list(TINY_QUEUE_LENS)
    assert manifest.precisions() == list(TINY_PRECISIONS)
    assert manifest.max_objects == TINY_MAX_OBJECTS and manifest.top_k is None
    assert manifest.normalisation["mean"] == list(IMAGENET_MEAN)
    assert manifest.normalisation["std"] == list(IMAGENET_STD)
    assert manifest.mvos_version
    assert manifest.weights_sha256 == weights_sha256(model)
    assert manifest.failures == []
    assert manifest.memory == protocol_description(DEFAULT.mem_every)  # generated from the protocol, not written as prose


def test_manifest_json_round_trips_and_summarises(export_dir, manifest):
    data = json.loads((export_dir / "manifest.json").read_text())
    assert Manifest.from_json(data) == manifest and manifest.to_json() == data
    assert data["format_version"] == 2 and data["precisions"] == list(TINY_PRECISIONS)
    assert data["queue_lengths"] == list(TINY_QUEUE_LENS)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=1), "format version 1"),
    (lambda d: d.update(format="other"), "not a mobilevos TFLite manifest"),
    (lambda d: d.pop("input_size"), "missing field 'input_size'"),
    (lambda d: d.update(input_size=[64]), "input_size must be 2 positive integers"),
    (lambda d: d["files"][0].update(subgraph="encoder"), "unknown subgraph 'encoder'"),
    (lambda d: d["files"][0].update(path="fp32/other.tflite"), "should be at fp32/key_encoder.tflite"),
    (lambda d: d["files"][-1].update(queue_len=21), "queue_len must be in 1..20"),
    (lambda d: d["files"][0]["inputs"][0].update(shape=[1, 3, 0, 64]), "has shape"),
    (lambda d: d["files"][0].pop("sha256"), "sha256"),
])
def test_bad_manifests_are_refused_with_the_first_problem(export_dir, edit, message):
    data = json.loads((export_dir / "manifest.json").read_text())
    edit(data)
    with pytest.raises(MvosError, match=message):
        Manifest.from_json(data)


def test_one_function_names_graph_files():
    assert graph_path("fp16", "decoder", 5) == "fp16/decoder_T5.tflite"
    assert graph_path("int8", "key_encoder") == "int8/key_encoder.tflite"


def test_files_exist_with_their_sha256(export_dir, manifest):
    paths = set()
    for entry in manifest.files:
        path = export_dir / entry.path
        content = path.read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry.sha256
        assert len(content) == entry.bytes
        paths.add(entry.path)
    expected = {f"{p}/{name}.tflite" for p in TINY_PRECISIONS
                for name in ["key_encoder", "value_encoder", *(f"decoder_T{t}" for t in TINY_QUEUE_LENS)]}
    assert paths == expected
    # int8 weights make smaller files than fp32
    assert (export_dir / "int8/key_encoder.tflite").stat().st_size < 0.5 * (export_dir / "fp32/key_encoder.tflite").stat().st_size


def test_signatures_have_named_inputs_and_outputs(manifest):
    h, w = TINY_SIZE
    fh, fw = h // STRIDE, w // STRIDE
    n, cv = TINY_MAX_OBJECTS, manifest.value_dim
    key = manifest.entry("fp32", "key_encoder")
    assert [(i.name, i.shape) for i in key.inputs] == [("frame", [1, h, w, 3])]  # NHWC, the frame's own layout
    assert [(o.name, o.shape) for o in key.outputs][:3] == [("key", [1, manifest.key_dim, fh, fw]),
                                                            ("value", [1, fh, fw, cv]), ("f16", [1, fh, fw, 96])]
    assert [o.name for o in key.outputs] == ["key", "value", "f16", "f8", "f4"]
    value = manifest.entry("fp32", "value_encoder")
    assert [(i.name, i.shape) for i in value.inputs][1:] == [("mask", [1, h, w, 1]), ("others", [1, h, w, 1])]
    assert [(o.name, o.shape) for o in value.outputs] == [("value", [1, fh, fw, cv])]  # what a memory slot holds
    for t in TINY_QUEUE_LENS:
        decoder = manifest.entry("fp32", "decoder", t)
        shapes = decoder.shapes()
        assert shapes["mem_keys"] == [t, manifest.key_dim, fh, fw]
        assert shapes["mem_values"] == [t, fh, fw, n * cv]  # position-major, as the read's second product takes
        assert shapes["logits"] == [n, h, w, 1] and [o.name for o in decoder.outputs] == ["logits"]
        assert all(o.signature_output and o.dtype == "float32" and o.meaning for o in decoder.outputs)
    for entry in manifest.files:  # full-integer int8: int8 edges with their quantisation
        for spec in entry.inputs + entry.outputs:
            assert (spec.dtype == "int8") == (entry.precision == "int8")
            assert (spec.scale is not None) == (spec.dtype == "int8")


def test_ops_are_gpu_delegate_friendly(export_dir, manifest):
    for entry in manifest.files:
        assert entry.ops["flex"] == []
        if entry.precision == "fp32":
            assert entry.ops["gpu_fallback"] == {}, entry.path
    ops = inspect_ops((export_dir / "fp32/decoder_T2.tflite").read_bytes())
    assert ops.counts["BATCH_MATMUL"] >= 1  # the affinity, rank-4 (no rank-3 one: gpu_fallback is empty)
    assert "BROADCAST_TO" not in ops.counts  # the ASPP workaround
    # BatchNorm folded into the convolutions: an unfolded one would leave MUL/ADD pairs per conv
    encoder = inspect_ops((export_dir / "fp32/key_encoder.tflite").read_bytes()).counts
    assert "MUL" not in encoder and encoder["CONV_2D"] + encoder["DEPTHWISE_CONV_2D"] > 20


# ----------------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def references(model) -> dict:
    """Per graph key: random inputs and the unmodified model's outputs (PyTorch eager is the slow part)."""
    out = {}
    for spec in graph_specs(model, TINY_SIZE, list(TINY_QUEUE_LENS), TINY_MAX_OBJECTS):
        inputs = sample_inputs(spec, model, seed=1)
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in spec.module(**inputs).items()}
        out[spec.key] = (spec, {k: v.numpy() for k, v in inputs.items()}, expected)
    return out


def run_entry(export_dir: Path, entry, inputs: dict) -> dict:
    """Float outputs of an exported file by meaning (quantised in and out for int8, as the runtime does)."""
    return run_graph((export_dir / entry.path).read_bytes(), entry, inputs)


def test_each_fp32_subgraph_matches_pytorch(export_dir, manifest, references):
    """Recomputed here (not read from the manifest) against the unmodified model's stage methods."""
    for spec, inputs, expected in references.values():
        entry = manifest.entry("fp32", spec.subgraph, spec.queue_len)
        got = run_entry(export_dir, entry, inputs)
        assert set(got) == set(expected)
        for name, value in got.items():
            rel = np.abs(value - expected[name]).max() / np.abs(expected[name]).max()
            assert rel < 1e-4, f"{entry.path} {name}: {rel:.2e}"


def test_full_integer_int8_follows_pytorch_on_the_frames_it_was_calibrated_for(export_dir, manifest, model):
    """int8 is calibrated on the tiny clip: on that clip's real inputs each graph stays close to PyTorch
    (on inputs from elsewhere, like random noise, its activation ranges do not hold)."""
    from mvos.export.calibrate import calibration_inputs

    from export_fixtures import tiny_clip

    recorded = calibration_inputs(model, TINY_SIZE, list(TINY_QUEUE_LENS), TINY_MAX_OBJECTS, [tiny_clip()])
    specs = {s.key: s for s in graph_specs(model, TINY_SIZE, list(TINY_QUEUE_LENS), TINY_MAX_OBJECTS)}
    for key, samples in recorded.items():
        spec, inputs = specs[key], samples[len(samples) // 2]
        entry = manifest.entry("int8", spec.subgraph, spec.queue_len)
        assert all(i.dtype == "int8" for i in entry.inputs)  # weights and activations: full integer
        with torch.no_grad():
            expected = spec.module(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        for name, value in run_entry(export_dir, entry, inputs).items():
            # Relative RMS error: this random model calibrated on 8 tiny frames quantises far worse than trained
            # weights on real video (docs/benchmarks.md), but a wrong scale or layout gives errors near 1 or above.
            rel = np.linalg.norm(value - expected[name].numpy()) / np.linalg.norm(expected[name].numpy())
            assert 0 < rel < 0.5, f"{entry.path} {name}: {rel:.2e}"  # really quantised, and close


def test_int8_keeps_the_memory_read_and_relus_in_float(export_dir, manifest):
    """The read's affinities in int8 lose what decides the read (and cost a quantise/dequantise round trip of the
    HW x M affinity); an int8 RELU is not an XNNPACK op and split each graph around a builtin kernel."""
    from mvos.export.ops import op_outputs

    decoder = op_outputs((export_dir / manifest.entry("int8", "decoder", 2).path).read_bytes())
    read = [(name, kind) for name, tensor, kind in decoder
            if "MemoryRead" in tensor and name != "QUANTIZE"]  # the readout is quantised on its way out
    assert {"BATCH_MATMUL", "SOFTMAX", "CONCATENATION"} <= {name for name, _ in read}  # keys extended by |mk|^2
    assert all(kind == "FLOAT32" for _, kind in read), read
    assert any(kind == "INT8" for name, _, kind in decoder if name == "CONV_2D")  # the rest is int8
    for entry in (e for e in manifest.files if e.precision == "int8"):
        relus = [kind for name, _, kind in op_outputs((export_dir / entry.path).read_bytes()) if name == "RELU"]
        assert all(kind == "FLOAT32" for kind in relus), entry.path


@pytest.fixture(scope="module")
def float_value_export(export_dir, tmp_path_factory):
    """The tiny export copied and made again with `int8_float=("value_encoder",)`; with a hard link kept to the
    copy's full-integer value encoder from before (the export must replace that file, not write through it)."""
    from export_fixtures import tiny_clip

    folder = tmp_path_factory.mktemp("float_value") / "export"
    shutil.copytree(export_dir, folder)
    kept = folder.parent / "kept_value_encoder.tflite"
    os.link(folder / "int8/value_encoder.tflite", kept)
    before = hashlib.sha256(kept.read_bytes()).hexdigest()
    result = ensure_exported(folder, calibrated_model(), "calibrated test model", TINY_SIZE, TINY_QUEUE_LENS,
                             TINY_PRECISIONS, TINY_MAX_OBJECTS, progress=False, clips=[tiny_clip()],
                             int8_float=("value_encoder",))
    return folder, result, kept, before


def test_int8_float_makes_the_value_encoder_again_in_float_between_the_same_int8_edges(float_value_export,
                                                                                        manifest):
    folder, result, kept, before = float_value_export
    assert [e.path for e in result.added] == ["int8/value_encoder.tflite"]  # the other graphs were kept
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == before  # the file it replaced is untouched
    made = Manifest.read(folder)
    entry, full = made.entry("int8", "value_encoder"), manifest.entry("int8", "value_encoder")
    assert [(s.name, s.dtype, s.scale, s.zero_point) for s in entry.inputs + entry.outputs] == \
        [(s.name, s.dtype, s.scale, s.zero_point) for s in full.inputs + full.outputs]
    assert entry.ops["int8_mac_share"] == 0.0 and full.ops["int8_mac_share"] == 1.0
    assert 0.5 < made.entry("int8", "decoder", 2).ops["int8_mac_share"] < 1.0  # the memory read in float
    assert {(c.precision, c.queue_len) for c in result.end_to_end} == {("int8", 1), ("int8", 2)}  # checked again


def test_int8_value_encoder_in_float_gives_fp32_outputs_rounded_to_its_int8_grid(float_value_export, model):
    from mvos.export.calibrate import calibration_inputs
    from mvos.export.ops import op_outputs
    from mvos.runtime.manifest import dequantise, quantise

    from export_fixtures import tiny_clip

    folder = float_value_export[0]
    made = Manifest.read(folder)
    entry, fp32 = made.entry("int8", "value_encoder"), made.entry("fp32", "value_encoder")
    ops = op_outputs((folder / entry.path).read_bytes())
    assert [name for name, _, _ in ops[:len(entry.inputs)]] == ["DEQUANTIZE"] * len(entry.inputs)
    assert [name for name, _, _ in ops[-len(entry.outputs):]] == ["QUANTIZE"] * len(entry.outputs)
    assert all(kind == "FLOAT32" for _, _, kind in ops[len(entry.inputs):-len(entry.outputs)])

    inputs = calibration_inputs(model, TINY_SIZE, [2], TINY_MAX_OBJECTS, [tiny_clip()])["value_encoder"][1]
    on_grid = {spec.name: dequantise(quantise(inputs[spec.name], spec.scale, spec.zero_point), spec.scale,
                                     spec.zero_point) for spec in entry.inputs}  # what the int8 graph receives
    expected = run_entry(folder, fp32, on_grid)
    got = run_entry(folder, entry, inputs)
    for spec in entry.outputs:
        steps = np.abs(got[spec.name] - expected[spec.name]) / spec.scale
        assert steps.max() <= 0.5 + 1e-3, (spec.name, steps.max())  # rounded to the nearest step, nothing else


def test_int8_float_refuses_unknown_graphs(export_dir):
    with pytest.raises(MvosError, match="unknown graph key for --int8-float"):
        ensure_exported(export_dir, calibrated_model(), "calibrated test model", TINY_SIZE, TINY_QUEUE_LENS,
                        TINY_PRECISIONS, TINY_MAX_OBJECTS, progress=False, int8_float=("key",))


def test_int8_inputs_made_by_another_graph_take_its_quantisation(manifest):
    """Features and memory go from the graph that makes them to the one that takes them as int8 steps: each taker
    input has its producer's scale and zero point, so the steps need no mapping (the decoder's memory keys, a
    subset of the frames, once calibrated to a range of their own)."""
    from mvos.runtime.manifest import PRODUCERS, requantisation

    checked = 0
    for entry in (e for e in manifest.files if e.precision == "int8"):
        for spec in entry.inputs:
            source = PRODUCERS.get((entry.subgraph, spec.name))
            if source is None:
                continue
            made = next(o for o in manifest.entry("int8", source[0]).outputs if o.name == source[1])
            assert requantisation((made.scale, made.zero_point), (spec.scale, spec.zero_point)) is None, \
                (entry.path, spec.name)
            checked += 1
    assert checked == 1 + 2 * 6  # value encoder's f16; the decoders' (T=1, 2) six inputs


def test_calibration_of_a_one_object_clip_covers_the_others_input(model):
    """"others" is all zero with one object; calibrated on that alone, int8 got a near-zero scale that XNNPACK
    refused to load (the shipped weights' value encoder)."""
    from mvos.export.calibrate import Clip, calibration_inputs

    from export_fixtures import tiny_clip

    clip = tiny_clip()
    one = Clip(clip.name, clip.frames, (clip.mask == clip.mask.max()).astype(np.uint8))
    recorded = calibration_inputs(model, TINY_SIZE, [2], TINY_MAX_OBJECTS, [one])["value_encoder"]
    assert max(float(r["mask"].max()) for r in recorded) > 0.5
    assert max(float(r["others"].max()) for r in recorded) > 0.5


def test_int8_ranges_cover_inputs_that_only_some_calibration_calls_reach(export_dir, manifest, model):
    """Calls alternate a mask with an empty one (one object: "others" is empty, then swapped). A moving-average
    range (ai-edge-quantizer's default) settled near half the mask's range and clipped every object pixel."""
    from mvos.export.calibrate import calibration_inputs
    from mvos.export.convert import calibrated_ranges

    from export_fixtures import tiny_clip

    recorded = calibration_inputs(model, TINY_SIZE, [2], TINY_MAX_OBJECTS, [tiny_clip()])["value_encoder"]
    full = recorded[0]
    alternating = [dict(full, mask=full["mask"] * (i % 2 == 0)) for i in range(40)]
    fp32 = (export_dir / manifest.entry("fp32", "value_encoder", None).path).read_bytes()
    ranges = calibrated_ranges(fp32, alternating)
    mask_range = next(r for name, r in ranges.items() if name.endswith("_mask"))
    assert float(np.max(mask_range["max"])) == pytest.approx(float(full["mask"].max()), rel=1e-6)


def test_memory_slots_matter_to_the_decoder(export_dir, manifest, references):
    """A decoder that ignored the memory state (or one slot of it) would pass a loose parity check."""
    _, inputs, _ = references["decoder_T2"]
    entry = manifest.entry("fp32", "decoder", 2)
    base = run_entry(export_dir, entry, inputs)
    changed = dict(inputs, mem_values=inputs["mem_values"].copy())
    changed["mem_values"][1] = 0  # the recent slot only
    other = run_entry(export_dir, entry, changed)
    assert np.abs(base["logits"] - other["logits"]).max() > 1e-3


def test_end_to_end_verification_is_recorded(manifest):
    # int8 is checked twice: as it is, and reading a memory the fp32 encoders made (`--memory-precision fp32`)
    engines = [(p, None) for p in TINY_PRECISIONS] + [("int8", "fp32")]
    assert {(c.precision, c.memory_precision, c.queue_len, c.clip) for c in manifest.end_to_end} == {
        (p, m, t, clip) for p, m in engines for t in TINY_QUEUE_LENS for clip in ("synthetic", "tiny-clip")}
    real = [c for c in manifest.end_to_end if c.clip == "tiny-clip"]
    assert all(c.frames == 8 and c.objects == 2 for c in real)
    assert all(c.mean_iou == 1.0 for c in real if c.precision == "fp32")
    # one step at a time (PyTorch's masks memorised), fp32 agrees; int8 is measured
    assert all(c.one_step_iou > 0.99 for c in manifest.end_to_end if c.precision == "fp32")
    assert all(0.0 <= c.one_step_iou <= 1.0 for c in manifest.end_to_end)
    assert all(0.0 <= c.one_step_band_flips <= 1.0 for c in manifest.end_to_end)
    checks = {(c.precision, c.queue_len): c for c in manifest.end_to_end if c.clip == "synthetic"}
    for t in TINY_QUEUE_LENS:
        fp32 = checks[("fp32", t)]
        assert fp32.mean_iou >= 0.99 and fp32.max_prob_diff < 1e-3
        assert fp32.tie_fraction < 0.2 and fp32.objects == 3
        assert 0.0 <= checks[("int8", t)].mean_iou <= 1.0


def test_one_step_check_memorises_the_reference_masks(export_dir, manifest, model):
    """The one-step run must feed the exported value encoder PyTorch's masks, not its own: replaying masks that
    mark nothing has to change what the graphs segment after the first frame."""
    from mvos.export.verify import MaskReplay, MaskRecorder, run_video
    from mvos.runtime.inference import Segmenter, TorchBackend
    from mvos.runtime.tflite import TFLiteBackend

    from export_fixtures import tiny_clip

    clip, settings = tiny_clip(), DEFAULT.replace(queue_len=2)
    tflite = TFLiteBackend(export_dir, queue_len=2, precision="fp32")
    reference = TorchBackend(model)
    reference.fixed_size = tflite.fixed_size
    recorder = MaskRecorder(reference)
    expected = run_video(Segmenter(recorder, settings), clip.frames, {0: clip.mask})
    replayed = run_video(Segmenter(MaskReplay(tflite, recorder.calls), settings), clip.frames, {0: clip.mask})
    assert mask_agreement(expected, replayed)["mean_iou"] > 0.99
    emptied = [(m * 0, o * 0) for m, o in recorder.calls]
    blind = run_video(Segmenter(MaskReplay(tflite, emptied), settings), clip.frames, {0: clip.mask})
    assert max(np.abs(a - b).max() for a, b in zip(expected[1:], blind[1:])) > 0.01


def test_mask_agreement_ignores_only_ties():
    ref = np.zeros((2, 2, 2), np.float32)
    ref[0] = [[0.9, 0.5], [0.1, 0.1]]
    ref[1] = 1 - ref[0]  # pixel (0,1) is a tie
    got = ref.copy()
    got[:, 0, 1] = [0.4, 0.6]  # flips the tie: ignored
    assert mask_agreement([ref], [got])["mean_iou"] == 1.0
    got[:, 1, 0] = [0.95, 0.05]  # flips a decisive object pixel: counted
    result = mask_agreement([ref], [got])
    assert result["mean_iou"] == pytest.approx(0.5) and result["tie_fraction"] == pytest.approx(0.25)


def test_band_stats_count_flips_against_the_references_unsure_band():
    """One object, four pixels: two the reference is sure of (0.95 object, 0.05), two unsure (0.6, 0.3). Flipping
    one unsure and one sure pixel: half the flips inside the band, as many flips as the band has pixels."""
    from mvos.export.verify import band_stats

    obj = np.array([[0.95, 0.05], [0.6, 0.3]], np.float32)
    ref = np.stack([1 - obj, obj])
    got = ref.copy()
    got[:, 1, 0] = [0.9, 0.1]  # unsure object pixel -> background
    got[:, 0, 1] = [0.1, 0.9]  # sure background pixel -> object
    stats = band_stats([ref], [got])
    assert stats["object_pixels"] == 2 and stats["band_over_area"] == 1.0
    assert stats["differ_over_area"] == 1.0 and stats["differ_in_band"] == 0.5 and stats["differ_over_band"] == 1.0
    assert band_stats([ref], [ref])["differ_over_band"] == 0.0


# ---------------------------------------------------------------------------------------- re-runs, errors


def test_rerun_adds_missing_pieces_only(export_dir, model, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(export_dir, folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.tflite")}
    same = ensure_exported(folder, model, "m", TINY_SIZE, [2], ["fp32"], TINY_MAX_OBJECTS, progress=False)
    assert same.added == []
    # fp16 comes from the existing fp32 flatbuffers: no conversion; only what was asked for is added, verified
    more = ensure_exported(folder, model, "m", TINY_SIZE, [2], ["fp16"], TINY_MAX_OBJECTS, progress=False)
    assert sorted(e.path for e in more.added) == sorted(
        f"fp16/{n}.tflite" for n in ["key_encoder", "value_encoder", "decoder_T2"])
    assert [(c.precision, c.memory_precision, c.queue_len) for c in more.end_to_end] == [
        ("fp16", None, 2), ("fp16", "fp32", 2)]
    manifest = Manifest.read(folder)
    assert manifest.precisions() == ["fp32", "fp16", "int8"]
    for path, content in before.items():
        assert (folder / path).read_bytes() == content
    assert hashlib.sha256((folder / "fp16/decoder_T2.tflite").read_bytes()).hexdigest() == \
        manifest.entry("fp16", "decoder", 2).sha256


def test_foreign_manifest_is_refused(export_dir, model, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(export_dir, folder)
    text = (folder / "manifest.json").read_text()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.decoder.pred.bias += 1e-3  # any change to the weights makes another model
    with pytest.raises(MvosError, match="another model.*weights"):
        ensure_exported(folder, other, "m", TINY_SIZE, [2], ["fp32"], TINY_MAX_OBJECTS, progress=False)
    with pytest.raises(MvosError, match="max objects"):
        ensure_exported(folder, model, "m", TINY_SIZE, [2], ["fp32"], 1, progress=False)
    with pytest.raises(MvosError, match="input size"):
        ensure_exported(folder, model, "m", (32, 64), [2], ["fp32"], TINY_MAX_OBJECTS, progress=False)
    with pytest.raises(MvosError, match="top_k"):
        ensure_exported(folder, model, "m", TINY_SIZE, [2], ["fp32"], TINY_MAX_OBJECTS, top_k=5, progress=False)
    assert (folder / "manifest.json").read_text() == text


def test_folder_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MvosError, match="not an export folder"):
        ensure_exported(tmp_path, calibrated_model(), "m", TINY_SIZE, [2], ["fp32"], progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs,message", [
    ({"size": (60, 64)}, "multiples of 16"),
    ({"queue_lens": [0]}, "1..20"),
    ({"queue_lens": [21]}, "1..20"),
    ({"precisions": ["fp8"]}, "unknown precision"),
    ({"max_objects": 0}, "max objects"),
])
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, message):
    args = {"size": TINY_SIZE, "queue_lens": [2], "precisions": ["fp32"], **kwargs}
    with pytest.raises(MvosError, match=message):
        ensure_exported(tmp_path / "out", calibrated_model(), "m", args.pop("size"), progress=False, **args)
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "student.pt"
    save_checkpoint(path, build_model("mobilenetv2-noaspp"))
    with pytest.raises(MvosError, match="mobilenetv2-noaspp"):
        load_model("mobilenetv2", path)


def test_cli_errors_are_one_line(tmp_path):
    from mvos.cli import cli

    runner = CliRunner()
    for args, message in [(["--size", "480x860"], "multiples of 16"), (["--queue-len", "1..21"], "1..20"),
                          (["--variant", "resnet99"], "unknown variant")]:
        result = runner.invoke(cli, ["export", "--weights", RANDOM, *args, "--out", str(tmp_path / "x")])
        assert isinstance(result.exception, MvosError) and message in str(result.exception)
        assert "\n" not in str(result.exception)


def test_cli_refuses_an_export_of_another_model(export_dir):
    from mvos.cli import cli

    result = CliRunner().invoke(cli, ["export", "--weights", RANDOM, "--size", "64x64", "--queue-len", "1,2",
                                      "--precision", "fp32,int8", "--max-objects", "2", "--out", str(export_dir)])
    # the fixture's model is calibrated, the CLI's is a seeded random init: another model
    assert isinstance(result.exception, MvosError) and "another model" in str(result.exception)


@pytest.mark.slow  # ~20 s: one fp32 and one int8 decoder made again
def test_a_rerun_makes_again_the_files_that_are_gone_or_changed(export_dir, manifest, tmp_path):
    from export_fixtures import tiny_clip

    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    damaged = folder / "fp32/decoder_T2.tflite"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")
    (folder / "int8/decoder_T1.tflite").unlink()
    messages = []
    # asks only for what is there: the two broken files are made again all the same
    result = ensure_exported(folder, calibrated_model(), "calibrated test model", TINY_SIZE, [1], ["fp32"],
                             TINY_MAX_OBJECTS, verify=False, progress=False, clips=[tiny_clip()],
                             on_message=messages.append)
    assert sorted(e.path for e in result.added) == ["fp32/decoder_T2.tflite", "int8/decoder_T1.tflite"]
    assert any("int8/decoder_T1.tflite is listed in the manifest but missing" in m for m in messages)
    assert any("fp32/decoder_T2.tflite does not match the sha256" in m for m in messages)
    remade = Manifest.read(folder)
    assert remade.entry("fp32", "decoder", 2).sha256 == manifest.entry("fp32", "decoder", 2).sha256  # as before
    for entry in remade.files:
        assert hashlib.sha256((folder / entry.path).read_bytes()).hexdigest() == entry.sha256
    from mvos.runtime.tflite import TFLiteBackend
    TFLiteBackend(folder, queue_len=1, precision="int8")


def test_export_command_names_the_same_model(manifest, export_dir, float_value_export):
    """The call the runtime's errors name to add a missing piece: this model's options, its weights when they are
    not the shipped ones, and its int8 graphs made as they are."""
    base = f"mvos export --variant {TINY_VARIANT} --size 64x64 --max-objects {TINY_MAX_OBJECTS}"
    assert manifest.export_command(export_dir, "int8", 3) == \
        f"{base} --precision int8 --queue-len 3 --out {export_dir}"
    checkpoint = copy.copy(manifest)
    checkpoint.weights_source, checkpoint.top_k = "checkpoint soup.pth", 5
    assert checkpoint.export_command("d", "fp32", 2) == \
        f"{base} --top-k 5 --weights soup.pth --precision fp32 --queue-len 2 --out d"
    random = copy.copy(manifest)
    random.weights_source = load_model(TINY_VARIANT, RANDOM).source
    assert " --weights random " in random.export_command("d", "fp32", 2)
    float_value = Manifest.read(float_value_export[0])
    assert " --int8-float value_encoder " in float_value.export_command("d", "int8", 3)
    assert "--int8-float" not in float_value.export_command("d", "fp16", 3)  # only int8 graphs are made so


@pytest.mark.slow  # ~20 s: one decoder converted through the CLI
def test_the_export_command_a_missing_piece_names_adds_it(export_dir, tmp_path, monkeypatch):
    from mvos.cli import cli
    from mvos.runtime.tflite import TFLiteBackend

    # the fixture's export, as if made from a checkpoint the CLI can load again
    monkeypatch.chdir(tmp_path)
    save_checkpoint("tiny.pth", calibrated_model())
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    manifest_path = folder / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["weights"]["source"] = "checkpoint tiny.pth"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(MvosError) as missing:
        TFLiteBackend(folder, queue_len=3)
    command = str(missing.value).split("`")[1]
    assert command.startswith("mvos export ") and " --weights tiny.pth " in command
    added = CliRunner().invoke(cli, [*command.split()[1:], "--no-verify"])
    assert added.exit_code == 0, added.output
    assert TFLiteBackend(folder, queue_len=3).queue_len == 3
    assert Manifest.read(folder).queue_lens("fp32") == [1, 2, 3]


def test_report_lists_files_parity_and_end_to_end(export_dir, manifest):
    text = report(manifest, {"int8/decoder_T2.tflite"}, export_dir)
    lines = text.splitlines()
    row = next(line for line in lines if "decoder_T2" in line and "int8" in line)
    assert row.startswith("*") and "none" in row  # written by this run; no GPU fallback
    key = next(line for line in lines if "key_encoder" in line and "int8" in line)
    assert key.split()[4] == "100%"  # the int8 share of its MACs
    assert sum("decoder_T" in line for line in lines) == len(TINY_PRECISIONS) * len(TINY_QUEUE_LENS)
    assert any(line.strip().startswith("fp32") and "mean IoU 1.0000" in line for line in lines)


def test_size_and_queue_len_parsing():
    assert parse_size("480x864") == (480, 864) and parse_size("64") == (64, 64)
    with pytest.raises(MvosError):
        parse_size("480x")
    assert parse_queue_lens(("2",)) == [2]
    assert parse_queue_lens(("1..3", "5,7")) == [1, 2, 3, 5, 7]
    with pytest.raises(MvosError):
        parse_queue_lens(("1..x",))


@pytest.mark.slow  # ~15 s: one conversion
def test_top_k_decoder_converts_and_matches_pytorch():
    """Top-k through topk's indices converts (topk with unused indices lowered to an unloadable sort)."""
    from mvos.export.convert import convert_graph

    model = calibrated_model()
    spec = graph_specs(model, TINY_SIZE, [2], max_objects=1, subgraphs=("decoder",), top_k=5)[0]
    content = convert_graph(spec)
    ops = inspect_ops(content)
    assert not ops.flex and not any(name.startswith("STABLEHLO") for name in ops.counts)
    inputs = sample_inputs(spec, model)
    with torch.no_grad():
        expected = spec.module(**inputs)
    from ai_edge_litert.interpreter import Interpreter

    got = Interpreter(model_content=content).get_signature_runner()(**{k: v.numpy() for k, v in inputs.items()})
    index = spec.outputs.index("logits")
    logits = got["logits"] if "logits" in got else got[f"output_{index}"]
    np.testing.assert_allclose(logits, expected["logits"].numpy(), atol=1e-3)
    untopped = graph_specs(model, TINY_SIZE, [2], max_objects=1, subgraphs=("decoder",))[0]
    with torch.no_grad():
        assert not torch.allclose(untopped.module(**inputs)["logits"], expected["logits"])  # top-k changes the read


def test_calibrated_model_returns_independent_copies():
    """Tests edit their model (top-k above): the cached model the shared export's parity tests read must not change."""
    edited = calibrated_model()
    with torch.no_grad():
        next(edited.parameters()).add_(1.0)
    fresh = calibrated_model()
    assert not torch.equal(next(fresh.parameters()), next(edited.parameters()))
