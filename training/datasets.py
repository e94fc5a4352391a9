"""Readers for the DAVIS 2016/2017 and YouTube-VOS 2019 folder layouts.

DAVIS 2017: ROOT/JPEGImages/480p/<seq>/*.jpg, ROOT/Annotations/480p/<seq>/*.png (palette object
ids, 255 = void), split lists ROOT/ImageSets/2017/<split>.txt or ROOT/ImageSets/<split>.txt.
DAVIS 2016: the same folders, split lists ROOT/ImageSets/480p/<split>.txt (lines of image/mask
paths) or ImageSets/2016/<split>.txt; masks are 0/255 and every object is one (the union).
YouTube-VOS 2019: ROOT/<split>/JPEGImages/<vid>/<frame>.jpg, ROOT/<split>/Annotations/<vid>/<frame>.png
only where an object first appears, ROOT/<split>/meta.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mvos.runtime.errors import MvosError

DATASETS = ("davis2017", "davis2016", "ytvos2019")
VOID_LABEL = 255  # DAVIS 2017 "don't care" pixels; in DAVIS 2016 masks 255 is the object
FRAME_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class Sequence:
    name: str
    frame_paths: list[Path]  # every frame, sorted
    mask_paths: dict[int, Path]  # frame index -> annotation PNG, every frame that has one (DAVIS: all;
    # YouTube-VOS valid: only frames where objects first appear; YouTube-VOS train: every 5th frame)
    object_ids: list[int]  # all object ids annotated in the sequence (from the masks / meta.json)
    object_starts: dict[int, int] = field(default_factory=dict)  # object id -> frame index of its first mask


def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise MvosError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def read_id_png(path: Path) -> np.ndarray:
    """uint8 HxW pixel values of a palette or grayscale PNG, as stored (no id mapping)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1"):
                raise MvosError(f"{path} is a {img.mode} image; expected a palette or grayscale PNG of object ids")
            return np.array(img, dtype=np.uint8)
    except OSError as exc:
        raise MvosError(f"cannot read mask {path}: {exc}") from None


def read_annotation_and_void(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxW object ids, bool HxW void) of an annotation PNG. davis2016: any non-zero pixel is
    object 1 and nothing is void; otherwise 255 is void and becomes 0 in the ids."""
    ids = read_id_png(path)
    if dataset == "davis2016":
        return (ids > 0).astype(np.uint8), np.zeros(ids.shape, dtype=bool)
    void = ids == VOID_LABEL
    ids[void] = 0
    return ids, void


def read_annotation(path: Path, dataset: str) -> np.ndarray:
    """uint8 HxW object ids of an annotation PNG (davis2016: 0/255 -> 0/1 union; void -> 0)."""
    return read_annotation_and_void(path, dataset)[0]


def _ids_present(ids: np.ndarray) -> set[int]:
    """Non-zero ids in a uint8 id map (bincount: much faster than np.unique on 480p masks)."""
    return {int(i) for i in np.flatnonzero(np.bincount(ids.ravel(), minlength=256)) if i}


def load_dataset(name: str, root: Path, split: str, sequences: list[str] | None = None) -> list[Sequence]:
    """Every sequence of `split` (or only `sequences`, in the split's order), frames sorted."""
    check_dataset_name(name)
    root = Path(root)
    if not root.is_dir():
        raise MvosError(f"dataset root {root} does not exist")
    if name == "ytvos2019":
        split_dir = _ytvos_split_dir(root, split)
        names = sorted(p.name for p in (split_dir / "JPEGImages").iterdir() if p.is_dir())
        if not names:
            raise MvosError(f"split {split!r} is empty: no videos in {split_dir / 'JPEGImages'}")
        meta = _ytvos_meta(split_dir)
        names = _filter(names, sequences, split)
        return [_ytvos_sequence(split_dir, vid, meta.get(vid)) for vid in names]
    names = _filter(_davis_split_names(root, name, split), sequences, split)
    return [_davis_sequence(root, seq, name) for seq in names]


def _filter(names: list[str], wanted: list[str] | None, split: str) -> list[str]:
    if not wanted:
        return names
    missing = [w for w in wanted if w not in names]
    if missing:
        raise MvosError(f"sequence(s) not in split {split!r}: {', '.join(missing)}")
    keep = set(wanted)
    return [n for n in names if n in keep]


def _list_frames(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS) if folder.is_dir() else []


# Where each DAVIS flavour keeps its split lists, in order of preference.
SPLIT_FOLDERS = {
    "davis2017": ["ImageSets/2017", "ImageSets"],
    "davis2016": ["ImageSets/480p", "ImageSets/2016", "ImageSets"],
}


def _davis_split_names(root: Path, dataset: str, split: str) -> list[str]:
    candidates = SPLIT_FOLDERS[dataset]
    for folder in candidates:
        split_file = root / folder / f"{split}.txt"
        if split_file.is_file():
            break
    else:
        tried = ", ".join(f"{f}/{split}.txt" for f in candidates)
        raise MvosError(f"no split list for {split!r} in {root} (looked for {tried})")
    names: list[str] = []
    for line in split_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        # DAVIS 2016 lists "/JPEGImages/480p/<seq>/00000.jpg /Annotations/480p/<seq>/00000.png".
        seq = Path(line.split()[0]).parent.name if "/" in line else line
        if seq not in names:
            names.append(seq)
    if not names:
        raise MvosError(f"split {split!r} is empty: {split_file} lists no sequences")
    return names


def _annotation_paths(name: str, mask_dir: Path, index: dict[str, int]) -> dict[int, Path]:
    """frame index -> annotation PNG; every PNG must name a frame (index: frame stem -> index)."""
    masks = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
    stray = [m.name for m in masks if m.stem not in index]
    if stray:
        raise MvosError(f"sequence {name}: annotation {stray[0]} has no matching frame in JPEGImages")
    return {index[m.stem]: m for m in masks}


def _first_appearances(mask_paths: dict[int, Path], dataset: str) -> dict[int, int]:
    """object id -> first frame index whose annotation contains it (reads every annotation)."""
    starts: dict[int, int] = {}
    for t, path in mask_paths.items():
        for object_id in sorted(_ids_present(read_annotation(path, dataset))):
            starts.setdefault(object_id, t)
    return starts


def _davis_sequence(root: Path, seq: str, dataset: str) -> Sequence:
    frames = _list_frames(root / "JPEGImages" / "480p" / seq)
    if not frames:
        raise MvosError(f"sequence {seq}: no frames in {root / 'JPEGImages' / '480p' / seq}")
    mask_dir = root / "Annotations" / "480p" / seq
    mask_paths = _annotation_paths(seq, mask_dir, {f.stem: i for i, f in enumerate(frames)})
    if 0 not in mask_paths:
        raise MvosError(f"sequence {seq}: the first frame {frames[0].name} has no mask in {mask_dir}")
    starts = _first_appearances(mask_paths, dataset)
    return Sequence(seq, frames, mask_paths, sorted(starts), dict(sorted(starts.items())))


def _ytvos_split_dir(root: Path, split: str) -> Path:
    # The official folders are train/valid/test; accept "val" for "valid".
    for name in (split, {"val": "valid"}.get(split, split)):
        if (root / name / "JPEGImages").is_dir():
            return root / name
    raise MvosError(f"no YouTube-VOS split {split!r} in {root} (expected {root / split / 'JPEGImages'})")


def _ytvos_meta(split_dir: Path) -> dict:
    meta_path = split_dir / "meta.json"
    if not meta_path.is_file():
        return {}
    try:
        return json.loads(meta_path.read_text())["videos"]
    except (ValueError, KeyError) as exc:
        raise MvosError(f"{meta_path} is not a YouTube-VOS meta.json ({exc})") from None


def _ytvos_sequence(split_dir: Path, vid: str, meta: dict | None) -> Sequence:
    frames = _list_frames(split_dir / "JPEGImages" / vid)
    if not frames:
        raise MvosError(f"video {vid}: no frames in {split_dir / 'JPEGImages' / vid}")
    index = {f.stem: i for i, f in enumerate(frames)}
    mask_paths = _annotation_paths(vid, split_dir / "Annotations" / vid, index)
    if not mask_paths:
        raise MvosError(f"video {vid}: no annotated frames in {split_dir / 'Annotations' / vid}")
    if meta is None:
        starts = _first_appearances(mask_paths, "ytvos2019")
    else:
        # meta.json lists each object's frames; its mask is in the PNG of the first one.
        starts = {}
        for object_id, obj in meta.get("objects", {}).items():
            first = (obj.get("frames") or [None])[0]
            if index.get(first) not in mask_paths:
                raise MvosError(f"video {vid}: meta.json starts object {object_id} at frame {first}, "
                                f"which has no annotation PNG")
            starts[int(object_id)] = index[first]
    return Sequence(vid, frames, mask_paths, sorted(starts), dict(sorted(starts.items())))
