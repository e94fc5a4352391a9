"""STCN (Cheng et al., NeurIPS 2021), the MobileVOS teacher, with the state_dict of the official code.

Key names and shapes match `hkchengrex/STCN` `model/eval_network.py` exactly, so the published `stcn.pth`
loads strictly:
  key_encoder.{conv1,bn1,res2,layer2,layer3}   torchvision ResNet50 up to layer3 (`res2` is layer1)
  key_proj.key_proj                            3x3 conv 1024 -> 64 (keys)
  key_comp                                     3x3 conv 1024 -> 512 (query value)
  value_encoder.{conv1,bn1,layer1..3}          ResNet18 up to layer3, 5 input channels, convs with biases
  value_encoder.fuser.{block1,attention,block2} fusion of [mask features 256, key f16 1024] with CBAM
  decoder.{compress,up_16_8,up_8_4,pred}

It exposes the stage API of `MobileVOS` (encode_key / encode_value / decode / segment, logits and z), so the
training step and the inference engine run either. The one difference: STCN's value encoder also sees the
RGB frame, so `encode_value` takes it (see `encode_value` below for the dispatch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mvos.runtime.backbones import check_state_dict, read_state_dict, resnet18, resnet50
from mvos.runtime.model import KeyFeatures, QueryFeatures, config_from_dict, memory_readout
from mvos.runtime.modules import Decoder, FeatureFusionBlock, KeyProjection
from mvos.runtime.settings import InferenceSettings

# Every top-level key prefix of the official checkpoint (tests check each one is present).
STCN_KEY_PREFIXES = (
    "key_encoder.conv1.", "key_encoder.bn1.", "key_encoder.res2.", "key_encoder.layer2.", "key_encoder.layer3.",
    "key_proj.key_proj.", "key_comp.",
    "value_encoder.conv1.", "value_encoder.bn1.", "value_encoder.layer1.", "value_encoder.layer2.",
    "value_encoder.layer3.", "value_encoder.fuser.block1.", "value_encoder.fuser.attention.",
    "value_encoder.fuser.block2.",
    "decoder.compress.", "decoder.up_16_8.", "decoder.up_8_4.", "decoder.pred.",
)
# How STCN segments at test time: a growing memory (a frame every 5) read with top-k 20.
STCN_SETTINGS = InferenceSettings(memory="unbounded", mem_every=5, top_k=20)


@dataclass(frozen=True)
class STCNConfig:
    """Only what the engine and `describe()` read; the architecture itself is fixed by the checkpoint."""

    key_dim: int = 64
    value_dim: int = 512
    decoder_dims: tuple[int, int, int] = (512, 256, 256)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "STCNConfig":
        return config_from_dict(cls, data, "STCN")


class KeyEncoder(nn.Module):
    """torchvision ResNet50 to layer3, with STCN's attribute names (layer1 is `res2`)."""

    def __init__(self):
        super().__init__()
        resnet = resnet50()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.res2, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(frame))))  # B,64,H/4,W/4
        f4 = self.res2(x)  # B,256,H/4,W/4
        f8 = self.layer2(f4)  # B,512,H/8,W/8
        f16 = self.layer3(f8)  # B,1024,H/16,W/16
        return f16, f8, f4


class ValueEncoder(nn.Module):
    """STCN's mod_resnet ResNet18 (biases on every conv) over RGB + mask + other objects, to layer3."""

    def __init__(self):
        super().__init__()
        resnet = resnet18(in_channels=5, bias=True)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.fuser = FeatureFusionBlock(256 + 1024, 512)

    def forward(self, frame: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor,
                others: torch.Tensor) -> torch.Tensor:
        # frame BN,3,H,W ; key_f16 BN,1024,h,w ; masks, others BN,1,H,W -> BN,512,h,w
        x = torch.cat([frame, masks, others], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))  # BN,256,h,w
        # The fuser concatenates its arguments in order; STCN's order is [mask features, key f16], which the
        # weights of fuser.block1 depend on.
        return self.fuser(x, key_f16)


class STCN(nn.Module):
    variant = "stcn"

    def __init__(self, config: STCNConfig | None = None):
        super().__init__()
        self.config = config or STCNConfig()
        self.key_encoder = KeyEncoder()
        self.value_encoder = ValueEncoder()
        self.key_proj = KeyProjection(1024, 64)
        self.key_comp = nn.Conv2d(1024, 512, 3, padding=1)
        self.decoder = Decoder(1024, 512, 256, (512, 256, 256))

    def encode_key(self, frame: torch.Tensor) -> KeyFeatures:
        f16, f8, f4 = self.key_encoder(frame)  # frame: B,3,H,W ImageNet-normalised
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), f16, f8, f4)

    def encode_value(self, frame: torch.Tensor, features: KeyFeatures, masks: torch.Tensor,
                     others: torch.Tensor) -> torch.Tensor:
        """frame B,3,H,W ; masks, others B*N,1,H,W -> B*N,512,h,w (objects consecutive). STCN's value encoder
        reads the RGB frame with the masks, fused with the key encoder's f16."""
        f16 = features.f16
        objects = masks.shape[0] // frame.shape[0]
        if objects > 1:  # objects of a frame share its image and key features
            frame, f16 = frame.repeat_interleave(objects, dim=0), f16.repeat_interleave(objects, dim=0)
        return self.value_encoder(frame, f16, masks, others)

    def decode(self, query_value: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
               readout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """readout B*N,512,h,w -> logits B*N,1,H,W and z B*N,256,H/4,W/4 (as STCN: [readout, query value])."""
        objects = readout.shape[0] // query_value.shape[0]
        if objects > 1:
            query_value, f8, f4 = (t.repeat_interleave(objects, dim=0) for t in (query_value, f8, f4))
        logits, z = self.decoder(torch.cat([readout, query_value], dim=1), f8, f4)  # BN,1,H/4,W/4
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False), z

    def segment(self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                num_objects: int, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """memory_keys B,64,M ; memory_values B,M,N*512 -> logits B*N,1,H,W and z B*N,256,H/4,W/4."""
        b, _, h, w = query.key.shape
        readout = memory_readout(query.key, memory_keys, memory_values, top_k)  # B,N*512,h,w
        return self.decode(query.value, query.f8, query.f4, readout.reshape(b * num_objects, -1, h, w))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def decoder_channels(model: nn.Module) -> int:
    """Channels of z, the decoder features the representation loss compares."""
    return model.decoder.pred.in_channels


def load_stcn_weights(model: STCN, path: str | Path) -> STCN:
    """Loads a published STCN checkpoint strictly; any missing, extra or reshaped tensor is a one-line error."""
    return load_stcn_state(model, read_state_dict(path), f"STCN (the official hkchengrex/STCN layout) in {path}")


def load_stcn_state(model: STCN, state: dict[str, torch.Tensor], what: str = "STCN") -> STCN:
    own = model.state_dict()
    # BatchNorm's batch counters are bookkeeping, not weights: accept checkpoints saved without them.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    check_state_dict(own, state, what)  # before loading, so a bad checkpoint leaves the model untouched
    model.load_state_dict(state, strict=True)
    return model


def build_stcn(weights: str | Path | None = None) -> STCN:
    model = STCN(STCNConfig())
    if weights is not None:
        load_stcn_weights(model, weights)
    return model.eval()
