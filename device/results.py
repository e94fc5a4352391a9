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

KEY_COLUMNS = ("device", "variant", "precision", "delegate", "queue_len", "subgraph", "source")
# Results written before `source` existed were all measured by benchmark_model (or the host tool).
LEGACY_SOURCE = "benchmark_model"
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
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise MvosError(f"{origin} is not a results CSV: missing column(s) {', '.join(missing)}")
    queue_len = pd.to_numeric(df["queue_len"], errors="coerce")
    if queue_len.isna().any() or (queue_len % 1 != 0).any():
        raise MvosError(f"{origin}: queue_len must be a whole number in every row")
    df["queue_len"] = queue_len.astype(int)
    return df


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append `rows` to the CSV: read what is there, concatenate, write a temporary file, replace."""
    path = Path(path)
    new = pd.DataFrame(rows)
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


def per_frame_latency(df: pd.DataFrame, objects: int = 1) -> pd.DataFrame:
    """Per-frame latency for each decoder queue length:
    key encoder + value encoder + decoder, plus the value encoder once more per extra object.

    Uses `avg_us` (steady-state average) of the newest row per point; encoder rows are matched
    regardless of T. Points without both encoders are left out. Times are returned in ms. Where the app
    also timed its whole frame (camera image to overlay), that is `measured_frame_ms`."""
    if objects < 1:
        raise MvosError(f"objects must be at least 1, got {objects}")
    latest = df.drop_duplicates(list(KEY_COLUMNS), keep="last")
    enc = latest[latest["subgraph"].isin(ENCODERS)].drop_duplicates(_GROUP + ["subgraph"], keep="last")
    enc = enc.pivot(index=_GROUP, columns="subgraph", values="avg_us").reset_index()
    dec = latest[latest["subgraph"] == "decoder"]
    if dec.empty or not set(ENCODERS) <= set(enc.columns):
        return pd.DataFrame(columns=[*_GROUP, "queue_len", *(f"{s}_ms" for s in SUBGRAPHS), "frame_ms",
                                     "measured_frame_ms"])
    extra = [c for c in ("device_model",) if c in dec.columns]
    out = dec[_GROUP + ["queue_len", "avg_us"] + extra].merge(enc, on=_GROUP, how="inner")
    out = out.dropna(subset=["avg_us", *ENCODERS])
    out = out.rename(columns={"avg_us": "decoder"})
    for name in SUBGRAPHS:
        out[f"{name}_ms"] = out[name] / 1000.0
    out["frame_ms"] = out["key_encoder_ms"] + objects * out["value_encoder_ms"] + out["decoder_ms"]
    out["objects"] = objects
    whole = latest[latest["subgraph"] == WHOLE_FRAME][[*_GROUP, "queue_len", "avg_us"]]
    out = out.merge(whole.rename(columns={"avg_us": "measured_frame_us"}), on=[*_GROUP, "queue_len"], how="left")
    out["measured_frame_ms"] = out["measured_frame_us"] / 1000.0
    cols = [*_GROUP, *extra, "queue_len", "objects", "key_encoder_ms", "value_encoder_ms", "decoder_ms", "frame_ms",
            "measured_frame_ms"]
    return out[cols].sort_values([*_GROUP, "queue_len"]).reset_index(drop=True)
