"""Memory state for the space-time memory read: the one implementation shared by the PyTorch engine, the
TFLite runtime and (as documented in the export manifest) the Android app.

Keys are stored per frame as (Ck, h, w) and values as (N*Cv, h, w) (all objects of a group stacked on
channels), so a slot is one index along the first axis and the decoder graph takes rank-4 tensors.
"""

from __future__ import annotations

import torch

MAX_QUEUE_LEN = 20


class FixedQueueMemory:
    """T slots: slot 0 holds the reference frame (where the objects were given) for the whole video,
    slots 1..T-1 a ring of the most recent frames. Memory size never changes after the first write.

    Before T-1 frames have been memorised, the unwritten recent slots still hold the reference frame: the
    same rule a phone with fixed-shape buffers follows, so every backend computes the same thing. (With
    T=2, duplicating the only frame leaves the softmax read exactly unchanged.)
    """

    def __init__(self, queue_len: int = 2):
        if not 1 <= queue_len <= MAX_QUEUE_LEN:
            raise ValueError(f"queue length must be in 1..{MAX_QUEUE_LEN}, got {queue_len}")
        self.queue_len = queue_len
        self.keys: torch.Tensor | None = None  # T,Ck,h,w
        self.values: torch.Tensor | None = None  # T,N*Cv,h,w
        self.frame_of_slot: list[int] = []
        self.writes = 0  # frames memorised after the reference frame

    @property
    def empty(self) -> bool:
        return self.keys is None

    def wants(self, frame_index: int) -> bool:
        """Whether writing this frame changes the memory (T=1 never needs values after the reference)."""
        return self.empty or self.queue_len > 1

    def write(self, key: torch.Tensor, value: torch.Tensor, frame_index: int) -> None:
        """key: Ck,h,w ; value: N*Cv,h,w."""
        if self.empty:
            t = self.queue_len
            self.keys = key.unsqueeze(0).repeat(t, 1, 1, 1).contiguous()
            self.values = value.unsqueeze(0).repeat(t, 1, 1, 1).contiguous()
            self.frame_of_slot = [frame_index] * t
            return
        if self.queue_len == 1:
            return
        slot = self.next_slot()
        self.keys[slot] = key
        self.values[slot] = value
        self.frame_of_slot[slot] = frame_index
        self.writes += 1

    def next_slot(self) -> int:
        return 1 + self.writes % (self.queue_len - 1)

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

    def __init__(self, every: int = 5):
        if every < 1:
            raise ValueError(f"memory interval must be >= 1, got {every}")
        self.every = every
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
        if (frame_index - self.reference_frame) % self.every == 0:
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


def make_memory(mode: str = "fixed", queue_len: int = 2, every: int = 5) -> FixedQueueMemory | UnboundedMemory:
    if mode == "fixed":
        return FixedQueueMemory(queue_len)
    if mode == "unbounded":
        return UnboundedMemory(every)
    raise ValueError(f"unknown memory mode {mode!r} (fixed | unbounded)")
