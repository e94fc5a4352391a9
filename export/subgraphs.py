"""The three fixed-shape graphs a phone runs, as torch modules with named inputs and outputs.

Each wraps the model's own stage methods (the decoder goes through `TorchBackend.decode`, the same code the
PyTorch engine runs), so the only things here are the explicit memory state, NHWC inputs and outputs, and a
conversion workaround, all numerically exact and checked by the parity tests against the unmodified model.

Tensors are NHWC, the layout TFLite kernels and GPU delegates compute in (with NCHW edges the converter wraps
each graph in transposes), except the keys: the memory read multiplies query keys (HW x Ck) by memory keys
(Ck x M), so the frame's key and mem_keys are channels first (1,Ck,h,w ; T,Ck,h,w), while memory values are
position-major (T,h,w,N*Cv), what the read's second product takes.

Shapes: H,W input size; h,w = H/16,W/16; Ck key dim; Cv value dim; T queue length; N max objects.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvos.runtime.errors import MvosError
from mvos.runtime.inference import TorchBackend
from mvos.runtime.manifest import SUBGRAPHS, graph_key
from mvos.runtime.memory import check_queue_len, others_mask
from mvos.runtime.model import STRIDE, KeyFeatures, MobileVOS, QueryFeatures

# What each named tensor is, for the manifest (the Android app and the device benchmark read these).
MEANINGS = {
    "frame": "RGB frame in [0,1] normalised by (x-mean)/std, zero-padded bottom/right to the input size (NHWC)",
    "key": "query key of the frame (also what the host writes into a memory slot)",
    "value": "query value: compressed stride-16 features (STCN key_comp) fed to the decoder",
    "f16": "stride-16 backbone features (input of the value encoder)",
    "f8": "stride-8 skip features for the decoder",
    "f4": "stride-4 skip features for the decoder",
    "mask": "the object's probability map (aggregated result of the frame), 0..1",
    "others": "sum of the other objects' probabilities, clamped to 0..1",
    "mem_keys": "memory keys, one slot per row: slot 0 = reference frame, 1..T-1 = recent frames (ring)",
    "mem_values": "memory values, one slot per row; object i uses channels i*Cv..(i+1)*Cv-1 (zeros = unused)",
    "logits": "per-object mask logits (sigmoid = object probability); the host soft-aggregates the objects",
}


MEMORY_SIDE = ("key",)  # key encoder outputs that go into memory slots (channels first)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def parse_size(text: str) -> tuple[int, int]:
    """'480x864' (HxW) or '480' (square) -> (H, W), each a positive multiple of the stride."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise MvosError(f"size {text!r} is not HxW (e.g. 480x864)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise MvosError(f"size {text!r} is not HxW (e.g. 480x864)")
    return check_size(tuple(parts))


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise MvosError(f"input size {h}x{w} must be positive multiples of {STRIDE} (the network stride), "
                        f"e.g. {max(1, round(h / STRIDE)) * STRIDE}x{max(1, round(w / STRIDE)) * STRIDE}")
    return h, w


# ------------------------------------------------------------------------------------- conversion fixes


def _tile_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """1,... -> n,... by concatenation. `repeat_interleave` (what `MobileVOS.decode` uses for objects) lowers
    to BROADCAST_TO, which computes correctly but is not a GPU delegate op; CONCATENATION is. With the query
    features already n-batched, `decode` sees one object per query and repeats nothing."""
    return x if n == 1 else torch.cat([x] * n, dim=0)


# ---------------------------------------------------------------------------------------------- subgraphs


class KeyEncoderGraph(nn.Module):
    def __init__(self, model: MobileVOS):
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model.encode_key(nchw(frame))  # frame 1,H,W,3
        # key 1,Ck,h,w (what goes into memory) ; value 1,h,w,Cv ; f16 1,h,w,C16 ; f8, f4 NHWC
        return {name: t if name in MEMORY_SIDE else nhwc(t) for name, t in features._asdict().items()}


class ValueEncoderGraph(nn.Module):
    """One object per call (batch 1); the host runs it once per object."""

    def __init__(self, model: MobileVOS):
        super().__init__()
        self.model = model

    def forward(self, f16: torch.Tensor, mask: torch.Tensor, others: torch.Tensor) -> dict[str, torch.Tensor]:
        # MobileVOS's value encoder reads the key encoder's f16 and the masks, not the frame itself.
        value = self.model.value_encoder(nchw(f16), nchw(mask), nchw(others))  # 1,h,w,C16 ; 1,H,W,1 x2
        return {"value": nhwc(value)}  # 1,h,w,Cv: what goes into a memory slot


class DecoderGraph(nn.Module):
    """Query features + the explicit memory state (T slots) -> per-object logits (the host aggregates them, as
    the engine and the Android core do: an in-graph aggregation at full resolution would cost a dozen more
    passes over the frame, and int8 cannot hold its log-odds)."""

    def __init__(self, model: MobileVOS, max_objects: int = 1, top_k: int | None = None):
        super().__init__()
        self.backend = TorchBackend(model, top_k)
        self.model = model  # registers the weights with this module
        self.max_objects = max_objects

    def forward(self, key: torch.Tensor, value: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                mem_keys: torch.Tensor, mem_values: torch.Tensor) -> dict[str, torch.Tensor]:
        # key 1,Ck,h,w ; value 1,h,w,Cv ; f8 1,2h,2w,C8 ; f4 1,4h,4w,C4 ; mem_keys T,Ck,h,w ; mem_values T,h,w,N*Cv
        n = self.max_objects
        query = QueryFeatures(key, _tile_batch(nchw(value), n), _tile_batch(nchw(f8), n), _tile_batch(nchw(f4), n))
        logits = self.backend.decode(query, mem_keys, nchw(mem_values), n)  # N,1,H,W
        return {"logits": nhwc(logits)}  # N,H,W,1


# ----------------------------------------------------------------------------------------- shapes/inputs


@dataclass(frozen=True)
class GraphSpec:
    """A subgraph to convert: its module, input shapes in signature order, output names in order."""

    subgraph: str
    queue_len: int | None
    size: tuple[int, int]  # H,W of the frame
    module: nn.Module
    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]

    @property
    def key(self) -> str:
        return graph_key(self.subgraph, self.queue_len)


def feature_shapes(model: MobileVOS, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the key encoder's outputs at this input size (traced on the meta device: no compute)."""
    with torch.device("meta"):
        frame = torch.empty(1, 3, *size)
    meta = copy.deepcopy(model).to("meta")
    with torch.no_grad():
        features = meta.encode_key(frame)
    return {name: tuple(t.shape if name in MEMORY_SIDE else nhwc(t).shape)  # as the graphs give them
            for name, t in features._asdict().items()}


def graph_specs(model: MobileVOS, size: tuple[int, int], queue_lens: list[int], max_objects: int = 1,
                subgraphs: tuple[str, ...] = SUBGRAPHS, top_k: int | None = None) -> list[GraphSpec]:
    """The graphs of one export."""
    size = check_size(size)
    shapes = feature_shapes(model, size)
    h, w = size
    ck, cv = shapes["key"][1], model.config.value_dim
    fh, fw = shapes["key"][2:]
    specs = []
    if "key_encoder" in subgraphs:
        specs.append(GraphSpec("key_encoder", None, size, KeyEncoderGraph(model).eval(), {"frame": (1, h, w, 3)},
                               KeyFeatures._fields))
    if "value_encoder" in subgraphs:
        specs.append(GraphSpec("value_encoder", None, size, ValueEncoderGraph(model).eval(),
                               {"f16": shapes["f16"], "mask": (1, h, w, 1), "others": (1, h, w, 1)}, ("value",)))
    if "decoder" in subgraphs:
        for t in queue_lens:
            check_queue_len(t)
            inputs = {"key": shapes["key"], "value": shapes["value"], "f8": shapes["f8"], "f4": shapes["f4"],
                      "mem_keys": (t, ck, fh, fw), "mem_values": (t, fh, fw, max_objects * cv)}
            specs.append(GraphSpec("decoder", t, size, DecoderGraph(model, max_objects, top_k).eval(), inputs,
                                   ("logits",)))
    return specs


def sample_inputs(spec: GraphSpec, model: MobileVOS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs with the statistics the graph sees in use: features come from running the model's key
    and value encoders on random frames and soft random masks (so int8/fp16 errors are measured where the
    activations actually live, not on unit Gaussians)."""
    g = torch.Generator().manual_seed(seed)
    n_frames = spec.queue_len or 1
    h, w = spec.size
    frames = torch.randn(n_frames + 1, 3, h, w, generator=g)
    if spec.subgraph == "key_encoder":
        return {"frame": nhwc(frames[:1]).contiguous()}
    with torch.no_grad():
        features = [model.encode_key(frames[i:i + 1]) for i in range(n_frames + 1)]
    if spec.subgraph == "value_encoder":
        mask, others = _soft_masks(g, 2, h, w).split(1)
        return {"f16": nhwc(features[0].f16).contiguous(), "mask": nhwc(mask).contiguous(),
                "others": nhwc(others).contiguous()}
    n = spec.inputs["mem_values"][3] // model.config.value_dim
    keys, values = [], []
    with torch.no_grad():
        for i, f in enumerate(features[1:], 1):
            masks = _soft_masks(g, n, h, w)
            keys.append(f.key[0])
            values.append(model.encode_value(frames[i:i + 1], f, masks, others_mask(masks, dim=0))
                          .reshape(-1, *f.key.shape[2:]))
    query = features[0]
    return {"key": query.key, "value": nhwc(query.value).contiguous(), "f8": nhwc(query.f8).contiguous(),
            "f4": nhwc(query.f4).contiguous(), "mem_keys": torch.stack(keys),
            "mem_values": nhwc(torch.stack(values)).contiguous()}


def _soft_masks(g: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """n,1,h,w random blobs in 0..1 with soft edges, like aggregated probabilities."""
    coarse = torch.rand(n, 1, max(2, h // 16), max(2, w // 16), generator=g)
    return torch.sigmoid(12 * (F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) - 0.6))
