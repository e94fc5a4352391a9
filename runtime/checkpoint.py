"""Model checkpoints: one file holding the variant, its config and weights, so a checkpoint alone rebuilds
the model. Training adds optimiser/scheduler/RNG state under extra keys; inference ignores them."""

from __future__ import annotations

from pathlib import Path

import torch

from mvos import __version__
from mvos.runtime.backbones import check_state_dict
from mvos.runtime.errors import MvosError
from mvos.runtime.io import atomic_path, require_file
from mvos.runtime.model import MobileVOS, MobileVOSConfig

FORMAT = "mobilevos-checkpoint"


def checkpoint_dict(model: MobileVOS, **extra) -> dict:
    return {"format": FORMAT, "format_version": 1, "mvos_version": __version__, "variant": model.variant,
            "config": model.config.to_dict(), "model": model.state_dict(), **extra}


def save_checkpoint(path: str | Path, model: MobileVOS, half: bool = False, **extra) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact. `half` stores floating-point weights
    in fp16 (half the size; loading casts them back to the model's fp32)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = checkpoint_dict(model, **extra)
    if half:
        data["model"] = {k: v.half() if v.is_floating_point() else v for k, v in data["model"].items()}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def read_checkpoint(path: str | Path) -> dict:
    path = require_file(path, "checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise MvosError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MvosError(f"{path} is not a mobilevos checkpoint (train one with `mvos train`)")
    return data


def load_checkpoint(path: str | Path, expect_variant: str | None = None) -> MobileVOS:
    data = read_checkpoint(path)
    variant = data["variant"]
    if expect_variant is not None and expect_variant != variant:
        raise MvosError(f"checkpoint {path} is a {variant!r} model, not {expect_variant!r}")
    model = MobileVOS(MobileVOSConfig.from_dict(data["config"]), variant=variant)
    check_state_dict(model.state_dict(), data["model"], f"the {variant} model in {path}")
    model.load_state_dict(data["model"])
    return model.eval()
