import numpy as np
import pytest
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import FrameGeometry, Segmenter, Timing, TorchBackend, label_map, track
from mvos.runtime.memory import (FixedQueueMemory, UnboundedMemory, memorised, others_mask, parse_queue_lens,
                                 protocol_description, slot_frames, write_slot)
from mvos.runtime.model import build_model
from mvos.runtime.settings import DEFAULT, InferenceSettings

from helpers import moving_scene


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("mobilenetv2-noaspp").eval()


def engine(model, **settings) -> Segmenter:
    return Segmenter(TorchBackend(model), DEFAULT.replace(**settings))


def test_fixed_queue_slots_and_ring_order():
    memory = FixedQueueMemory(queue_len=3)
    for frame in range(6):
        memory.write(torch.full((2, 1, 1), float(frame)), torch.full((4, 1, 1), float(frame)), frame)
        if frame == 0:
            assert memory.frame_of_slot == [0, 0, 0]  # every slot starts as the reference frame
    keys, values = memory.read()
    assert keys.shape == (3, 2, 1, 1) and values.shape == (3, 4, 1, 1)
    assert memory.frame_of_slot == [0, 5, 4]  # slot 0 kept, slots 1..2 overwritten round-robin
    assert keys[:, 0, 0, 0].tolist() == [0.0, 5.0, 4.0]


def test_queue_length_one_keeps_only_the_reference():
    memory = FixedQueueMemory(queue_len=1)
    assert memory.wants(0)
    memory.write(torch.zeros(2, 1, 1), torch.zeros(4, 1, 1), 0)
    assert not memory.wants(1)
    assert memory.frames() == [0]


def test_queue_length_is_validated():
    for bad in (0, 21):
        with pytest.raises(MvosError, match="1..20"):
            FixedQueueMemory(bad)


def test_unbounded_memory_keeps_every_kth_and_the_last_frame():
    memory = UnboundedMemory(every=5)
    for frame in range(13):
        memory.write(torch.zeros(2, 1, 1), torch.zeros(4, 1, 1), frame)
    assert memory.frames() == [0, 5, 10, 12]
    assert memory.read()[0].shape[0] == 4


@pytest.mark.parametrize("mem_every", [1, 5])
def test_t2_memory_holds_first_and_last_memorised_frame_and_stays_constant_over_200_frames(model, mem_every):
    frames, masks = moving_scene(num_frames=200, height=32, width=48, objects=1)
    segmenter = engine(model, queue_len=2, size=None, mem_every=mem_every)
    sizes = []
    for t, frame in enumerate(frames):
        segmenter.step(frame, masks[0] if t == 0 else None)
        memory = segmenter.groups[0].memory
        last = t - t % mem_every  # after step t the memory is {0, last} for frame t+1
        assert memory.frames() == ([0, last] if last > 0 else [0])
        sizes.append(segmenter.memory_nbytes())
    assert len(set(sizes)) == 1


def test_frames_between_memorised_ones_run_no_value_encoder(model):
    """Every 4th frame memorised, counted from where each object was given (frames 0 and 3): the value encoder
    runs on frames 0, 4, 8, 12 for the first object and 3, 7, 11 for the second, and on no other frame."""
    frames, masks = moving_scene(num_frames=13, height=32, width=48, objects=2)
    segmenter = engine(model, queue_len=3, size=None, mem_every=4)
    encoded, encode_value = [], segmenter.backend.encode_value

    def counted_encode_value(*args):
        encoded.append(segmenter.frame_index)
        return encode_value(*args)

    segmenter.backend.encode_value = counted_encode_value
    for t, frame in enumerate(frames):
        if t == 0:
            segmenter.step(frame, (masks[0] == 1).astype(np.uint8))
        else:
            segmenter.step(frame, masks[3] if t == 3 else None, [2] if t == 3 else None)
    assert encoded == [0, 3, 4, 7, 8, 11, 12]
    assert [group.memory.frame_of_slot for group in segmenter.groups] == [[0, 12, 8], [3, 7, 11]]


def test_memorised_frames_are_counted_from_the_reference():
    assert [f for f in range(3, 15) if memorised(f, 3, 5)] == [3, 8, 13]
    assert [f for f in range(4) if memorised(f, 0, 1)] == [0, 1, 2, 3]
    memory = FixedQueueMemory(queue_len=2, every=3)
    memory.write(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), 2)
    assert [f for f in range(3, 10) if memory.wants(f)] == [5, 8]
    for bad in (0, -1, 1.5):
        with pytest.raises(MvosError, match="mem_every"):
            FixedQueueMemory(queue_len=2, every=bad)


def test_unbounded_memory_grows(model):
    frames, masks = moving_scene(num_frames=12, height=32, width=48, objects=1)
    segmenter = engine(model, memory="unbounded", mem_every=5, size=None)
    sizes = [segmenter.step(f, masks[0] if t == 0 else None) is not None and segmenter.memory_nbytes()
             for t, f in enumerate(frames)]
    assert sizes[-1] > sizes[0]


def test_probabilities_sum_to_one_at_the_original_size(model):
    frames, masks = moving_scene(num_frames=3, height=50, width=70, objects=2)
    segmenter = engine(model, size=40)
    for t, frame in enumerate(frames):
        probs = segmenter.step(frame, masks[0] if t == 0 else None)
        assert probs.shape == (3, 50, 70)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert segmenter.object_ids == [1, 2]


def test_given_mask_is_reproduced_on_its_frame(model):
    frames, masks = moving_scene(num_frames=1, height=48, width=64, objects=3)
    segmenter = engine(model, size=None)
    result = segmenter.index_map(segmenter.step(frames[0], masks[0]))
    np.testing.assert_array_equal(result, masks[0])


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_label_map_is_argmax_with_its_tie_rule(model, channels):
    rng = np.random.default_rng(channels)
    probs = rng.integers(0, 4, (channels, 30, 40)).astype(np.float32)  # few values: many ties
    ids = [5, 255, 3, 200, 0][:channels]  # any uint8 ids, the background's too (the arithmetic wraps)
    np.testing.assert_array_equal(label_map(probs, ids), np.array(ids)[probs.argmax(axis=0)])
    segmenter = Segmenter(TorchBackend(model))
    segmenter.object_ids = [7, 3, 9, 4][: channels - 1]  # ids are looked up, not assumed 1..N
    lookup = np.array([0] + segmenter.object_ids)
    np.testing.assert_array_equal(segmenter.index_map(probs), lookup[probs.argmax(axis=0)])


def area_weights(source: int, target: int) -> torch.Tensor:
    """target x source: the share of each output cell [o*s, (o+1)*s) that source pixel [i, i+1) covers."""
    scale = source / target
    starts = torch.arange(target, dtype=torch.float64)[:, None] * scale
    pixels = torch.arange(source, dtype=torch.float64)[None]
    overlap = (torch.minimum(starts + scale, pixels + 1) - torch.maximum(starts, pixels)).clamp(min=0)
    return overlap / scale


@pytest.mark.parametrize("fixed_size", [None, (64, 96), (32, 48)])
def test_frames_are_normalised_resized_and_padded(model, fixed_size):
    """The network input is (x/255 - mean)/std, resized to fit (enlarged bilinearly, shrunk by averaging each
    output pixel's area, as training shrinks frames), zeros below/right."""
    from mvos.runtime.model import IMAGENET_MEAN, IMAGENET_STD

    frame = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    backend = TorchBackend(model)
    backend.fixed_size = fixed_size
    segmenter = Segmenter(backend, DEFAULT.replace(size=None))
    geometry = FrameGeometry.for_frame(50, 70, None, fixed_size)
    image = segmenter._prepare_frame(frame, geometry)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].double() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).double().view(3, 1, 1)) / torch.tensor(IMAGENET_STD).double().view(3, 1, 1)
    if geometry.shrinks:
        x = area_weights(50, geometry.resized[0]) @ x @ area_weights(70, geometry.resized[1]).T
    elif geometry.resized != geometry.original:
        x = torch.nn.functional.interpolate(x, size=geometry.resized, mode="bilinear", align_corners=False)
    expected = geometry.pad(x.float())
    assert image.shape == (1, 3, *geometry.padded) and geometry.padded != geometry.resized
    torch.testing.assert_close(image, expected, atol=5e-5, rtol=0)  # float32 resizing
    with pytest.raises(MvosError, match="uint8"):
        segmenter._prepare_frame(frame.astype(np.float32), geometry)


def test_engine_work_runs_on_the_backends_host_threads(model):
    """A backend whose networks run outside torch (TFLite) gets the engine's torch work on one thread, so torch's
    spinning OpenMP workers do not take the cores from its own threads; the caller's setting comes back."""
    seen = []

    class OutsideTorch(TorchBackend):
        host_threads = 1

        def encode_key(self, frame, memorise=False):
            seen.append(torch.get_num_threads())
            return super().encode_key(frame)

    frames, masks = moving_scene(num_frames=2, height=48, width=64, objects=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        segmenter = Segmenter(OutsideTorch(model), DEFAULT.replace(size=None))
        for t, frame in enumerate(frames):
            segmenter.step(frame, masks[0] if t == 0 else None)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_object_appearing_at_frame_5(model):
    frames, masks = moving_scene(num_frames=9, height=48, width=64, objects=2)
    segmenter = engine(model, queue_len=2, size=None)
    first_only = np.where(masks[0] == 1, 1, 0).astype(np.uint8)
    late_only = np.where(masks[5] == 2, 2, 0).astype(np.uint8)
    for t, frame in enumerate(frames):
        mask = first_only if t == 0 else late_only if t == 5 else None
        probs = segmenter.step(frame, mask)
        assert probs.shape[0] == (2 if t < 5 else 3)
        if t == 5:
            assert (segmenter.index_map(probs)[masks[5] == 2] == 2).all()
    assert segmenter.object_ids == [1, 2]
    assert [g.object_ids for g in segmenter.groups] == [[1], [2]]
    assert segmenter.groups[1].memory.frame_of_slot[0] == 5  # the late object's reference is its own frame


def test_first_frame_without_objects_is_an_error(model):
    segmenter = engine(model, size=None)
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(MvosError, match="no objects"):
        segmenter.step(frame, np.zeros((32, 32), np.uint8))
    with pytest.raises(MvosError, match="mask is 16x16 but the frame is 32x32"):
        segmenter.step(frame, np.ones((16, 16), np.uint8))


def test_frame_geometry_resizes_short_side_and_pads_to_stride():
    geometry = FrameGeometry.for_frame(720, 1280, short_side=480, fixed_size=None)
    assert geometry.resized == (480, 853) and geometry.padded == (480, 864)
    fixed = FrameGeometry.for_frame(720, 1280, short_side=None, fixed_size=(480, 864))
    assert fixed.resized == (480, 853) and fixed.padded == (480, 864)
    probs = torch.rand(2, 480, 864)
    restored = geometry.restore(probs)
    assert restored.shape == (2, 720, 1280)
    # Bilinear back to the frame's size, as F.interpolate samples it (the engine does it with OpenCV)
    expected = torch.nn.functional.interpolate(probs[None, :, :480, :853], size=(720, 1280), mode="bilinear",
                                               align_corners=False)[0]
    torch.testing.assert_close(restored, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(geometry.restore(probs.double()), expected.double(), atol=1e-4, rtol=0)  # torch's
    assert geometry.shrinks and not FrameGeometry.for_frame(240, 427, None, (480, 864)).shrinks


# ------------------------------------------------------------------------------------------ the protocol


def test_write_slots_follow_the_protocol():
    assert [write_slot(k, 1) for k in range(4)] == [None] * 4  # T=1 never writes after the reference
    assert [write_slot(k, 2) for k in range(4)] == [1, 1, 1, 1]
    assert [write_slot(k, 3) for k in range(5)] == [1, 2, 1, 2, 1]
    assert slot_frames(0, 3) == [0, 0, 0] and slot_frames(3, 3) == [0, 3, 2] and slot_frames(4, 1) == [0]


@pytest.mark.parametrize("queue_len", [1, 2, 3, 5])
def test_the_engines_memory_holds_what_the_protocol_says(queue_len):
    memory = FixedQueueMemory(queue_len)
    for frame in range(9):
        memory.write(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), frame)
        assert memory.frame_of_slot == slot_frames(frame, queue_len)  # frame k is the k-th write after frame 0


def test_protocol_description_carries_worked_slot_sequences():
    described = protocol_description(mem_every=5)
    assert described["queue_length_range"] == [1, 20] and described["mem_every"] == 5
    assert described["memorised_frames"]["5"] == [0, 5, 10] and described["memorised_frames"]["1"] == list(range(12))
    assert described["write_slots"]["3"] == [1, 2, 1, 2, 1, 2]
    assert described["write_slots"]["1"] == [None] * 6


def test_others_mask_is_the_clamped_sum_of_the_other_objects():
    probs = torch.tensor([0.7, 0.6, 0.1]).view(3, 1, 1, 1)
    torch.testing.assert_close(others_mask(probs).flatten(), torch.tensor([0.7, 0.8, 1.0]))


def test_queue_length_lists_and_ranges():
    assert parse_queue_lens(["1..3", "5", "2"]) == [1, 2, 3, 5]
    with pytest.raises(MvosError, match="out of range"):
        parse_queue_lens(["0..2"])
    with pytest.raises(MvosError, match="expected N"):
        parse_queue_lens(["two"])


def test_settings_are_checked_in_one_line():
    assert DEFAULT.queue_len == 2 and DEFAULT.size == 480 and DEFAULT.memory == "fixed"
    for bad, match in (({"queue_len": 21}, "1..20"), ({"memory": "forever"}, "memory must be"),
                       ({"size": 8}, "size must be"), ({"backend": "onnx"}, "backend must be"),
                       ({"backend": "tflite", "memory": "unbounded"}, "fixed-queue memory only")):
        with pytest.raises(MvosError, match=match):
            InferenceSettings(**bad)
    assert InferenceSettings.from_options({"queue_len": 3, "weights": "x", "size": None}).size == DEFAULT.size


def test_track_times_every_segmented_frame_and_skips_frames_before_the_mask(model):
    frames, masks = moving_scene(num_frames=5, height=32, width=48, objects=1)
    results = list(track(engine(model, size=None), frames, {2: (masks[2], None)}))
    assert [r.ms is None for r in results] == [True, True, False, False, False]
    assert not results[0].labels.any() and results[0].probs is None
    np.testing.assert_array_equal(results[2].labels, masks[2])
    timing = Timing()
    for result in results:
        timing.add(result)
    assert timing.frames == [2, 3, 4] and len(timing.steady) == 2 and timing.fps > 0


def test_channels_last_backend_segments_as_the_default_layout(model):
    import copy

    frames, masks = moving_scene(num_frames=4, height=64, width=96)
    fast_model = copy.deepcopy(model)
    results = []
    for backend in (TorchBackend(model), TorchBackend(fast_model, channels_last=True)):
        segmenter = Segmenter(backend, DEFAULT.replace(size=None))
        results.append([segmenter.step(frame, masks[0] if i == 0 else None) for i, frame in enumerate(frames)])
    assert fast_model.key_encoder.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.key_encoder.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, atol=1e-4)
