"""Where a run trains: the device (CPU or a CUDA GPU), its mixed precision, and, when started by torchrun,
the process group (NCCL on GPUs, gloo on CPUs). One process per device; the config's batch size is per
process, so the global batch is batch_size x world_size.

    torchrun --standalone --nproc_per_node 2 $(which mvos) train --config ...        # one machine
    torchrun --nnodes 2 --node_rank R --rdzv_endpoint HOST:29500 --nproc_per_node 4 $(which mvos) train ...
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mvos.runtime.errors import MvosError

DEVICES = ("auto", "cpu", "cuda")
# Validation runs on rank 0 while the others wait at a barrier: allow it minutes, not the 10 s of a hung peer.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    """auto: the GPU of this process when CUDA is there, else the CPU."""
    if option not in DEVICES:
        raise MvosError(f"device must be one of {', '.join(DEVICES)}, got {option!r}")
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MvosError("--device cuda: this PyTorch sees no CUDA GPU (a CPU build, or no driver)")
    if local_rank >= torch.cuda.device_count():
        raise MvosError(f"process {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                        f"start at most that many processes per node")
    return torch.device("cuda", local_rank)


def resolve_precision(option: str, device: torch.device) -> str:
    """auto: bf16 where the device computes it natively (Ampere+ GPUs, CPUs with AVX512-BF16), else fp16 with a
    gradient scaler on GPUs and fp32 on CPUs."""
    if option != "auto":
        if option == "fp16" and device.type == "cpu":
            raise MvosError("precision fp16 is for GPUs; use bf16 (or auto) on a CPU")
        return option
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average over processes of each value (what one process with the global batch would log)."""
        if not self.distributed:
            return values
        names = sorted(values)
        tensor = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(tensor)
        return {n: float(v) / self.world_size for n, v in zip(names, tensor.tolist())}

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order (on every process)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def share(self, obj):
        """Rank 0's `obj` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def start(device_option: str, precision_option: str) -> Runtime:
    """This process's runtime; under torchrun (WORLD_SIZE > 1) joins the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_option, local_rank)
    precision = resolve_precision(precision_option, device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise MvosError(f"cannot join the {world_size}-process group ({backend}): "
                            f"{str(exc).splitlines()[0]}") from None
    return Runtime(device, precision, rank, world_size, local_rank)


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
