"""Which of the decoder's inputs carries int8's error into the masks. One step at a time (both exports memorise
PyTorch's masks, as `benchmarks/export_agreement.py`'s one-step IoU), the fp32 and int8 exports' decoder inputs
are recorded on every frame; the int8 decoder then decodes each frame with some inputs from the int8 run and the
rest from the fp32 run (quantised to the same int8 steps, so only what the int8 graphs computed differs). Each
row's IoU is of logits > 0 at the export's size against the fp32 decoder on the fp32 run's inputs ("all" is then
the one-step IoU up to resizing). Writes int8_edges.csv.

    D=../shared/datasets/davis2016-train
    python benchmarks/int8_edges.py --model-dir /tmp/export --out benchmarks/results/int8_edges \\
        --clip examples/dog.mp4:examples/dog_00000.png \\
        --clip $D/JPEGImages/480p/bear:$D/Annotations/480p/bear/00000.png
"""

from __future__ import annotations

import numpy as np

import real_clips

INPUTS = ("key", "value", "f8", "f4", "mem_keys", "mem_values")  # the decoder graph's, by who makes them:
# key encoder on this frame (key, value, f8, f4), key encoder on memorised frames (mem_keys), value encoder
# (mem_values)


class DecoderFeeds:
    """A backend that keeps the decoder graph's inputs of every frame (one object group of one call)."""

    def __init__(self, inner):
        self.inner, self.frames = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, query, memory_keys, memory_values, num_objects):
        from mvos.runtime.tflite import decoder_feeds

        feeds = decoder_feeds(query, memory_keys, memory_values, num_objects, self.inner.max_objects,
                              self.inner.value_dim)
        self.frames.append({name: array.copy() for name, array in feeds[0][0].items()})
        return self.inner.decode(query, memory_keys, memory_values, num_objects)


MEMORY = ("mem_keys", "mem_values")


def mixes(queue_len: int) -> list[tuple[str, str, frozenset, int | None]]:
    """(row, decoder precision, inputs taken from the int8 run, the memory slot taken from the fp32 run)."""
    every = frozenset(INPUTS)
    rows = [("all int8", "int8", every), ("int8 decoder only", "int8", frozenset()),
            ("int8 inputs, fp32 decoder", "fp32", every)]
    rows += [(f"only {name} int8", "int8", frozenset({name})) for name in INPUTS]
    rows += [(f"all but {name} int8", "int8", every - {name}) for name in INPUTS]
    rows.append(("all but key, mem_keys int8", "int8", every - {"key", "mem_keys"}))  # the key projection's
    rows = [(*row, None) for row in rows]
    # Which memory frame carries it: slot 0 holds the reference frame, the others the recent ones.
    rows += [(f"all but memory slot {slot} int8", "int8", every, slot) for slot in range(queue_len)]
    return rows


def mixed_iou(decoder, spec_of, fp32_run: list[dict], int8_run: list[dict], from_int8: frozenset,
              reference: list[np.ndarray], fp32_slot: int | None = None) -> float:
    """Mean over frames of the IoU of `decoder`'s logits > 0 against `reference`, each input from the int8
    run if named in `from_int8`, else from the fp32 run, and memory slot `fp32_slot` (keys and values) from the
    fp32 run. An fp32 decoder gets int8 steps dequantised; an int8 decoder takes fp32's floats quantised."""
    from mvos.runtime.manifest import dequantise

    scores = []
    for t, expected in enumerate(reference):
        feed = {}
        for name in INPUTS:
            array = (int8_run if name in from_int8 else fp32_run)[t][name]
            if array.dtype == np.int8 and decoder.inputs[name][0].dtype != "int8":
                spec = spec_of[name]
                array = dequantise(array, spec.scale, spec.zero_point)
            if fp32_slot is not None and name in MEMORY and name in from_int8:
                array = array.copy()
                array[fp32_slot] = decoder.inputs[name][0].to_graph(fp32_run[t][name][fp32_slot])
            feed[name] = array
        got = decoder(**feed)["logits"] > 0
        union = np.logical_or(got, expected).sum()
        scores.append(1.0 if union == 0 else np.logical_and(got, expected).sum() / union)
    return float(np.mean(scores))


def main() -> None:
    args = real_clips.parser(__doc__, "benchmarks/results/int8_edges").parse_args()

    import torch

    from mvos.export.verify import one_step_run, reference_run
    from mvos.runtime.io import write_csv
    from mvos.runtime.settings import InferenceSettings
    from mvos.runtime.tflite import TFLiteBackend

    manifest, model = real_clips.export_and_model(args)
    settings = InferenceSettings(queue_len=args.queue_len, top_k=manifest.top_k)
    backends = {p: TFLiteBackend(args.model_dir, args.queue_len, threads=args.threads, precision=p)
                for p in ("fp32", "int8")}
    decoders = {p: b.decoder for p, b in backends.items()}
    int8_specs = {name: spec for name, (spec, _) in decoders["int8"].inputs.items()}
    rows = []
    for clip in real_clips.clips(args):
        masks = {0: clip.mask}
        runs = {}
        with torch.inference_mode():
            _, memorised = reference_run(model, manifest.top_k, backends["fp32"].fixed_size, settings,
                                         clip.frames, masks)
            for precision, backend in backends.items():
                recorder = DecoderFeeds(backend)
                one_step_run(recorder, memorised, settings, clip.frames, masks)
                runs[precision] = recorder.frames
        reference = [decoders["fp32"](**feed)["logits"] > 0 for feed in runs["fp32"]]
        for row, decoder, from_int8, fp32_slot in mixes(args.queue_len):
            iou = mixed_iou(decoders[decoder], int8_specs, runs["fp32"], runs["int8"], from_int8, reference,
                            fp32_slot)
            rows.append({"clip": clip.name, "mix": row, "decoder": decoder,
                         "int8_inputs": " ".join(n for n in INPUTS if n in from_int8), "iou": iou})
            print(f"{clip.name:<12} {row:<28} IoU {iou:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "int8_edges.csv", rows)
    print(f"wrote {args.out / 'int8_edges.csv'}")


if __name__ == "__main__":
    main()
