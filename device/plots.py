"""Plots of a results CSV: per-frame latency against memory queue length per variant (the layout of the
MobileVOS paper's Figure 4, with the 33 ms real-time line) and the per-subgraph stacked latency."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mvos.device.results import APP_SOURCE, per_frame_latency, read_results
from mvos.runtime.errors import MvosError
from mvos.runtime.io import atomic_path
from mvos.runtime.manifest import SUBGRAPHS
from mvos.runtime.settings import DEFAULT, engine_label

REALTIME_MS = 1000.0 / 30.0
SUBGRAPH_LABELS = {"key_encoder": "key encoder", "value_encoder": "value encoder", "decoder": "decoder"}
SUBGRAPH_COLORS = {"key_encoder": "#4c72b0", "value_encoder": "#dd8452", "decoder": "#55a868"}


def _series_label(row) -> str:
    app = ", app" if row.get("source") == APP_SOURCE else ""
    engine = engine_label(row["precision"], row.get("memory_precision"))
    return f"{row['variant']} ({engine}, {str(row['delegate']).upper()}{app})"


def _device_title(frame: pd.DataFrame, device: str) -> str:
    models = frame["device_model"].dropna() if "device_model" in frame else pd.Series(dtype=object)
    model = models.iloc[0] if len(models) else None
    return f"{model} ({device})" if model and model != device else str(device)


def _realtime_line(ax) -> None:
    ax.axhline(REALTIME_MS, color="crimson", linestyle="--", linewidth=1.2, label="33 ms (30 fps)")


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    return path


def plot_latency(frames: pd.DataFrame, out: Path) -> Path:
    """Latency per frame vs queue length T, one colour per variant/precision/delegate, one panel per device:
    a memorised frame (solid) and a clip's mean frame (dashed)."""
    devices = list(dict.fromkeys(frames["device"]))
    fig = Figure(figsize=(6.4 * len(devices), 4.6), layout="constrained")
    axes = fig.subplots(1, len(devices), squeeze=False)[0]
    for ax, device in zip(axes, devices):
        sub = frames[frames["device"] == device]
        for label, series in sub.groupby(sub.apply(_series_label, axis=1), sort=True):
            series = series.sort_values("queue_len")
            line, = ax.plot(series["queue_len"], series["frame_ms"], marker="o", linewidth=1.8, label=label)
            ax.plot(series["queue_len"], series["clip_mean_ms"], marker=".", linewidth=1.2, linestyle="--",
                    color=line.get_color())
            whole = series.dropna(subset=["measured_frame_ms"])
            if not whole.empty:  # the app's camera-to-overlay time, beside the sum of its graphs
                ax.plot(whole["queue_len"], whole["measured_frame_ms"], marker="x", markersize=9, linestyle="none",
                        color=line.get_color(), label=f"{label}: whole frame")
        _realtime_line(ax)
        ax.set_title(_device_title(sub, device))
        ax.set_xlabel("memory queue length T (frames)")
        ax.set_ylabel("latency per frame (ms)")
        top = max(REALTIME_MS, sub[["frame_ms", "clip_mean_ms", "measured_frame_ms"]].max().max())
        ax.set_ylim(bottom=0, top=top * 1.15)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    objects, every = int(frames["objects"].iloc[0]), int(frames["mem_every"].iloc[0])
    fig.suptitle(f"Per-frame latency, {objects} object{'s' * (objects > 1)}: a memorised frame (key + value "
                 f"encoder + decoder, solid)\nand the clip's mean frame, one in {every} memorised (dashed)")
    return _save(fig, out)


def plot_subgraphs(frames: pd.DataFrame, out: Path) -> Path:
    """Stacked per-subgraph latency over T, one panel per device and variant/precision/delegate."""
    panels = list(frames.groupby(["device", "variant", "precision", "memory_precision", "delegate", "source"],
                                 sort=True))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.2 * cols, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, ((device, *_), sub) in zip(axes, panels):
        sub = sub.sort_values("queue_len")
        x = [str(t) for t in sub["queue_len"]]
        bottom = pd.Series(0.0, index=sub.index)
        for name in SUBGRAPHS:
            height = sub[f"{name}_ms"] * (sub["objects"] if name == "value_encoder" else 1)
            ax.bar(x, height, bottom=bottom, color=SUBGRAPH_COLORS[name], label=SUBGRAPH_LABELS[name])
            bottom = bottom + height
        _realtime_line(ax)
        title = f"{_series_label(sub.iloc[0])}\n{_device_title(sub, device)}"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("memory queue length T (frames)")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0, top=max(REALTIME_MS, bottom.max()) * 1.15)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Latency per subgraph, a memorised frame")
    return _save(fig, out)


def subgraph_plot_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}_subgraphs{out.suffix or '.png'}")


def plot_paths(out: Path) -> list[Path]:
    """The two PNGs `plot_results` writes for `out`: the latency plot and `<out>_subgraphs.png` beside it."""
    out = Path(out)
    if out.suffix.lower() not in ("", ".png"):
        raise MvosError(f"{out}: plots are written as PNG (use a .png name)")
    out = out.with_suffix(".png")
    return [out, subgraph_plot_path(out)]


def plot_results(csv: Path, out: Path, objects: int = 1, mem_every: int = DEFAULT.mem_every) -> list[Path]:
    """Both figures for a results CSV (see `plot_paths`)."""
    out = plot_paths(out)[0]
    frames = per_frame_latency(read_results(csv), objects=objects, mem_every=mem_every)
    if frames.empty:
        raise MvosError(
            f"{csv} has no complete point to plot (each needs key_encoder and value_encoder rows and a decoder row)"
        )
    return [plot_latency(frames, out), plot_subgraphs(frames, subgraph_plot_path(out))]
