"""The TFLite backend under the shared `Segmenter`: same results as PyTorch, the host-side memory queue,
object padding/chunking around the decoder's fixed object count, and its errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export_fixtures import TINY_MAX_OBJECTS, TINY_SIZE, calibrated_model, tiny_export
from mvos.export.verify import run_video, synthetic_video
from mvos.runtime.errors import MvosError
from mvos.runtime.inference import FrameGeometry, Segmenter, TorchBackend
from mvos.runtime.loading import build_segmenter
from mvos.runtime.memory import FixedQueueMemory, others_mask
from mvos.runtime.settings import DEFAULT
from mvos.runtime.tflite import TFLiteBackend


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def torch_backend(model, size=TINY_SIZE) -> TorchBackend:
    backend = TorchBackend(model)
    backend.fixed_size = size  # the exported geometry
    return backend


@pytest.mark.parametrize("queue_len", [1, 2])
def test_segmenter_matches_pytorch(export_dir, model, queue_len):
    """Three objects (two in frame 0, one in frame 2: two groups, so both padding and one full call run)."""
    frames, masks = synthetic_video(TINY_SIZE, num_frames=5, seed=4)  # T=2 ring wraps from frame 2 on
    with torch.inference_mode():
        settings = DEFAULT.replace(queue_len=queue_len)
        expected = run_video(Segmenter(torch_backend(model), settings), frames, masks)
        segmenter = Segmenter(TFLiteBackend(export_dir, queue_len=queue_len), settings)
        got = run_video(segmenter, frames, masks)
    assert segmenter.object_ids == [1, 2, 3]
    assert [p.shape for p in got] == [p.shape for p in expected]
    assert got[-1].shape == (4, *frames[0].shape[:2])  # background + 3 objects at the frame's own size
    for ref, out in zip(expected, got):
        # fp32 kernels differ (XNNPACK vs oneDNN) and each frame's result feeds the next through memory:
        # differences of ~1e-4 were seen after 5 frames, an error in the graph or the queue gives ~1e-1.
        np.testing.assert_allclose(out, ref, atol=5e-4)


def test_host_owns_the_queue(export_dir, model):
    """Slot 0 keeps the reference frame; the recent slot takes every 2nd frame after it (shared FixedQueueMemory)."""
    frames, masks = synthetic_video(TINY_SIZE, num_frames=5, seed=5)
    backend = TFLiteBackend(export_dir, queue_len=2)
    segmenter = Segmenter(backend, DEFAULT.replace(queue_len=2, mem_every=2))
    keys = []
    with torch.inference_mode():
        for index, frame in enumerate(frames):
            geometry = FrameGeometry.for_frame(*frame.shape[:2], None, backend.fixed_size)
            # clone: a runner's outputs are its own buffers, overwritten by its next call
            keys.append(backend.encode_key(segmenter._prepare_frame(frame, geometry)).key[0].clone())
            given = masks.get(index)
            segmenter.step(frame, given, [int(i) for i in np.unique(given) if i] if given is not None else None)
            group = segmenter.groups[0]
            assert isinstance(group.memory, FixedQueueMemory)
            last = index - index % 2  # frames 1 and 3 only read the memory
            assert group.memory.frame_of_slot == [0, last]
            stored, _ = group.memory.read()  # T,Ck,h,w
            torch.testing.assert_close(stored[0], keys[0])
            torch.testing.assert_close(stored[1], keys[last])
    # the object given in frame 2 has its own memory whose reference slot is frame 2
    assert segmenter.groups[1].memory.frame_of_slot == [2, 4]


def test_decode_pads_and_chunks_object_groups(export_dir, model):
    """The exported decoder takes exactly 2 objects: 1 is padded with zero values, 3 run as 2 + (1 padded)."""
    backend = TFLiteBackend(export_dir, queue_len=2)
    reference = torch_backend(model)
    g = torch.Generator().manual_seed(6)
    frames = torch.randn(3, 3, *TINY_SIZE, generator=g)
    with torch.no_grad():
        query = reference.encode_key(frames[:1]).query
        memory = [reference.encode_key(frames[i:i + 1]) for i in (1, 2)]
        keys = torch.cat([f.key for f in memory])  # 2,Ck,h,w
        for n in (1, 3):  # groups of 2 (an exact fit) run in test_segmenter_matches_pytorch
            masks = torch.rand(n, 1, *TINY_SIZE, generator=g)
            others = others_mask(masks, dim=0)
            values = torch.stack([reference.encode_value(frames[i:i + 1], f, masks, others).reshape(-1, *keys.shape[2:])
                                  for i, f in zip((1, 2), memory)])  # 2,n*Cv,h,w
            expected = reference.decode(query, keys, values, n)
            got = backend.decode(query, keys, values, n)
            assert got.shape == (n, 1, *TINY_SIZE)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            # and the value encoder runs once per object
            torch.testing.assert_close(backend.encode_value(frames[1:2], memory[0], masks, others),
                                       reference.encode_value(frames[1:2], memory[0], masks, others),
                                       atol=1e-4, rtol=1e-4)


def test_frames_of_another_size_are_fitted(export_dir):
    segmenter = Segmenter(TFLiteBackend(export_dir, queue_len=1), DEFAULT.replace(queue_len=1))
    frame = np.random.default_rng(0).integers(0, 255, (50, 100, 3), dtype=np.uint8)
    mask = np.zeros((50, 100), np.uint8)
    mask[10:30, 20:60] = 1
    with torch.inference_mode():
        first = segmenter.step(frame, mask)
        second = segmenter.step(frame)
    assert first.shape == second.shape == (2, 50, 100)
    np.testing.assert_allclose(second.sum(axis=0), 1.0, atol=1e-5)


def test_build_segmenter_and_describe(export_dir):
    segmenter, warning = build_segmenter(DEFAULT.replace(backend="tflite", queue_len=2, threads=2),
                                         model_dir=export_dir)
    info = segmenter.describe()
    assert warning is None and info["size"] is None  # a fixed-size backend fits frames into its own size
    assert info["backend"] == "tflite" and info["precision"] == "fp32" and info["queue_len"] == 2
    assert info["input_size"] == list(TINY_SIZE) and info["max_objects"] == TINY_MAX_OBJECTS
    assert segmenter.backend.fixed_size == TINY_SIZE
    assert TFLiteBackend(export_dir, queue_len=1, precision="int8").describe()["precision"] == "int8"
    assert info["threads"] == 2
    # unset: as many as torch takes, not TFLite's default of one
    assert TFLiteBackend(export_dir, queue_len=1).describe()["threads"] == torch.get_num_threads()


def test_missing_pieces_are_clear_errors(export_dir, tmp_path):
    # each names the export call that adds the piece to this model's folder
    h, w = TINY_SIZE
    same_model = f"--variant mobilenetv2 --size {h}x{w} --max-objects {TINY_MAX_OBJECTS}"
    with pytest.raises(MvosError, match=re.escape(
            f"no fp32 decoder for queue length 5 (exported: 1, 2); add it with "
            f"`mvos export {same_model} --precision fp32 --queue-len 5 --out {export_dir}`")):
        TFLiteBackend(export_dir, queue_len=5)
    with pytest.raises(MvosError, match=re.escape(
            f"no fp16 export (exported: fp32, int8); add it with "
            f"`mvos export {same_model} --precision fp16 --queue-len 2 --out {export_dir}`")):
        TFLiteBackend(export_dir, queue_len=2, precision="fp16")
    with pytest.raises(MvosError, match="no manifest.json"):
        TFLiteBackend(tmp_path, queue_len=2)
    with pytest.raises(MvosError, match="1..20"):
        TFLiteBackend(export_dir, queue_len=0)
    with pytest.raises(MvosError, match="exported with top-k None"):
        build_segmenter(DEFAULT.replace(backend="tflite", top_k=5), model_dir=export_dir)
    with pytest.raises(MvosError, match="drop --variant"):
        build_segmenter(DEFAULT.replace(backend="tflite"), model_dir=export_dir, variant="mobilenetv2")


def test_damaged_exports_are_clear_errors(export_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(export_dir, folder)
    path = folder / "fp32/decoder_T2.tflite"
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(MvosError, match=r"does not match the sha256 .*: make it again with `mvos export "
                                        r"--variant mobilenetv2 .*--precision fp32 --queue-len 2 "):
        TFLiteBackend(folder, queue_len=2)
    TFLiteBackend(folder, queue_len=1)  # the other files are fine
    (folder / "fp32/decoder_T1.tflite").unlink()
    with pytest.raises(MvosError, match="missing"):
        TFLiteBackend(folder, queue_len=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(MvosError, match="format version 99"):
        TFLiteBackend(folder, queue_len=1)


def test_int8_frames_are_quantised_in_one_lookup(export_dir, model):
    """An int8 key encoder takes the frame as int8: the engine quantises it as it normalises, giving exactly what
    quantising the normalised float frame gives, padding included, and the graph takes it unchanged."""
    from mvos.runtime.tflite import nhwc_numpy

    backend = TFLiteBackend(export_dir, queue_len=2, precision="int8")
    spec = backend.key_encoder.inputs["frame"][0]
    assert backend.frame_quantisation() == backend.frame_quantisation(memorise=True) == (spec.scale, spec.zero_point)
    assert TFLiteBackend(export_dir, queue_len=2, precision="fp32").frame_quantisation() is None
    frames, _ = synthetic_video(TINY_SIZE, num_frames=1, seed=6)  # narrower than the export: padded, not resized
    geometry = FrameGeometry.for_frame(*frames[0].shape[:2], None, backend.fixed_size)
    assert geometry.resized == geometry.original != geometry.padded
    quantised = Segmenter(backend)._prepare_frame(frames[0], geometry, backend.frame_quantisation())
    normalised = Segmenter(torch_backend(model))._prepare_frame(frames[0], geometry)
    assert quantised.dtype == torch.int8 and quantised.shape == normalised.shape
    np.testing.assert_array_equal(nhwc_numpy(quantised), spec.to_graph(nhwc_numpy(normalised)))
    with torch.inference_mode():
        from_int8 = backend.encode_key(quantised).key.clone()
        from_float = backend.encode_key(normalised).key
    torch.testing.assert_close(from_int8, from_float, rtol=0, atol=0)


def test_requantisation_maps_every_step_as_dequantise_then_quantise():
    from mvos.runtime.manifest import dequantise, quantise, requantisation

    steps = np.arange(-128, 128).astype(np.int8)
    assert requantisation((0.25319337, -6), (0.25319323, -6)) is None  # one tensor calibrated in two graphs
    for source, target in [((0.2531932, -6), (0.2527640, -5)), ((0.1, 3), (0.05, -20)), ((0.1, 0), (0.1, 1))]:
        table = requantisation(source, target)
        expected = quantise(dequantise(steps, *source), *target).astype(np.int8)
        np.testing.assert_array_equal(np.take(table, steps.view(np.uint8)), expected)


def test_int8_steps_of_another_quantisation_are_mapped_to_the_inputs(export_dir):
    """An export whose graphs were calibrated apart (older exports: the decoder's memory keys on a range of their
    own) gets steps of the producer's quantisation: the runner maps them through a table, to exactly what
    dequantising and quantising again gives."""
    from mvos.runtime.manifest import Manifest, dequantise
    from mvos.runtime.tflite import SubgraphRunner

    entry = Manifest.read(export_dir).entry("int8", "decoder", 2)
    spec = next(s for s in entry.inputs if s.name == "mem_keys")
    other = (spec.scale * 1.37, spec.zero_point + 5)  # what the "producer" made the steps with
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.integers(-128, 128, s.shape).astype(np.int8) for s in entry.inputs}
    mapped = SubgraphRunner(export_dir, entry, 1, int8_sources={"mem_keys": other})
    assert mapped.tables["mem_keys"] is not None
    direct = SubgraphRunner(export_dir, entry, 1)
    by_hand = dict(feeds, mem_keys=spec.to_graph(dequantise(feeds["mem_keys"], *other)))
    np.testing.assert_array_equal(mapped(**feeds)["logits"], direct(**by_hand)["logits"])


def test_int8_features_and_memory_pass_between_graphs_as_steps(export_dir):
    """A full-integer export's features and memory stay int8 between graphs: the masks are exactly those of the
    same graphs exchanging floats (dequantised after one graph, quantised before the next), with a quarter of
    the memory."""
    from mvos.runtime.tflite import SubgraphRunner

    steps = TFLiteBackend(export_dir, queue_len=2, precision="int8")
    floats = TFLiteBackend(export_dir, queue_len=2, precision="int8")
    for graph in ("key_encoder", "value_encoder", "decoder"):
        runner = getattr(floats, graph)
        setattr(floats, graph, SubgraphRunner(export_dir, runner.entry, floats.threads))
    frames, masks = synthetic_video(TINY_SIZE, num_frames=8, seed=3)  # 3 objects in 2 groups: padded, chunked
    settings = DEFAULT.replace(queue_len=2, mem_every=3)
    results = {}
    for name, backend in (("steps", steps), ("floats", floats)):
        segmenter = Segmenter(backend, settings)
        with torch.inference_mode():
            results[name] = run_video(segmenter, frames, masks)
        keys, values = segmenter.groups[0].memory.read()
        results[name + " memory"] = (keys.dtype, values.dtype, segmenter.memory_nbytes())
    for a, b in zip(results["steps"], results["floats"]):
        np.testing.assert_array_equal(a, b)
    # nothing was quantised on the host but the value encoder's masks: no float scratch for the other inputs
    assert [set(r.scratch) for r in (steps.key_encoder, steps.value_encoder, steps.decoder)] == [
        set(), {"mask", "others"}, set()]
    assert results["steps memory"][:2] == (torch.int8, torch.int8)
    assert results["floats memory"][:2] == (torch.float32, torch.float32)
    assert results["floats memory"][2] == 4 * results["steps memory"][2]


def test_memory_precision_runs_its_encoders_on_memorised_frames_only(export_dir):
    """`memory_precision="fp32"` on an int8 export: the fp32 encoders run on exactly the frames the engine
    memorises (given masks, then each memory's interval), their outputs on the int8 graphs' grids, so the memory
    keeps int8 steps; slot 0 (the given masks' frame, the same inputs either way) is then fp32's memory of the
    same frame rounded to those steps."""
    from mvos.runtime.manifest import quantise

    frames, masks = synthetic_video(TINY_SIZE, num_frames=8, seed=3)  # objects given on frames 0 and 2
    settings = DEFAULT.replace(queue_len=2, mem_every=3)
    mixed = TFLiteBackend(export_dir, queue_len=2, precision="int8", memory_precision="fp32")
    exact = TFLiteBackend(export_dir, queue_len=2, precision="fp32")
    # memorised frames come as the fp32 key encoder takes them: floats, not the int8 key encoder's steps (whose
    # rounding alone moves this small random model's keys by up to 12 steps)
    assert mixed.frame_quantisation() is not None and mixed.frame_quantisation(memorise=True) is None
    encoders = mixed.memory_encoders
    calls = {"fp32 key": [], "int8 key": [], "fp32 value": []}  # the frame of each call
    frame_types = {"fp32 key": set(), "int8 key": set()}
    segmenter = Segmenter(mixed, settings)

    def counted(runner, name):
        def run(**inputs):
            calls[name].append(segmenter.frame_index)
            if "frame" in inputs:
                frame_types[name].add(inputs["frame"].dtype)
            return runner(**inputs)
        return run

    encoders.key_encoder = counted(encoders.key_encoder, "fp32 key")
    encoders.value_encoder = counted(encoders.value_encoder, "fp32 value")
    mixed.key_encoder = counted(mixed.key_encoder, "int8 key")
    assert mixed.value_encoder is None  # not even loaded: every value comes from the fp32 value encoder
    reference = Segmenter(exact, settings)
    with torch.inference_mode():
        run_video(segmenter, frames, masks)
        run_video(reference, frames, masks)
    # group 1 (frame 0) memorises 0, 3, 6; group 2 (frame 2) memorises 2, 5
    assert calls["fp32 key"] == [0, 2, 3, 5, 6]
    assert calls["int8 key"] == [1, 4, 7]
    assert frame_types == {"fp32 key": {np.dtype(np.float32)}, "int8 key": {np.dtype(np.int8)}}
    assert set(calls["fp32 value"]) == {0, 2, 3, 5, 6}
    assert all(m.dtype == torch.int8 for group in segmenter.groups for m in group.memory.read())
    # Frame 0's objects (group 1): nothing predicted yet, so the same masks either way. (Group 2's "others" on
    # frame 2 are group 1's predictions, by the int8 decoder here and the fp32 one there.)
    keys, values = segmenter.groups[0].memory.read()
    ref_keys, ref_values = reference.groups[0].memory.read()
    key_grid = mixed.manifest.entry("int8", "key_encoder").outputs[0]
    value_grid = next(s for s in mixed.manifest.entry("int8", "value_encoder").outputs if s.name == "value")
    for got, ref, grid in ((keys[0], ref_keys[0], key_grid), (values[0], ref_values[0], value_grid)):
        np.testing.assert_array_equal(got.numpy(), quantise(ref.numpy(), grid.scale, grid.zero_point))


def test_memory_precision_errors(export_dir):
    with pytest.raises(MvosError, match=re.escape(
            f"no fp16 key_encoder for the memory (exported: fp32, int8); add it with `mvos export")):
        TFLiteBackend(export_dir, queue_len=2, precision="int8", memory_precision="fp16")
    with pytest.raises(MvosError, match="less exact than precision fp32"):
        DEFAULT.replace(backend="tflite", memory_precision="int8")
    with pytest.raises(MvosError, match="for the TFLite backend"):
        DEFAULT.replace(memory_precision="fp32")
    same = TFLiteBackend(export_dir, queue_len=2, precision="int8", memory_precision="int8")
    assert same.memory_encoders is None and same.describe()["memory_precision"] == "int8"
    # int8 steps into a float graph (a frame prepared for the int8 key encoder) would be taken as values
    mixed = TFLiteBackend(export_dir, queue_len=2, precision="int8", memory_precision="fp32")
    steps = torch.zeros(1, 3, *mixed.fixed_size, dtype=torch.int8)
    with pytest.raises(MvosError, match="input frame takes float32 values, got int8 steps"):
        mixed.encode_key(steps, memorise=True)
