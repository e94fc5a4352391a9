"""Video frames in, masks in and out. Frames are RGB uint8 (H,W,3); masks are uint8 (H,W) object ids.
Everything written goes to a temporary name first and is renamed into place when complete."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from mvos.runtime.errors import MvosError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _davis_palette() -> np.ndarray:
    """The DAVIS/PASCAL VOC palette: colour i is built from the bits of i."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


DAVIS_PALETTE = _davis_palette()


# ------------------------------------------------------------------------------------------------- frames


@dataclass
class FrameSource:
    """Frames of a video file or a folder of images, read lazily."""

    path: Path
    frame_paths: list[Path] | None  # None for a video file
    num_frames: int
    fps: float
    size: tuple[int, int]  # H, W

    def __len__(self) -> int:
        return self.num_frames

    def frame(self, index: int) -> np.ndarray:
        """One frame, by index (a video is read up to it)."""
        if self.frame_paths is not None:
            return read_image(self.frame_paths[index])
        for position, frame in enumerate(self):
            if position == index:
                return frame
        raise MvosError(f"{self.path} has no frame {index}")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.frame_paths is not None:
            for path in self.frame_paths:
                yield read_image(path)
            return
        capture = cv2.VideoCapture(str(self.path))
        try:
            for index in range(self.num_frames):
                ok, bgr = capture.read()
                if not ok:
                    if index == 0:
                        raise MvosError(f"cannot decode any frame of {self.path}")
                    return  # containers often over-report the frame count
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


def open_frames(path: str | Path) -> FrameSource:
    path = Path(path)
    if not path.exists():
        raise MvosError(f"input not found: {path}")
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise MvosError(f"no JPEG/PNG frames in folder {path}")
        first = read_image(frames[0])
        return FrameSource(path, frames, len(frames), 30.0, first.shape[:2])
    capture = cv2.VideoCapture(str(path))
    try:
        ok, bgr = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            raise MvosError(f"cannot read video {path} (not a video file, corrupt, or an unsupported codec)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    finally:
        capture.release()
    if count <= 0:
        raise MvosError(f"video {path} reports no frames")
    return FrameSource(path, None, count, float(fps), bgr.shape[:2])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a Path when it is a file; otherwise one line saying it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise MvosError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise MvosError(f"{what} not found: {path}")
    return path


def read_image(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only arrays
    except (UnidentifiedImageError, OSError) as exc:
        raise MvosError(f"cannot read image {path}: {exc}") from None


# -------------------------------------------------------------------------------------------------- masks


def read_mask(path: str | Path) -> np.ndarray:
    """A mask as object ids: DAVIS palette PNG (indices), grayscale (0/255 -> 0/1, or small ids as they are),
    or an RGB colour mask (each distinct non-black colour an object, numbered in order of first appearance
    in raster order)."""
    path = require_file(path, "mask")
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode == "P":
                return np.asarray(image).astype(np.uint8)
            if mode in ("1", "L", "I", "I;16", "F"):
                array = np.asarray(image.convert("L"))
                return _grayscale_ids(array, path)
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise MvosError(f"cannot read mask {path}: {exc}") from None
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _grayscale_ids(rgb[..., 0], path)
    return _colour_ids(rgb, path)


def _grayscale_ids(array: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(array)
    if set(values.tolist()) <= {0, 255}:
        return (array == 255).astype(np.uint8)
    if values.max() < 128:  # already object ids
        return array.astype(np.uint8)
    # Anti-aliased or JPEG-ish binary masks: threshold rather than invent objects.
    if len(values) > 32:
        return (array >= 128).astype(np.uint8)
    raise MvosError(f"mask {path} has grey levels {values[:8].tolist()}...: expected 0/255 or object ids")


def _colour_ids(rgb: np.ndarray, path: Path) -> np.ndarray:
    flat = rgb.reshape(-1, 3).astype(np.int32)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    unique, first_index, inverse = np.unique(codes, return_index=True, return_inverse=True)
    objects = [u for u in unique[np.argsort(first_index)] if u != 0]
    if len(objects) > 255:
        raise MvosError(f"mask {path} has {len(objects)} colours: more than 255 objects (is it a photo, not a mask?)")
    lookup = np.zeros(len(unique), dtype=np.uint8)
    for object_id, code in enumerate(objects, start=1):
        lookup[np.searchsorted(unique, code)] = object_id
    return lookup[inverse].reshape(rgb.shape[:2])


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (H, W), so no new ids appear at edges."""
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def palette_image(mask: np.ndarray) -> Image.Image:
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    return image


def write_palette_png(path: str | Path, mask: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        palette_image(mask).save(tmp, format="PNG")


def make_parent(path: Path) -> None:
    """Creates the folder an output file or folder goes into, or says in one line why it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MvosError(f"cannot write to {path.parent}: {exc.strerror}") from None


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB frame with each object tinted in its palette colour and outlined."""
    colours = DAVIS_PALETTE[mask]
    out = frame.copy()
    on = mask > 0
    out[on] = (frame[on] * (1 - alpha) + colours[on] * alpha).astype(np.uint8)
    edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = colours[edges] if edges.any() else out[edges]
    return out


class OverlayWriter:
    """An MP4 of the frames with their masks, written to a temporary file and renamed on close."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        make_parent(self.path)  # `--overlay out/dog.mp4` on a fresh checkout: out/ does not exist yet
        remove_stale_partials(self.path)
        self.tmp = self.path.with_name(_staging_name(self.path, ".mp4"))  # OpenCV picks the container by suffix
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
        if not self.writer.isOpened():
            raise MvosError(f"cannot write overlay video {self.path}")

    def write(self, frame: np.ndarray, mask: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(overlay(frame, mask), cv2.COLOR_RGB2BGR))

    def close(self, keep: bool = True) -> None:
        self.writer.release()
        if keep:
            apply_umask(self.tmp)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ output policy
# Every command that writes follows these rules: nothing it did not create is deleted, moved or overwritten;
# an output that is, holds or lies inside an input is refused; an existing output is replaced only with
# --overwrite and only once the new one is complete; a killed run's leftovers are removed by the next run
# into the same place; files and folders get the permissions the umask gives.


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path, folder: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give them what an ordinary create would (0644/0755 under 022)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def check_output(path: str | Path, *, inputs: tuple = (), overwrite: bool = False, merges: bool = False,
                 flag: str = "--out", merge_flag: str | None = None) -> Path:
    """Applies the output policy to `path` before anything is computed; returns it.

    Refused with one line: an output that is, contains or lies inside one of `inputs` (whatever the flags);
    an existing non-empty output without `overwrite`, unless the command merges into its own earlier output
    (`merges`, which `merge_flag` names in the refusal).
    """
    path = Path(path)
    out = _resolved(path)
    for given in inputs:
        if given is None:
            continue
        source = _resolved(given)
        relation = ("is the input" if out == source else "lies inside the input" if source in out.parents
                    else "contains the input" if out in source.parents else None)
        if relation:
            raise MvosError(f"{flag} {path} {relation} {given}: choose an output path apart from the inputs")
    if not path.exists() and not path.is_symlink():
        return path
    if merges:
        return path
    if path.is_dir() and not any(path.iterdir()):
        return path
    if not overwrite:
        kind = "folder" if path.is_dir() else "file"
        add = f"{merge_flag} to add to it, " if merge_flag else ""
        raise MvosError(f"{flag} {path} is an existing {kind}: pass {add}--overwrite to replace it, "
                        "or choose another path")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _partial_prefix(path: Path) -> str:
    return f".{path.name}.partial-"


def remove_stale_partials(path: Path) -> None:
    """Removes what a killed run left beside `path` (its staging names carry the writer's PID)."""
    prefix = _partial_prefix(path)
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for entry in siblings:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _staging_name(path: Path, suffix: str = "") -> str:
    return f"{_partial_prefix(path)}{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}"


def staging_path(path: str | Path) -> Path:
    """A fresh name beside `path` for building its replacement; a killed run's is removed by the next run."""
    path = Path(path)
    make_parent(path)
    remove_stale_partials(path)
    return path.with_name(_staging_name(path, path.suffix))


# ---------------------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it into place only if the block succeeds."""
    path = Path(path)
    make_parent(path)
    remove_stale_partials(path)
    tmp = path.with_name(_staging_name(path, path.suffix))
    try:
        tmp.touch(mode=0o666)  # the umask applies, as for any file the user creates
    except OSError as exc:
        raise MvosError(f"cannot write {path}: {exc.strerror}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Rows as a CSV with a header, written atomically; columns default to every key in order of appearance."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def staged_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder beside `path`; on success it replaces `path` whole, on failure it is
    removed, so a folder at `path` is always either the previous complete result or the new one.
    Callers check the output policy first (`check_output`): this replaces what is at `path`."""
    path = Path(path)
    make_parent(path)
    remove_stale_partials(path)
    staging = path.with_name(_staging_name(path))
    try:
        staging.mkdir(mode=0o777)
    except OSError as exc:
        raise MvosError(f"cannot write to {path.parent}: {exc.strerror}") from None
    try:
        yield staging
        if path.exists() or path.is_symlink():
            old = path.with_name(_staging_name(path, ".old"))
            os.replace(path, old)
            os.replace(staging, path)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
