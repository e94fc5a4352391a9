"""Synthetic DAVIS-layout generator: layout, palette, ids, determinism, atomic replacement, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mvos.runtime.errors import MvosError
from mvos.runtime.io import DAVIS_PALETTE
from mvos.training.synth import generate, split_names

SIZE = (64, 96)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_palette_and_ids(tmp_path):
    out = tmp_path / "ds"
    split = generate(out, sequences=3, frames=4, size=SIZE, objects=(2, 3), seed=1, progress=False)
    names = ["synth0000", "synth0001", "synth0002"]
    assert split == {"train": names[:2], "val": names[2:]}
    assert (out / "ImageSets/2017/train.txt").read_text() == "synth0000\nsynth0001\n"
    assert (out / "ImageSets/2017/val.txt").read_text() == "synth0002\n"
    for name in names:
        jpgs = sorted((out / "JPEGImages/480p" / name).iterdir())
        pngs = sorted((out / "Annotations/480p" / name).iterdir())
        assert [p.name for p in jpgs] == [f"{t:05d}.jpg" for t in range(4)]
        assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(4)]
        assert cv2.imread(str(jpgs[0])).shape == (*SIZE, 3)
        first = Image.open(pngs[0])
        assert first.mode == "P" and first.size == (SIZE[1], SIZE[0])
        assert first.getpalette()[:256 * 3] == DAVIS_PALETTE.flatten().tolist()
        ids = np.unique(np.array(first))
        # every object is visible in frame 0 and ids are 0 plus a contiguous 1..K with K in the asked range
        assert ids[0] == 0 and ids[1:].tolist() == list(range(1, len(ids))) and len(ids) - 1 in (2, 3)
        later = np.array(Image.open(pngs[-1]))
        assert set(np.unique(later)) <= set(ids.tolist())
        assert (later != np.array(first)).any()  # things move
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp folders left behind


def test_deterministic_with_seed_and_prefix_stable(tmp_path):
    generate(tmp_path / "a", 2, 3, SIZE, seed=7, progress=False)
    generate(tmp_path / "b", 2, 3, SIZE, seed=7, progress=False)
    generate(tmp_path / "c", 2, 3, SIZE, seed=8, progress=False)
    generate(tmp_path / "d", 3, 3, SIZE, seed=7, progress=False)
    fa, fb, fc, fd = (_files(tmp_path / k) for k in "abcd")
    assert fa == fb
    assert fa != fc
    # the first sequences do not depend on how many are generated
    for key, data in fa.items():
        if key.startswith(("JPEGImages", "Annotations")):
            assert fd[key] == data


def test_refuses_non_empty_out_and_overwrites_atomically(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(MvosError, match="existing folder: pass --overwrite"):
        generate(out, 1, 2, SIZE, progress=False)
    assert (out / "keep.txt").exists()
    generate(out, 1, 2, SIZE, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "JPEGImages/480p/synth0000/00001.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    with pytest.raises(MvosError, match="objects"):
        generate(tmp_path / "bad", 1, 2, SIZE, objects=(0, 2), progress=False)


def test_split_names():
    names = [str(i) for i in range(10)]
    assert split_names(names, 0.2) == (names[:8], names[8:])
    assert split_names(names[:2], 0.2) == (names[:1], names[1:2])  # val never empty with 2+ sequences
    assert split_names(names[:1], 0.2) == (names[:1], [])
    assert split_names(names, 0.0) == (names, [])


def test_cli(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-c", "from mvos.cli import main; main()", "synth", "--out", str(out),
         "--sequences", "2", "--frames", "3", "--size", "48x64", "--objects", "1", "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wrote 2 sequences x 3 frames" in run.stdout
    assert np.unique(np.array(Image.open(out / "Annotations/480p/synth0001/00000.png"))).tolist() == [0, 1]
    bad = subprocess.run(
        [sys.executable, "-c", "from mvos.cli import main; main()", "synth", "--out", str(tmp_path / "x"),
         "--size", "48by64"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --size")
