"""How far each int8 graph's outputs are from fp32's on real frames that calibration never saw, graph by graph:
ai-edge-quantizer's nearest rounding against the exporter's int8 (the same, then `mvos.export.ptq`'s GPTQ
weights and bias correction). Each graph is fed what it receives while PyTorch segments the clips at the
export's size (`mvos.export.calibrate`). Writes int8_error.csv: relative RMS error per output, mean over calls.

    D=../shared/datasets/davis2016-train
    python benchmarks/int8_error.py --model-dir /tmp/export --out benchmarks/results/int8_error \\
        --held-out $D/JPEGImages/480p/stroller:$D/Annotations/480p/stroller/00000.png [--held-out ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MAX_CALLS = 24  # held-out calls per graph: enough for a stable mean, quick to run


def run_graph(content: bytes, calls: list[dict], threads: int) -> list[dict[str, np.ndarray]]:
    """Float outputs of each call, int8 edges quantised and dequantised with the graph's own parameters."""
    from ai_edge_litert.interpreter import Interpreter

    from mvos.export.ptq import from_edge, to_edge

    runner = Interpreter(model_content=content, num_threads=threads).get_signature_runner()
    details_in, details_out = runner.get_input_details(), runner.get_output_details()
    return [{name: from_edge(value, details_out[name])
             for name, value in runner(**{k: to_edge(v, details_in[k]) for k, v in call.items()}).items()}
            for call in calls]


def relative_errors(expected: list[dict], got: list[dict]) -> dict[str, float]:
    return {name: float(np.mean([np.linalg.norm(g[name] - e[name]) / max(np.linalg.norm(e[name]), 1e-12)
                                 for e, g in zip(expected, got)])) for name in expected[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an `mvos export` folder with fp32 graphs")
    parser.add_argument("--calibration", action="append", metavar="VIDEO:MASK",
                        help="clips to calibrate on, as `mvos export --calibration` (default: the examples/ clips)")
    parser.add_argument("--held-out", action="append", required=True, metavar="VIDEO:MASK",
                        help="clips to measure on, which calibration does not see; repeatable")
    parser.add_argument("--weights", default=None, help="the checkpoint the export was made from (default: shipped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_error"))
    args = parser.parse_args()

    import torch

    from mvos.export.calibrate import calibration_inputs, example_clips, read_clip, video_and_mask
    from mvos.export.convert import quantize_nearest
    from mvos.export.ptq import refine_int8
    from mvos.export.verify import exported_model
    from mvos.runtime.io import write_csv
    from mvos.runtime.manifest import graph_key

    torch.set_num_threads(args.threads)
    manifest, model = exported_model(args.model_dir, args.weights)
    clips = lambda texts: [read_clip(*video_and_mask(t)) for t in texts]  # noqa: E731
    queue_lens = manifest.queue_lens("fp32")
    record = lambda chosen: calibration_inputs(model, tuple(manifest.input_size), queue_lens,  # noqa: E731
                                               manifest.max_objects, chosen, manifest.top_k)
    calibration = record(clips(args.calibration) if args.calibration else example_clips())
    held_out = record(clips(args.held_out))

    rows = []
    for entry in (e for e in manifest.files if e.precision == "fp32"):
        key = graph_key(entry.subgraph, entry.queue_len)
        fp32 = (args.model_dir / entry.path).read_bytes()
        calls = held_out[key][:: max(1, len(held_out[key]) // MAX_CALLS)][:MAX_CALLS]
        expected = run_graph(fp32, calls, args.threads)
        nearest = quantize_nearest(fp32, calibration[key])
        refined, counts = refine_int8(fp32, nearest, calibration[key])
        before = relative_errors(expected, run_graph(nearest, calls, args.threads))
        after = relative_errors(expected, run_graph(refined, calls, args.threads))
        for name in expected[0]:
            rows.append({"graph": key, "output": name, "held_out_calls": len(calls), "nearest": before[name],
                         "refined": after[name], "gptq_layers": counts["gptq"], "bias_layers": counts["bias"]})
            print(f"{key:<14} {name:<8} nearest {before[name]:.4f}  refined {after[name]:.4f}  "
                  f"(GPTQ {counts['gptq']} layers, bias {counts['bias']})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "int8_error.csv", rows)
    print(f"wrote {args.out / 'int8_error.csv'}")


if __name__ == "__main__":
    main()
