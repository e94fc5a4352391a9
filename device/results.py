"""The results CSV: one row per (device, variant, precision, delegate, queue length T, subgraph, source),
with the benchmark statistics and the device facts. Rows are appended as they are measured (atomically, so
a killed run leaves a valid file) and re-measuring a point appends a newer row that wins over the older.
`source` says who measured: `benchmark_model` (the official tool on a phone), `litert-benchmark` (the
host tool) or `app` (the demo app's benchmark mode, live camera frames, pulled by `mvos bench --app`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mvos.runtime.errors import MvosError
from mvos.runtime.io import atomic_path, require_file
from mvos.runtime.manifest import ENCODERS, SUBGRAPHS
from mvos.runtime.memory import check_mem_every
from mvos.runtime.settings import DEFAULT, PRECISIONS, memory_engines

KEY_COLUMNS = ("device", "variant", "precision", "delegate", "queue_len", "subgraph", "source", "memory_precision")
# Results written before `source` existed were all measured by benchmark_model (or the host tool).
LEGACY_SOURCE = "benchmark_model"
# Empty but for the app's whole frame when it ran with `--memory-precision` (each graph's row is that graph's
# precision); absent from rows written before it existed and from the graph sweeps.
OWN_MEMORY = ""
APP_SOURCE = "app"
# The app's row for its whole frame: pre-processing, the graphs (once per object) and the overlay.
WHOLE_FRAME = "frame"
# The encoders do not depend on the memory queue: they are measured once and recorded with T = 0.
ENCODER_QUEUE_LEN = 0
_GROUP = ["device", "variant", "precision", "delegate", "source"]
_STR_KEYS = {c: str for c in KEY_COLUMNS if c != "queue_len"}


def point_key(row: dict) -> tuple:
    """The identity of a measured point, as `finished_points` returns it."""
    return tuple(int(row[c]) if c == "queue_len" else str(row[c]) for c in KEY_COLUMNS)


def read_results(path: Path) -> pd.DataFrame:
    path = require_file(path, "results file")
    return parse_results(path, str(path))


def parse_results(source, origin: str) -> pd.DataFrame:
    """A results table from a path or a file-like object; `origin` names it in errors."""
    try:
        df = pd.read_csv(source, dtype=_STR_KEYS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MvosError(f"{origin} is not a results CSV: {str(exc).splitlines()[0]}") from None
    if "source" not in df.columns:
        df["source"] = LEGACY_SOURCE
    df = _own_memory_by_default(df)
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise MvosError(f"{origin} is not a results CSV: missing column(s) {', '.join(missing)}")
    queue_len = pd.to_numeric(df["queue_len"], errors="coerce")
    if queue_len.isna().any() or (queue_len % 1 != 0).any():
        raise MvosError(f"{origin}: queue_len must be a whole number in every row")
    df["queue_len"] = queue_len.astype(int)
    return df


def _own_memory_by_default(df: pd.DataFrame) -> pd.DataFrame:
    """`memory_precision` filled in where a row has none (CSV readers give empty fields as NaN)."""
    own = df["memory_precision"].fillna(OWN_MEMORY) if "memory_precision" in df.columns else OWN_MEMORY
    return df.assign(memory_precision=own)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append `rows` to the CSV: read what is there, concatenate, write a temporary file, replace."""
    path = Path(path)
    new = _own_memory_by_default(pd.DataFrame(rows))
    missing = [c for c in KEY_COLUMNS if c not in new.columns]
    if missing:
        raise MvosError(f"result rows lack the key column(s) {', '.join(missing)}")
    df = pd.concat([read_results(path), new], ignore_index=True) if path.exists() else new
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def finished_points(path: Path) -> set[tuple]:
    """Keys of the points already in the CSV (empty when it does not exist yet), for --resume."""
    path = Path(path)
    if not path.exists():
        return set()
    df = read_results(path)
    return {point_key(row) for row in df[list(KEY_COLUMNS)].to_dict("records")}


def per_frame_latency(df: pd.DataFrame, objects: int = 1, mem_every: int = DEFAULT.mem_every) -> pd.DataFrame:
    """Per-frame latency for each decoder queue length, from the graphs' times (`avg_us` of the newest row per
    point; encoder rows are matched regardless of T), in ms:

    - `frame_ms`, a memorised frame (the one the objects are given on, then one in `mem_every`): key encoder +
      value encoder once per object + decoder; `key_encoder_ms`.. are that frame's;
    - `clip_mean_ms`, the mean frame of a clip that memorises one frame in `mem_every`: the other frames run no
      value encoder.

    A less exact precision measured beside a more exact one's encoders also gets a row with that
    `memory_precision` (`runtime.settings.memory_engines`, as `--memory-precision` runs it): its memorised frames
    through the more exact encoders, the others through its own key encoder, every frame through its own decoder.
    Points without their graphs' times are left out. Where the app also timed its whole frame (camera image to
    overlay, the mean over its frames), that is `measured_frame_ms`."""
    if objects < 1:
        raise MvosError(f"objects must be at least 1, got {objects}")
    check_mem_every(mem_every)
    point = ["device", "variant", "delegate", "source"]
    columns = [*_GROUP, "memory_precision", "queue_len", "objects", "mem_every",
               *(f"{s}_ms" for s in SUBGRAPHS), "frame_ms", "clip_mean_ms", "measured_frame_ms"]
    latest = _own_memory_by_default(df).drop_duplicates(list(KEY_COLUMNS), keep="last")
    graphs = latest[latest["subgraph"].isin(ENCODERS) & latest["avg_us"].notna()]
    graphs = graphs.drop_duplicates(_GROUP + ["subgraph"], keep="last")
    encoder_us = {(*(r[c] for c in point), r["precision"], r["subgraph"]): r["avg_us"] for r in graphs.to_dict("records")}
    measured = {}  # per point, the precisions with any encoder time
    for (*where, precision, _), _ in encoder_us.items():
        measured.setdefault(tuple(where), set()).add(precision)
    decoders = latest[(latest["subgraph"] == "decoder") & latest["avg_us"].notna()]
    extra = [c for c in ("device_model",) if c in decoders.columns]
    rows = []
    for decoder in decoders.to_dict("records"):
        where, precision = tuple(decoder[c] for c in point), decoder["precision"]
        exported = [p for p in PRECISIONS if p in measured.get(where, ())]
        engines = [(precision, None)] + [pair for pair in memory_engines(exported)[len(exported):]
                                         if pair[0] == precision]
        for own, memory in engines:
            times = {"own_key_encoder": encoder_us.get((*where, own, "key_encoder")),
                     **{graph: encoder_us.get((*where, memory or own, graph)) for graph in ENCODERS}}
            if any(t is None for t in times.values()):
                continue
            rows.append({**{c: decoder[c] for c in [*_GROUP, "queue_len", *extra]},
                         "memory_precision": memory or OWN_MEMORY, "decoder": decoder["avg_us"], **times})
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows)
    for name in SUBGRAPHS:
        out[f"{name}_ms"] = out[name] / 1000.0
    value_ms = objects * out["value_encoder_ms"]
    out["frame_ms"] = out["key_encoder_ms"] + value_ms + out["decoder_ms"]
    out["clip_mean_ms"] = ((mem_every - 1) * out["own_key_encoder"] / 1000.0 + out["key_encoder_ms"] + value_ms) \
        / mem_every + out["decoder_ms"]
    out["objects"], out["mem_every"] = objects, mem_every
    whole = latest[latest["subgraph"] == WHOLE_FRAME][[*_GROUP, "memory_precision", "queue_len", "avg_us"]]
    out = out.merge(whole.rename(columns={"avg_us": "measured_frame_us"}),
                    on=[*_GROUP, "memory_precision", "queue_len"], how="left")
    out["measured_frame_ms"] = out["measured_frame_us"] / 1000.0
    columns[len(_GROUP) + 1:len(_GROUP) + 1] = extra
    return out[columns].sort_values([*_GROUP, "memory_precision", "queue_len"]).reset_index(drop=True)
