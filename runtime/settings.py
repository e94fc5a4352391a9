"""How a video is segmented: the one place the inference settings and their defaults are written. The segment
and eval commands, training validation, the teacher, soups, exports and the benchmarks all take an
`InferenceSettings`; the CLI's options are generated from its fields."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mvos.runtime.errors import MvosError
from mvos.runtime.memory import MEMORY_MODES, check_mem_every, check_queue_len

BACKENDS = ("torch", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")  # exported TFLite precisions, most accurate first
MIN_SIZE = 16  # one stride


@dataclass(frozen=True)
class InferenceSettings:
    queue_len: int = 2  # memory frames: the first frame + the T-1 most recent (paper: T=2)
    memory: str = "fixed"  # fixed (constant cost) | unbounded (STCN's growing memory, for comparison)
    # Memorise every k-th frame after the reference, so the recent slots hold older frames, as in the training
    # clips (frames 1-6 apart), and fewer frames carry their errors into the memory. Validation J&F (shipped
    # weights, docs/training.md): 0.646 (k=1), 0.725 (2), 0.745 (5), 0.765 (10), 0.771 (15), 0.762 (20); 10 is
    # the freshest memory on that plateau.
    mem_every: int = 10
    size: int | None = 480  # short side frames are resized to (PyTorch backend); None keeps their size
    top_k: int | None = None  # the memory read keeps the k best matches per query pixel; None reads all
    backend: str = "torch"  # torch | tflite (an `mvos export` folder)
    precision: str = "fp32"  # which exported files the tflite backend runs
    # Which exported files encode the frames the memory keeps (None: `precision`). Every later frame reads them,
    # so int8 reading a memory made by the fp32 encoders follows fp32 far more closely (the dog clip's one-step
    # IoU 0.92 -> 0.97, docs/benchmarks.md) for the float encoders' cost on one frame in `mem_every`.
    memory_precision: str | None = None
    threads: int | None = None  # CPU threads; None leaves the library default

    def __post_init__(self):
        check_queue_len(self.queue_len)
        check_mem_every(self.mem_every)
        checks = [
            (self.memory in MEMORY_MODES, f"memory must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}"),
            (self.size is None or self.size >= MIN_SIZE, f"size must be at least {MIN_SIZE}, got {self.size}"),
            (self.top_k is None or self.top_k >= 1, f"top_k must be at least 1, got {self.top_k}"),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.memory_precision in (None, *PRECISIONS),
             f"memory precision must be one of {', '.join(PRECISIONS)}, got {self.memory_precision!r}"),
            (self.memory_precision is None or self.backend == "tflite",
             "a memory precision is for the TFLite backend (the PyTorch backend runs fp32 throughout)"),
            (self.memory_precision not in PRECISIONS or self.precision not in PRECISIONS
             or PRECISIONS.index(self.memory_precision) <= PRECISIONS.index(self.precision),
             f"memory precision {self.memory_precision} is less exact than precision {self.precision}: the memory "
             f"is read by every later frame, so its encoders are at least as exact"),
            (self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
            (self.backend == "torch" or self.memory == "fixed", "the TFLite backend runs the fixed-queue memory only"),
        ]
        for ok, message in checks:
            if not ok:
                raise MvosError(message)

    def replace(self, **changes) -> "InferenceSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, options: dict) -> "InferenceSettings":
        """The settings among a command's keyword arguments (other keys ignored; None keeps the default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})


def memory_engines(precisions: list[str]) -> list[tuple[str, str | None]]:
    """The (precision, memory precision) pairs an export's checks and the benchmarks run, given its complete
    precisions most exact first: each one alone (None), then each less exact one reading a memory made by the
    most exact one's encoders."""
    return [(p, None) for p in precisions] + [(p, precisions[0]) for p in precisions[1:]]


def engine_label(precision: str, memory_precision: str | None) -> str:
    """How reports name an engine: its precision, and the memory's where another precision's encoders make it."""
    return f"{precision}, {memory_precision} memory" if memory_precision else precision


DEFAULT = InferenceSettings()
# Exports take one fixed size: the default short side at 16:9, padded to the stride (480x864).
DEFAULT_EXPORT_SIZE = f"{DEFAULT.size}x{math.ceil(DEFAULT.size * 16 / 9 / MIN_SIZE) * MIN_SIZE}"
