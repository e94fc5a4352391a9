"""Golden vectors for the Android core's tests: what the Python engine computes, stage by stage, when it runs an
export of the shipped default weights on a short real clip through the TFLite runtime.

Written into android_app/core/src/test/resources/golden/ (index.json + little-endian .bin arrays):
  export/manifest.json            the export's manifest, fp32 and int8 (the Kotlin tests parse the real thing)
  runs[precision], for fp32 and int8, runs["int8_fp32_memory"], int8 with the memorised frames encoded by the
  fp32 encoders (their calls name "precision": "fp32"), and runs["fp32_enlarged"], fp32 on frames 0-2 at 106x60
  (enlarged):
    frames[t]: camera RGB bytes, the prepared key-encoder input, the memory after the frame (which frame each
               slot holds, keys and values in the graphs' layouts), the label map, and (frames 1 and 3) the 1+N
               probabilities at the camera's size
    calls[k]:  every graph call in order with its inputs and outputs (floats, or int8 steps where the graphs pass
               them), for the Kotlin engine to replay
  box_prompt: where GrabCut runs for dragged boxes (mvos.runtime.boxes) on frames of several sizes

The clip is examples/dog.mp4, five frames shrunk to a 192x108 "camera", with three objects (the dog of
examples/dog_00000.png, the person and the leash by GrabCut); the export is 64x112 with T=3, every 2nd frame
memorised and two objects per decoder call, so the frame is resized and padded, frames 1 and 3 only read the
memory, both recent slots are written, and the decoder both chunks and pads objects. Run from the repository
root (a few minutes; it exports first):

    python android_app/scripts/make_golden.py [--weights CKPT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "android_app" / "core" / "src" / "test" / "resources" / "golden"
SIZE, QUEUE_LEN, MEM_EVERY, MAX_OBJECTS, FRAMES, CAMERA = (64, 112), 3, 2, 2, 5, (108, 192)
PRECISIONS = ["fp32", "int8"]  # int8: features and memory pass between the graphs as int8 steps
# A camera smaller than the export: its frames are enlarged (and padded) on the way in, the masks shrunk back out.
SMALL_CAMERA, SMALL_RUN, SMALL_FRAMES = (60, 106), "fp32_enlarged", 3  # memorised, read only, memorised
MEMORY_RUN = "int8_fp32_memory"  # int8 graphs, the memorised frames encoded by the fp32 encoders
BOXES = [(150, 145, 300, 372), (365, 325, 490, 400)]  # the person, the leash (x0, y0, x1, y1 at 854x480)


class Writer:
    """Arrays as little-endian .bin files, each distinct content once (the key encoder's outputs come back as
    every decoder call's inputs, f16 with every value-encoder call)."""

    def __init__(self, root: Path):
        self.root, self.files = root, {}

    def array(self, value: np.ndarray) -> dict:
        """Saves an array, returns its index entry."""
        value = np.ascontiguousarray(value)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32",
                 np.dtype(np.int8): "int8"}[value.dtype]
        data = value.astype(value.dtype.newbyteorder("<")).tobytes()
        name = self.files.get(data)
        if name is None:
            name = self.files[data] = f"a{len(self.files):04d}.bin"
            (self.root / name).write_bytes(data)
        return {"file": name, "shape": list(value.shape), "dtype": dtype}


def as_passed(value) -> np.ndarray:
    """An array as it went between the engine and a graph: int8 steps stay int8, the rest is float32."""
    value = np.asarray(value)
    return value if value.dtype == np.int8 else value.astype(np.float32)


class Recorder:
    """A SubgraphRunner stand-in that records every call's inputs and outputs (floats, or int8 steps)."""

    def __init__(self, runner, graph: str, calls: list, writer: Writer, frame: list[int],
                 precision: str | None = None):
        self.runner, self.graph, self.calls, self.writer, self.frame = runner, graph, calls, writer, frame
        self.precision = precision  # named for the memory's encoders only (the run's own precision otherwise)

    def __call__(self, **inputs):
        outputs = self.runner(**inputs)
        self.calls.append({"graph": self.graph, "frame": self.frame[0],
                           **({"precision": self.precision} if self.precision else {}),
                           "inputs": {k: self.writer.array(as_passed(v)) for k, v in inputs.items()},
                           "outputs": {k: self.writer.array(as_passed(v)) for k, v in outputs.items()}})
        return outputs


def clip(camera_size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    from mvos.runtime.boxes import mask_from_boxes
    from mvos.runtime.io import open_frames, read_mask

    source = open_frames(REPO / "examples" / "dog.mp4")
    frames = [frame for _, frame in zip(range(FRAMES), source)]
    mask = read_mask(REPO / "examples" / "dog_00000.png")
    extra = mask_from_boxes(frames[0], BOXES)
    mask = np.where(mask > 0, mask, np.where(extra > 0, extra + 1, 0)).astype(np.uint8)  # dog 1, person 2, leash 3
    camera = [cv2.resize(f, camera_size[::-1], interpolation=cv2.INTER_AREA) for f in frames]
    small = cv2.resize(mask, camera_size[::-1], interpolation=cv2.INTER_NEAREST)
    assert sorted(np.unique(small)) == [0, 1, 2, 3], "every object must survive the shrink to the camera size"
    return camera, small


def box_prompt() -> dict:
    """The GrabCut settings and geometry the app must follow: shrink, rectangles (Python's round, half to even)
    and which box wins where they overlap."""
    from mvos.runtime.boxes import GRABCUT_ITERATIONS, MAX_SIDE, grabcut_geometry, paint_order

    cases = []
    for frame_size, box in [((480, 854), BOXES[0]), ((1080, 1920), (101, 203, 1501, 1077)),
                            ((720, 1280), (6, 10, 803, 717)), ((1280, 720), (3, 1, 719, 1279))]:
        size, rect = grabcut_geometry(frame_size, box)
        cases.append({"frame_size": list(frame_size), "box": list(box), "size": list(size), "rect": list(rect)})
    boxes = [(0, 0, 100, 100), (10, 10, 50, 50), (0, 0, 200, 20), (5, 5, 105, 105)]
    return {"iterations": GRABCUT_ITERATIONS, "max_side": MAX_SIDE, "cases": cases,
            "boxes": [list(b) for b in boxes], "paint_order": paint_order(boxes)}


def record(export: Path, precision: str, camera: list[np.ndarray], mask: np.ndarray, writer: Writer,
           memory_precision: str | None = None) -> dict:
    """The Python engine on the camera frames with one precision's graphs (and `memory_precision`'s encoders on
    the memorised frames): every graph call, and per frame what the Kotlin engine must reproduce."""
    import torch

    from mvos.runtime.inference import Segmenter
    from mvos.runtime.settings import DEFAULT
    from mvos.runtime.tflite import TFLiteBackend

    calls, frame_index = [], [0]
    backend = TFLiteBackend(export, queue_len=QUEUE_LEN, precision=precision, memory_precision=memory_precision)
    for graph in ("key_encoder", "value_encoder", "decoder"):
        if getattr(backend, graph) is not None:  # with memory encoders, the own value encoder is not loaded
            setattr(backend, graph, Recorder(getattr(backend, graph), graph, calls, writer, frame_index))
    if backend.memory_encoders is not None:
        for graph in ("key_encoder", "value_encoder"):
            runner = getattr(backend.memory_encoders, graph)
            setattr(backend.memory_encoders, graph, Recorder(runner, graph, calls, writer, frame_index,
                                                             memory_precision))
    segmenter = Segmenter(backend, DEFAULT.replace(queue_len=QUEUE_LEN, mem_every=MEM_EVERY))
    frames = []
    with torch.inference_mode():
        for t, rgb in enumerate(camera):
            frame_index[0] = t
            probs = segmenter.step(rgb, mask if t == 0 else None)
            memory = segmenter.groups[0].memory
            prepared = next(c for c in calls if c["frame"] == t and c["graph"] == "key_encoder")["inputs"]["frame"]
            frames.append({
                "camera": writer.array(rgb), "mask": writer.array(mask) if t == 0 else None, "prepared": prepared,
                # Probabilities at the camera size are the largest arrays: two frames check post-processing.
                "probs": writer.array(probs.astype(np.float32)) if t in (1, 3) else None,
                "labels": writer.array(segmenter.index_map(probs)),
                "frame_of_slot": list(memory.frame_of_slot),
                "memory_keys": writer.array(as_passed(memory.keys.numpy())),  # T,Ck,h,w
                "memory_values": writer.array(as_passed(memory.values.permute(0, 2, 3, 1).numpy())),  # T,h,w,N*Cv
            })
    return {"frames": frames, "calls": calls, "object_ids": segmenter.object_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="a checkpoint (default: the shipped default weights)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from mvos.export.exporter import ensure_exported
    from mvos.runtime.io import staged_directory
    from mvos.runtime.loading import load_model

    loaded = load_model(None, args.weights)
    camera, mask = clip(CAMERA)
    # The old vectors are replaced only once the new ones are complete.
    with tempfile.TemporaryDirectory() as tmp, staged_directory(args.out) as staging:
        export = Path(tmp) / "export"
        ensure_exported(export, loaded.model, loaded.source, SIZE, [QUEUE_LEN], PRECISIONS, MAX_OBJECTS,
                        progress=False)  # int8 calibrated on the examples, as `mvos export` does
        (staging / "export").mkdir()
        shutil.copy(export / "manifest.json", staging / "export" / "manifest.json")
        writer = Writer(staging)
        runs = {precision: record(export, precision, camera, mask, writer) for precision in PRECISIONS}
        runs[MEMORY_RUN] = record(export, "int8", camera, mask, writer, memory_precision="fp32")
        small_camera, small_mask = clip(SMALL_CAMERA)
        runs[SMALL_RUN] = record(export, "fp32", small_camera[:SMALL_FRAMES], small_mask, writer)
        index = {"clip": f"examples/dog.mp4 (frames 0-{FRAMES - 1} at 192x108; {SMALL_RUN}: 0-{SMALL_FRAMES - 1} at 106x60)",
                 "weights": loaded.source,
                 "size": list(SIZE), "queue_len": QUEUE_LEN, "mem_every": MEM_EVERY, "max_objects": MAX_OBJECTS,
                 "object_ids": runs["fp32"]["object_ids"], "box_prompt": box_prompt(), "runs": runs}
        (staging / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        calls = sum(len(run["calls"]) for run in runs.values())
    total = sum(p.stat().st_size for p in args.out.rglob("*"))
    print(f"wrote {args.out} ({calls} graph calls, {FRAMES} frames in {', '.join(runs)}, {total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
