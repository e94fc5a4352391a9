"""The demo app's benchmark mode (android_app/): the app times N live camera frames, each graph and the whole
frame, and writes them as rows of the results CSV (source `app`) into its external files folder, where adb
can read them without root. `mvos bench --app` pulls that file and adds its rows beside benchmark_model's."""

from __future__ import annotations

import io

import pandas as pd

from mvos.device.adb import Device
from mvos.device.results import APP_SOURCE, WHOLE_FRAME, parse_results
from mvos.runtime.errors import MvosError
from mvos.runtime.manifest import SUBGRAPHS

APP_PACKAGE = "org.mobilevos.demo"
# Context.getExternalFilesDir(null) of the app, as adb sees it
APP_CSV = f"/sdcard/Android/data/{APP_PACKAGE}/files/benchmark.csv"


def app_rows(device: Device, remote: str = APP_CSV) -> list[dict]:
    """The app's rows from the device, checked, with the device named as `mvos bench` names it: an app
    cannot read the serial number, so its own `device` value is replaced by the one adb reports."""
    origin = f"{device.serial}:{remote}"
    data = device.read_file(remote)
    df = parse_results(io.BytesIO(data), origin)
    if df.empty:
        raise MvosError(f"{origin} has no rows: run the app's benchmark mode to the end first")
    if (df["source"] != APP_SOURCE).any():
        raise MvosError(f"{origin} is not the app's benchmark CSV (its source column is not '{APP_SOURCE}')")
    unknown = sorted(set(df["subgraph"]) - {*SUBGRAPHS, WHOLE_FRAME})
    if unknown:
        raise MvosError(f"{origin}: unknown subgraph(s) {', '.join(unknown)}")
    avg_us = pd.to_numeric(df["avg_us"], errors="coerce") if "avg_us" in df else None
    if avg_us is None or avg_us.isna().any() or (avg_us <= 0).any():
        raise MvosError(f"{origin}: avg_us must be a positive number of microseconds in every row")
    facts = device.facts()
    df["device"] = facts.device_id
    if facts.model:
        df["device_model"] = facts.model
    df["pulled_from"] = origin
    return df.to_dict("records")
