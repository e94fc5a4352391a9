"""How far the exported graphs are from this machine's floor, in one run (issue: a real-time frame).

1. MACs of every subgraph, counted from the converted graphs themselves (`mvos.export.ops.graph_macs`).
2. This machine's matrix-multiply rates through the same runtime (LiteRT + XNNPACK) and threads: an fp32 GEMM
   and a full-integer int8 GEMM, 1024 x 1024 x 1024.
3. Each subgraph (min over runs) and whole frames (the TFLite runtime segmenting a real clip, the example dog
   video, and the same enlarged to a camera's 1280x720, which the engine resizes in and out) for every precision
   of an export, and each one's ratio to its floor = 2 x MACs / rate (each op's MACs at the rate of its
   precision: an int8 graph's float ops, such as the memory read, at the fp32 rate).
4. With --ops: per-op times of each graph, from prefix cuts (the graph cut after op k, timed, minus the cut
   after op k-1), to see where the time goes.

Run it on a quiet machine (stop any training first):

    mvos export --size 480x864 --queue-len 2 --precision fp32,int8 --out /tmp/realtime_export
    python benchmarks/realtime.py --model-dir /tmp/realtime_export --out benchmarks/results/realtime [--ops]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

GEMM = (1024, 1024, 1024)  # M, K, N
REPO = Path(__file__).resolve().parents[1]


def timed_ms(run, runs: int, warmup: int) -> float:
    """Fastest of `runs` calls (other processes only ever add time), after `warmup` calls."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - start) * 1000)
    return best


def interpreter_runner(content: bytes, threads: int):
    """A zero-argument callable that invokes the graph on random inputs (values do not change its time)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        data = rng.standard_normal(detail["shape"]).astype(detail["dtype"]) if detail["dtype"] == np.float32 \
            else rng.integers(-100, 100, detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], data)
    return interpreter.invoke


def gemm_graphs() -> dict[str, bytes]:
    """An fp32 GEMM and its full-integer int8 version (weights and activations, calibrated)."""
    import litert_torch
    import torch

    from mvos.export.convert import quantize_static

    m, k, n = GEMM
    torch.manual_seed(0)
    module = torch.nn.Linear(k, n, bias=False).eval()
    fp32 = bytes(litert_torch.convert(module, (torch.zeros(m, k),)).model_content())
    calibration = [{"args_0": np.random.default_rng(i).standard_normal((m, k)).astype(np.float32)} for i in range(4)]
    return {"fp32": fp32, "int8": quantize_static(fp32, calibration, "gemm")}


def machine_rates(threads: int, runs: int) -> dict[str, float]:
    """GFLOP/s (2 per MAC) of the GEMMs through LiteRT on `threads` threads."""
    m, k, n = GEMM
    return {precision: 2 * m * k * n / timed_ms(interpreter_runner(content, threads), runs, 2) / 1e6
            for precision, content in gemm_graphs().items()}


def subgraph_rows(model_dir: Path, label: str, threads: int, runs: int, rates: dict[str, float]) -> list[dict]:
    """Every <precision>/<graph>.tflite of an export folder (any version of the exporter) against its floor."""
    from mvos.export.ops import macs_by_precision

    rows = []
    for path in sorted(model_dir.glob("*/*.tflite")):
        content = path.read_bytes()
        by_precision = macs_by_precision(content)  # an int8 graph's float ops (the memory read) at the fp32 rate
        macs = sum(by_precision.values())
        ms = timed_ms(interpreter_runner(content, threads), runs, 2)
        floor = 2 * (by_precision["int8"] / rates["int8"] + by_precision["float"] / rates["fp32"]) / 1e6
        rows.append({"export": label, "precision": path.parent.name, "graph": path.stem, "gmac": round(macs / 1e9, 3),
                     "ms": round(ms, 2), "floor_ms": round(floor, 2), "ratio": round(ms / floor, 2)})
    return rows


def summed_frame_rows(subgraphs: list[dict], queue_len: int) -> list[dict]:
    """A frame as the sum of its three graphs (for exports the current runtime cannot run)."""
    rows = []
    for (label, precision) in dict.fromkeys((r["export"], r["precision"]) for r in subgraphs):
        graphs = [r for r in subgraphs if r["export"] == label and r["precision"] == precision and
                  r["graph"] in ("key_encoder", "value_encoder", f"decoder_T{queue_len}")]
        ms, floor = sum(r["ms"] for r in graphs), sum(r["floor_ms"] for r in graphs)
        rows.append({"export": label, "precision": precision, "graph": f"3 graphs (T={queue_len})",
                     "gmac": round(sum(r["gmac"] for r in graphs), 3), "ms": round(ms, 2), "floor_ms": round(floor, 2),
                     "ratio": round(ms / floor, 2)})
    return rows


CAMERA = (1280, 720)  # a phone camera's 720p frames: the engine shrinks them to the export's size and back


def frame_rows(model_dir: Path, label: str, manifest, queue_len: int, threads: int, subgraphs: list[dict],
               frames: int = 40, passes: int = 3) -> list[dict]:
    """Whole frames of the example clip through the TFLite runtime (engine, memory, pre/post-processing), in
    `passes` runs of the clip on one backend:
    - every frame memorised: the fastest frame, against the three graphs' floor (as the graphs' rows take the
      fastest of several runs);
    - the default memory interval (every k-th frame memorised; the others skip the value encoder): the mean
      frame of the fastest pass, against the mean floor (key encoder + decoder + value encoder / k);
    - the same with the clip enlarged to CAMERA: what resizing each frame in and its masks out adds."""
    import cv2

    from mvos.runtime.inference import Segmenter, Timing, track
    from mvos.runtime.io import open_frames, read_mask
    from mvos.runtime.settings import DEFAULT, memory_engines
    from mvos.runtime.tflite import TFLiteBackend

    source = open_frames(REPO / "examples" / "dog.mp4")
    clip = [frame for _, frame in zip(range(frames), source)]
    mask = read_mask(REPO / "examples" / "dog_00000.png")
    camera = ([cv2.resize(frame, CAMERA, interpolation=cv2.INTER_LINEAR) for frame in clip],
              cv2.resize(mask, CAMERA, interpolation=cv2.INTER_NEAREST))
    every = DEFAULT.mem_every
    rows = []
    for precision, memory_precision in memory_engines(manifest.precisions()):
        backend = TFLiteBackend(model_dir, queue_len=queue_len, threads=threads, precision=precision,
                                memory_precision=memory_precision)
        memory = backend.memory_precision
        graph_row = {(r["precision"], r["graph"]): r for r in subgraphs if r["export"] == label}
        key, decoder = graph_row[(precision, "key_encoder")], graph_row[(precision, f"decoder_T{queue_len}")]
        memory_key, value = graph_row[(memory, "key_encoder")], graph_row[(memory, "value_encoder")]

        def floor_of(field: str, k: int) -> float:  # one frame in k memorised: it runs the memory's encoders
            return (key[field] * (k - 1) + memory_key[field] + value[field]) / k + decoder[field]

        for mem_every, (frames_in, given), size in ((1, (clip, mask), ""), (every, (clip, mask), ""),
                                                     (every, camera, f" at {CAMERA[0]}x{CAMERA[1]}")):
            settings = DEFAULT.replace(queue_len=queue_len, mem_every=mem_every)
            passes_ms = []  # per pass, its frames after the first (which only encodes the given mask)
            for _ in range(passes):
                timing = Timing()
                for result in track(Segmenter(backend, settings), frames_in, {0: (given, None)}):
                    timing.add(result)
                passes_ms.append(timing.steady)
            steady = [ms for p in passes_ms for ms in p]
            if mem_every == 1:
                row = {"graph": f"frame (T={queue_len})", "ms": float(np.min(steady))}
            else:
                row = {"graph": f"clip mean{size} (T={queue_len}, every {mem_every})",
                       "ms": min(float(np.mean(p)) for p in passes_ms)}
            row.update(gmac=round(floor_of("gmac", mem_every), 3), floor_ms=floor_of("floor_ms", mem_every))
            rows.append({"export": label, "precision": precision,
                         "memory_precision": memory_precision or "", **row, "ms": round(row["ms"], 2),
                         "median_ms": round(float(np.median(steady)), 2), "floor_ms": round(row["floor_ms"], 2),
                         "ratio": round(row["ms"] / row["floor_ms"], 2)})
    return rows


def target_lines(rows: list[dict], queue_len: int) -> list[str]:
    """The issue's targets, from this run's whole frames: the fp32 frame against its floor (1.5x), every other
    engine against fp32 (0.5x) both as a memorised frame and as a clip's mean (which frame the target means is
    the owner's call), and each clip mean against real time (33 ms)."""
    from mvos.device.plots import REALTIME_MS  # the line `mvos plot` draws
    from mvos.runtime.settings import engine_label

    frames = {}
    for r in rows:
        if r["export"] == "now" and r["graph"].startswith(("frame (", "clip mean (")):
            kind = "frame" if r["graph"].startswith("frame") else "clip mean"
            frames[(r["precision"], r.get("memory_precision") or "", kind)] = r

    def verdict(value: float, limit: float) -> str:
        return f"{value:.2f} (target <= {limit}: {'met' if value <= limit else 'not met'})"

    fp32 = {kind: frames.get(("fp32", "", kind)) for kind in ("frame", "clip mean")}
    if fp32["frame"] is None:
        return []
    lines = [f"targets at T={queue_len}: fp32 frame / its floor {verdict(fp32['frame']['ratio'], 1.5)}"]
    for (precision, memory, kind), r in sorted(frames.items()):
        engine = engine_label(precision, memory)
        if precision != "fp32" and fp32[kind] is not None:
            lines.append(f"  {engine:<18} {kind:<10} / fp32's: {verdict(r['ms'] / fp32[kind]['ms'], 0.5)}"
                         f"   (its floor / fp32's: {r['floor_ms'] / fp32[kind]['floor_ms']:.2f})")
        if kind == "clip mean":
            lines.append(f"  {engine:<18} clip mean {r['ms']:.1f} ms: real time (<= {REALTIME_MS:.1f} ms) "
                         f"{'met' if r['ms'] <= REALTIME_MS else 'not met'}")
    return lines


def prefix_graph(content: bytes, last: int) -> bytes:
    """The graph cut after op `last`: its outputs become the graph's outputs, later ops are dropped."""
    from mvos.export.graph_edit import pack, unpack

    model = unpack(content)
    graph = model.subgraphs[0]
    graph.operators = graph.operators[: last + 1]
    graph.outputs = list(graph.operators[-1].outputs)
    model.signatureDefs = []
    return pack(model)


def op_rows(model_dir: Path, manifest, precision: str, threads: int, runs: int) -> list[dict]:
    """Per-op milliseconds of every graph of one precision, by differences of prefix timings."""
    from mvos.export.ops import graph_macs

    rows = []
    for entry in [f for f in manifest.files if f.precision == precision]:
        content = (model_dir / entry.path).read_bytes()
        ops = graph_macs(content)
        previous = 0.0
        for index, (name, macs) in enumerate(ops):
            total = timed_ms(interpreter_runner(prefix_graph(content, index), threads), runs, 1)
            rows.append({"precision": precision, "graph": entry.key, "op": index, "name": name,
                         "mmac": round(macs / 1e6, 2), "ms": round(max(total - previous, 0.0), 3),
                         "cumulative_ms": round(total, 2)})
            previous = total
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an `mvos export` folder")
    parser.add_argument("--before", type=Path, default=None,
                        help="an older export of the same weights to compare with, measured in the same run")
    parser.add_argument("--queue-len", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ops", action="store_true", help="also time every op (prefix cuts; minutes)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/realtime"))
    args = parser.parse_args()

    from mvos.runtime.io import write_csv
    from mvos.runtime.manifest import Manifest
    from mvos.runtime.settings import engine_label

    manifest = Manifest.read(args.model_dir)
    rates = machine_rates(args.threads, args.runs)
    print(f"this machine, {args.threads} threads, LiteRT/XNNPACK GEMM {GEMM}: fp32 {rates['fp32']:.0f} GFLOP/s, "
          f"int8 {rates['int8']:.0f} GOP/s")
    rows = []
    if args.before is not None:
        before = subgraph_rows(args.before, "before", args.threads, args.runs, rates)
        rows += before + summed_frame_rows(before, args.queue_len)
    now = subgraph_rows(args.model_dir, "now", args.threads, args.runs, rates)
    rows += now + summed_frame_rows(now, args.queue_len)
    rows += frame_rows(args.model_dir, "now", manifest, args.queue_len, args.threads, now)
    print(f"{'export':<8}{'precision':<20}{'graph':<40}{'GMAC':>7}{'ms':>9}{'floor':>8}{'ratio':>7}")
    for r in rows:
        engine = engine_label(r["precision"], r.get("memory_precision"))
        print(f"{r['export']:<8}{engine:<20}{r['graph']:<40}{r['gmac']:>7.2f}{r['ms']:>9.1f}"
              f"{r['floor_ms']:>8.1f}{r['ratio']:>7.2f}")
    print("\n".join(target_lines(rows, args.queue_len)))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "realtime.csv", [{**r, "threads": args.threads, "size": "x".join(map(str, manifest.input_size)),
                                           "fp32_gflops": round(rates["fp32"], 1), "int8_gops": round(rates["int8"], 1)}
                                          for r in rows])
    print(f"wrote {args.out / 'realtime.csv'}")
    if args.ops:
        ops = [row for p in manifest.precisions() for row in op_rows(args.model_dir, manifest, p, args.threads, 3)]
        write_csv(args.out / "ops.csv", ops)
        slowest = sorted(ops, key=lambda r: -r["ms"])[:15]
        print("slowest ops:")
        for r in slowest:
            print(f"  {r['precision']:<6}{r['graph']:<15}#{r['op']:<4}{r['name']:<20}{r['mmac']:>9.1f} MMAC {r['ms']:>7.2f} ms")
        print(f"wrote {args.out / 'ops.csv'}")


if __name__ == "__main__":
    main()
