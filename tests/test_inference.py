import numpy as np
import pytest
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import FrameGeometry, Segmenter
from mvos.runtime.memory import FixedQueueMemory, UnboundedMemory
from mvos.runtime.model import build_model

from helpers import moving_scene


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("mobilenetv2-noaspp").eval()


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
        with pytest.raises(ValueError):
            FixedQueueMemory(bad)


def test_unbounded_memory_keeps_every_kth_and_the_last_frame():
    memory = UnboundedMemory(every=5)
    for frame in range(13):
        memory.write(torch.zeros(2, 1, 1), torch.zeros(4, 1, 1), frame)
    assert memory.frames() == [0, 5, 10, 12]
    assert memory.read()[0].shape[0] == 4


def test_t2_memory_holds_first_and_previous_frame_and_stays_constant_over_200_frames(model):
    frames, masks = moving_scene(num_frames=200, height=32, width=48, objects=1)
    segmenter = Segmenter(model, queue_len=2, size=None)
    sizes = []
    for t, frame in enumerate(frames):
        segmenter.step(frame, masks[0] if t == 0 else None)
        memory = segmenter.groups[0].memory
        assert memory.frames() == [0, t] if t > 0 else [0]  # after step t the memory is {0, t} for frame t+1
        sizes.append(segmenter.memory_nbytes())
    assert len(set(sizes)) == 1


def test_unbounded_memory_grows(model):
    frames, masks = moving_scene(num_frames=12, height=32, width=48, objects=1)
    segmenter = Segmenter(model, memory="unbounded", mem_every=5, size=None)
    sizes = [segmenter.step(f, masks[0] if t == 0 else None) is not None and segmenter.memory_nbytes()
             for t, f in enumerate(frames)]
    assert sizes[-1] > sizes[0]


def test_probabilities_sum_to_one_at_the_original_size(model):
    frames, masks = moving_scene(num_frames=3, height=50, width=70, objects=2)
    segmenter = Segmenter(model, size=40)
    for t, frame in enumerate(frames):
        probs = segmenter.step(frame, masks[0] if t == 0 else None)
        assert probs.shape == (3, 50, 70)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert segmenter.object_ids == [1, 2]


def test_given_mask_is_reproduced_on_its_frame(model):
    frames, masks = moving_scene(num_frames=1, height=48, width=64, objects=3)
    segmenter = Segmenter(model, size=None)
    result = segmenter.index_map(segmenter.step(frames[0], masks[0]))
    np.testing.assert_array_equal(result, masks[0])


def test_object_appearing_at_frame_5(model):
    frames, masks = moving_scene(num_frames=9, height=48, width=64, objects=2)
    segmenter = Segmenter(model, queue_len=2, size=None)
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
    segmenter = Segmenter(model, size=None)
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
    restored = geometry.restore(torch.rand(2, 480, 864))
    assert restored.shape == (2, 720, 1280)
