"""The memory protocol: the one definition of what the space-time memory holds and how it is updated. The
PyTorch engine, the training rollout, the TFLite runtime and the Android core follow it; the export manifest's
`memory` description is generated from it (`protocol_description`).

Fixed queue of T slots (T in 1..MAX_QUEUE_LEN):
- the frame where objects are given (the reference) writes its key and values into every slot, so slot 0
  holds it for the whole video;
- every K-th frame after the reference is memorised (`memorised`, K = the inference settings' `mem_every`);
  the frames between only read the memory. K > 1 is faster (no value encoder on those frames) and tracks
  better: training clips' frames are several frames apart, and each memorised frame can carry its errors on;
- each memorised frame writes into slot `write_slot(writes, T)` = 1 + (writes % (T-1)), round robin over
  1..T-1, where `writes` counts the frames memorised after the reference; T=1 never writes again;
- a frame's value is encoded per object from the object's aggregated probability (`mask`) and the other
  objects' (`others_mask`: their sum clamped to 0..1); the objects' values are stacked on channels.

Keys are stored per frame as (Ck, h, w) and values as (N*Cv, h, w), so a slot is one index along the first
axis and the decoder graph takes rank-4 tensors.
"""

from __future__ import annotations

import torch

from mvos.runtime.errors import MvosError

MIN_QUEUE_LEN = 1
MAX_QUEUE_LEN = 20
MEMORY_MODES = ("fixed", "unbounded")


def check_queue_len(queue_len: int, what: str = "queue length") -> int:
    if isinstance(queue_len, bool) or not isinstance(queue_len, int) or not MIN_QUEUE_LEN <= queue_len <= MAX_QUEUE_LEN:
        raise MvosError(f"{what} must be in {MIN_QUEUE_LEN}..{MAX_QUEUE_LEN}, got {queue_len}")
    return queue_len


def check_mem_every(every: int) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise MvosError(f"memory interval (mem_every) must be at least 1, got {every}")
    return every


def parse_queue_lens(values: tuple[str, ...] | list[str]) -> list[int]:
    """'2', '1,2,5', '1..20' (inclusive), repeatable -> sorted distinct queue lengths, each checked."""
    out: set[int] = set()
    for value in values:
        for part in str(value).replace(" ", "").split(","):
            try:
                if ".." in part:
                    lo, hi = (int(x) for x in part.split(".."))
                    out.update(range(lo, hi + 1) if lo <= hi else [lo])
                else:
                    out.add(int(part))
            except ValueError:
                raise MvosError(f"--queue-len {value!r}: expected N, N,M,... or A..B") from None
    for t in sorted(out):
        check_queue_len(t, f"--queue-len {t} is out of range: queue lengths")
    return sorted(out)


def memorised(frame_index: int, reference_index: int, every: int) -> bool:
    """Whether a frame is memorised: the reference (where the objects were given) and every `every`-th frame
    after it."""
    return (frame_index - reference_index) % every == 0


def write_slot(writes: int, queue_len: int) -> int | None:
    """The slot a frame memorised after `writes` earlier ones (reference excluded) overwrites; None for T=1."""
    return None if queue_len == 1 else 1 + writes % (queue_len - 1)


def slot_frames(writes: int, queue_len: int) -> list[int]:
    """What each slot holds after the reference and `writes` later frames were memorised: 0 for the reference,
    k for the k-th frame memorised after it."""
    slots = [0] * queue_len
    for k in range(writes):
        slot = write_slot(k, queue_len)
        if slot is not None:
            slots[slot] = k + 1
    return slots


def others_mask(probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The value encoder's "others" input per object: the sum of the other objects' probabilities, in 0..1."""
    return (probs.sum(dim=dim, keepdim=True) - probs).clamp(0, 1)


def protocol_description(mem_every: int) -> dict:
    """The protocol as the export manifest records it, with worked sequences the Android core checks.
    `mem_every`: the interval an engine uses unless told otherwise (the inference settings' default)."""
    return {
        "slots": "T = the decoder's queue length; mem_keys T,Ck,h,w (channels first) and mem_values T,h,w,N*Cv "
                 "(channels last), the layouts the memory read's two matrix products take",
        "queue_length_range": [MIN_QUEUE_LEN, MAX_QUEUE_LEN],
        "first_frame": "write its key and value into every slot (slot 0 keeps it for the whole video)",
        "mem_every": mem_every,
        "memorised": "the first frame and every mem_every-th frame after it; the frames between only read",
        "later_frames": "a memorised frame writes into slot 1 + (writes % (T-1)), writes = frames memorised after "
                        "the first; T=1 never writes again",
        "value": "run value_encoder once per object: mask = its aggregated probability, others = "
                 "clamp(sum of all objects' probabilities - mask, 0, 1); stack the objects' values on channels",
        "write_slots": {str(t): [write_slot(k, t) for k in range(6)] for t in (1, 2, 3, 5)},
        "memorised_frames": {str(k): [f for f in range(12) if memorised(f, 0, k)] for k in (1, 2, 5)},
    }


def slots_like(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` slots filled with x (C,h,w), in x's memory layout: channels-last values stay so, so a backend
    whose graphs take NHWC value slots (TFLite) reads them without a transpose."""
    layout = torch.channels_last if x.shape[0] > 1 and x.stride(0) == 1 else torch.contiguous_format
    slots = torch.empty((count, *x.shape), dtype=x.dtype, device=x.device, memory_format=layout)
    slots[:] = x
    return slots


class FixedQueueMemory:
    """T slots: slot 0 holds the reference frame (where the objects were given) for the whole video,
    slots 1..T-1 a ring of the most recent frames. Memory size never changes after the first write.

    Before T-1 frames have been memorised, the unwritten recent slots still hold the reference frame: the
    same rule a phone with fixed-shape buffers follows, so every backend computes the same thing. (With
    T=2, duplicating the only frame leaves the softmax read exactly unchanged.)
    """

    def __init__(self, queue_len: int, every: int = 1):
        self.queue_len = check_queue_len(queue_len)
        self.every = check_mem_every(every)
        self.keys: torch.Tensor | None = None  # T,Ck,h,w
        self.values: torch.Tensor | None = None  # T,N*Cv,h,w
        self.frame_of_slot: list[int] = []
        self.writes = 0  # frames memorised after the reference frame

    @property
    def empty(self) -> bool:
        return self.keys is None

    def wants(self, frame_index: int) -> bool:
        """Whether this frame is memorised (T=1 never needs values after the reference, which slot 0 holds)."""
        return self.empty or (self.queue_len > 1 and memorised(frame_index, self.frame_of_slot[0], self.every))

    def write(self, key: torch.Tensor, value: torch.Tensor, frame_index: int) -> None:
        """key: Ck,h,w ; value: N*Cv,h,w, of a frame `wants` chose. Written in place: the slots are allocated once."""
        if self.empty:
            t = self.queue_len
            self.keys = slots_like(key, t)
            self.values = slots_like(value, t)
            self.frame_of_slot = [frame_index] * t
            return
        slot = write_slot(self.writes, self.queue_len)
        if slot is None:
            return
        self.keys[slot] = key
        self.values[slot] = value
        self.frame_of_slot[slot] = frame_index
        self.writes += 1

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """keys T,Ck,h,w ; values T,N*Cv,h,w (the fixed-shape state the decoder graph takes)."""
        if self.empty:
            raise RuntimeError("memory read before the first write")
        return self.keys, self.values

    def frames(self) -> list[int]:
        """Distinct frame indices currently in memory (for tests and debugging)."""
        return sorted(set(self.frame_of_slot))

    def nbytes(self) -> int:
        return 0 if self.empty else self.keys.nbytes + self.values.nbytes


class UnboundedMemory:
    """STCN's growing memory, for comparison: the reference frame and every `every`-th frame are kept
    for good, and the last frame is kept as a temporary entry until the next one replaces it."""

    def __init__(self, every: int):
        self.every = check_mem_every(every)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.frame_indices: list[int] = []
        self.temporary: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.reference_frame: int | None = None

    @property
    def empty(self) -> bool:
        return not self.keys

    def wants(self, frame_index: int) -> bool:
        return True

    def write(self, key: torch.Tensor, value: torch.Tensor, frame_index: int) -> None:
        if self.reference_frame is None:
            self.reference_frame = frame_index
        if memorised(frame_index, self.reference_frame, self.every):
            self.keys.append(key)
            self.values.append(value)
            self.frame_indices.append(frame_index)
            self.temporary = None
        else:
            self.temporary = (key, value, frame_index)

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.empty:
            raise RuntimeError("memory read before the first write")
        keys, values = list(self.keys), list(self.values)
        if self.temporary is not None:
            keys.append(self.temporary[0])
            values.append(self.temporary[1])
        return torch.stack(keys), torch.stack(values)

    def frames(self) -> list[int]:
        extra = [self.temporary[2]] if self.temporary is not None else []
        return sorted(set(self.frame_indices + extra))

    def nbytes(self) -> int:
        entries = list(zip(self.keys, self.values))
        if self.temporary is not None:
            entries.append(self.temporary[:2])
        return sum(k.nbytes + v.nbytes for k, v in entries)


def make_memory(mode: str, queue_len: int, every: int) -> FixedQueueMemory | UnboundedMemory:
    if mode == "fixed":
        return FixedQueueMemory(queue_len, every)
    if mode == "unbounded":
        return UnboundedMemory(every)
    raise MvosError(f"unknown memory mode {mode!r} ({' | '.join(MEMORY_MODES)})")
