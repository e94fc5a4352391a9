"""Proof that the exported files compute what the PyTorch model computes: per-subgraph output differences on
random inputs, and end-to-end masks on a generated video (TFLite runtime vs PyTorch through the same
`Segmenter`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import Segmenter, TorchBackend, track
from mvos.runtime.manifest import EndToEndCheck, Manifest
from mvos.runtime.model import MobileVOS
from mvos.runtime.settings import InferenceSettings
from mvos.runtime.tflite import TFLiteBackend

FP32_MIN_IOU = 0.99  # the bar for fp32 end to end
FP32_MAX_REL_DIFF = 1e-3  # per subgraph output, relative to the output's largest magnitude
TIE_MARGIN = 1e-3  # probability margin below which a pixel's label is a tie, left out of the IoU
UNSURE = (0.2, 0.8)  # the reference's object probabilities its unsure band spans


def exported_model(model_dir: Path, weights: str | None = None) -> tuple[Manifest, MobileVOS]:
    """An export's manifest and the PyTorch model it was made from (the variant's shipped weights unless
    `weights`); MvosError when the export was made from other weights."""
    from mvos.export.manifest import weights_sha256
    from mvos.runtime.loading import load_model

    manifest = Manifest.read(model_dir)
    model = load_model(manifest.variant, weights).model
    if weights_sha256(model) != manifest.weights_sha256:
        raise MvosError(f"{model_dir} was exported from other weights than {weights or 'the shipped ones'}")
    return manifest, model


def run_graph(content: bytes, entry, inputs: dict[str, np.ndarray], threads: int | None = None) -> dict:
    """Float outputs by meaning of a converted graph described by its manifest `entry` (int8 graphs get their
    inputs quantised and outputs dequantised, as the runtime does)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content, num_threads=threads).get_signature_runner()
    specs = {spec.name: spec for spec in entry.inputs}
    raw = runner(**{name: specs[name].to_graph(value) for name, value in inputs.items()})
    outputs = {spec.signature_output: spec for spec in entry.outputs}
    return {outputs[key].name: outputs[key].from_graph(value) for key, value in raw.items()}


def signature_details(content: bytes) -> dict:
    """{"inputs": {name: detail}, "outputs": {name: detail}} of the default signature; raises whatever the
    interpreter raises for a graph it cannot load (e.g. STABLEHLO ops)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()  # runs every op's prepare: shape errors surface here, not on the phone
    runner = interpreter.get_signature_runner()
    return {"inputs": runner.get_input_details(), "outputs": runner.get_output_details()}


def output_parity(outputs: dict[str, np.ndarray], reference: dict[str, torch.Tensor]) -> dict:
    """Max |diff| per output (by meaning), absolute and relative to max |reference|."""
    absolute, relative = {}, {}
    for name, value in outputs.items():
        ref = reference[name].detach().numpy()
        diff = float(np.abs(value - ref).max())
        absolute[name] = diff
        relative[name] = diff / max(float(np.abs(ref).max()), 1e-12)
    return {"max_abs_diff": absolute, "max_rel_diff": relative}


# ------------------------------------------------------------------------------------------ end to end


def synthetic_video(size: tuple[int, int], num_frames: int = 6, seed: int = 0):
    """Frames (num_frames of H,W,3 uint8, H,W = size less a quarter of the width, so the runtime pads) with
    two moving ellipses given in frame 0 and a third object given in frame 2 (a second object group).
    Returns frames and {frame index: mask}."""
    rng = np.random.default_rng(seed)
    h, w = size[0], max(16, size[1] - size[1] // 4)
    yy, xx = np.mgrid[0:h, 0:w]
    base = cv2.resize(rng.uniform(0, 255, (max(2, h // 8), max(2, w // 8), 3)).astype(np.float32), (w, h))
    colours = rng.uniform(0, 255, (3, 3))
    starts = rng.uniform(0.25, 0.75, (3, 2)) * (h, w)
    speeds = rng.uniform(-0.04, 0.04, (3, 2)) * (h, w)
    radii = rng.uniform(0.12, 0.22, (3, 2)) * (h, w)
    frames, masks = [], {}
    for t in range(num_frames):
        frame = base.copy()
        ids = np.zeros((h, w), np.uint8)
        for k in range(3):
            cy, cx = starts[k] + t * speeds[k]
            inside = ((yy - cy) / radii[k][0]) ** 2 + ((xx - cx) / radii[k][1]) ** 2 <= 1
            frame[inside] = colours[k]
            ids[inside] = k + 1
        frames.append(np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8))
        if t == 0:
            masks[0] = np.where(ids <= 2, ids, 0).astype(np.uint8)
        elif t == 2:
            masks[2] = np.where(ids == 3, 3, 0).astype(np.uint8)
    return frames, masks


def run_video(segmenter: Segmenter, frames: list[np.ndarray], masks: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Probabilities (1+N,H,W, background first, objects in `segmenter.object_ids` order) of every frame."""
    return [result.probs for result in track(segmenter, frames, {i: (m, None) for i, m in masks.items()})]


def mask_agreement(expected: list[np.ndarray], got: list[np.ndarray], tie_margin: float = TIE_MARGIN) -> dict:
    """Mean over frames and objects of the IoU between argmax masks, ignoring pixels where the reference's
    two best classes are within `tie_margin` (a random-init model is nearly uniform there, so any correct
    implementation may pick either); both empty counts as agreement. Also the largest probability difference,
    the continuous measure the masks come from."""
    scores, ties, pixels, max_diff = [], 0, 0, 0.0
    for ref, out in zip(expected, got):
        top2 = np.sort(ref, axis=0)[-2:]
        decisive = (top2[1] - top2[0]) >= tie_margin
        a, b = ref.argmax(0), out.argmax(0)
        for label in range(1, ref.shape[0]):  # objects present in this frame
            x, y = (a == label) & decisive, (b == label) & decisive
            union = np.logical_or(x, y).sum()
            scores.append(1.0 if union == 0 else np.logical_and(x, y).sum() / union)
        ties += int((~decisive).sum())
        pixels += decisive.size
        max_diff = max(max_diff, float(np.abs(ref - out).max()))
    return {"mean_iou": float(np.mean(scores)) if scores else 1.0, "max_prob_diff": max_diff,
            "tie_fraction": ties / max(pixels, 1)}


def band_stats(expected: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Over every frame and object of 1+N,H,W probabilities (background first): the reference's unsure band
    (object probability within `UNSURE`), the pixels labelled otherwise, and the share of those inside the band,
    each over the reference's object pixels. `differ_over_band` measures rounding apart from how sure the
    model is: an IoU rises when the object grows onto pixels the model is sure of, this share does not."""
    area = band = differ = differ_in_band = 0
    for ref, out in zip(expected, got):
        a, b = ref.argmax(0), out.argmax(0)
        for label in range(1, ref.shape[0]):
            unsure = (ref[label] > UNSURE[0]) & (ref[label] < UNSURE[1])
            x, y = a == label, b == label
            flipped = x ^ y
            area += int(x.sum())
            band += int(unsure.sum())
            differ += int(flipped.sum())
            differ_in_band += int((flipped & unsure).sum())
    return {"object_pixels": area, "band_over_area": band / max(area, 1), "differ_over_area": differ / max(area, 1),
            "differ_in_band": differ_in_band / max(differ, 1), "differ_over_band": differ / max(band, 1)}


class MaskRecorder:
    """A backend that keeps the masks and "others" of each value-encoder call (what the engine memorised), in
    float16: a long clip's full-size masks would otherwise take gigabytes (float16 holds 0..1 within 5e-4)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_value(self, frame, features, masks, others):
        self.calls.append((masks.to(torch.float16), others.to(torch.float16)))
        return self.inner.encode_value(frame, features, masks, others)


class MaskReplay:
    """A backend that memorises the recorded masks instead of the ones its engine computed: each frame is then
    segmented from the reference run's memory masks (its own keys and values, computed from them)."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls, self.index = inner, calls, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_value(self, frame, features, masks, others):
        masks, others = (m.to(masks.dtype) for m in self.calls[self.index])
        self.index += 1
        return self.inner.encode_value(frame, features, masks, others)


def reference_run(model: MobileVOS, top_k: int | None, fixed_size: tuple[int, int], settings: InferenceSettings,
                  frames: list[np.ndarray], masks: dict[int, np.ndarray]) -> tuple[list[np.ndarray], list]:
    """PyTorch at an export's fixed size (the same resize and padding as the exported graphs): every frame's
    probabilities, and the masks it memorised, for `one_step_run`."""
    torch_backend = TorchBackend(model, top_k)
    torch_backend.fixed_size = fixed_size
    recorder = MaskRecorder(torch_backend)
    return run_video(Segmenter(recorder, settings), frames, masks), recorder.calls


def one_step_run(backend, memorised: list, settings: InferenceSettings, frames: list[np.ndarray],
                 masks: dict[int, np.ndarray]) -> list[np.ndarray]:
    """`backend` segmenting each frame from the reference's memory masks (`reference_run`), so one frame's
    differences cannot steer the later ones."""
    return run_video(Segmenter(MaskReplay(backend, memorised), settings), frames, masks)


def end_to_end(model: MobileVOS, model_dir: Path, precision: str, queue_len: int, top_k: int | None = None,
               threads: int | None = None, num_frames: int = 6, reference_cache: dict | None = None,
               clip=None, memory_precision: str | None = None) -> EndToEndCheck:
    """Segment the generated video (or a real `clip`) with the exported files and with PyTorch at the same
    fixed size, closed loop (each engine memorises its own masks) and one step at a time (the exported graphs
    memorise PyTorch's masks). `reference_cache` keeps PyTorch's results per video and queue length across
    precisions. `memory_precision`: the exported encoders that make the memory (default `precision`)."""
    settings = InferenceSettings(queue_len=queue_len, top_k=top_k)
    tflite = TFLiteBackend(model_dir, queue_len=queue_len, threads=threads, precision=precision,
                           memory_precision=memory_precision)
    if clip is None:
        frames, masks, name = *synthetic_video(tflite.fixed_size, num_frames), "synthetic"
    else:
        frames, masks, name = clip.frames, {0: clip.mask}, clip.name
    cache = {} if reference_cache is None else reference_cache
    with torch.inference_mode():
        if (name, queue_len) not in cache:
            cache[(name, queue_len)] = reference_run(model, top_k, tflite.fixed_size, settings, frames, masks)
        expected, memorised = cache[(name, queue_len)]
        got_segmenter = Segmenter(tflite, settings)
        got = run_video(got_segmenter, frames, masks)
        one_step = one_step_run(tflite, memorised, settings, frames, masks)
    return EndToEndCheck(precision, queue_len, **mask_agreement(expected, got), frames=len(frames),
                         objects=len(got_segmenter.object_ids), clip=name,
                         one_step_iou=mask_agreement(expected, one_step)["mean_iou"],
                         one_step_band_flips=band_stats(expected, one_step)["differ_over_band"],
                         memory_precision=None if memory_precision in (None, precision) else memory_precision)
