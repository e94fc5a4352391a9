"""STCN-style building blocks shared by the MobileVOS student and the STCN teacher.
Attribute names follow STCN's code so the teacher can load a published STCN checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """Pre-activation residual block; a 3x3 `downsample` conv matches channels (STCN names it so)."""

    def __init__(self, indim: int, outdim: int | None = None):
        super().__init__()
        outdim = outdim or indim
        self.downsample = None if indim == outdim else nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # `mlp.1` / `mlp.3` are the Linear layers, as in STCN's cbam.py (Flatten at index 0).
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))  # B,C
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))  # B,C
        return x * torch.sigmoid(avg + mx)[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = BasicConv(2, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # B,2,H,W
        return x * torch.sigmoid(self.spatial(pooled))


class BasicConv(nn.Module):
    def __init__(self, inp: int, oup: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel, padding=(kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Fuses the key encoder's f16 with mask features into the memory value (STCN's value_encoder.fuser)."""

    def __init__(self, indim: int, outdim: int):
        super().__init__()
        self.block1 = ResBlock(indim, outdim)
        self.attention = CBAM(outdim)
        self.block2 = ResBlock(outdim, outdim)

    def forward(self, f16: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([f16, mask_features], dim=1))
        return self.block2(x + self.attention(x))


class KeyProjection(nn.Module):
    def __init__(self, indim: int, keydim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)  # STCN: keeps keys spread out at the start
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


class UpsampleBlock(nn.Module):
    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(self.skip_conv(skip) + up)


class Decoder(nn.Module):
    """STCN decoder: compress the stride-16 input, upsample with the f8 then f4 skips, predict.
    `forward` returns (logits at stride 4, z = the features the prediction conv sees)."""

    def __init__(self, indim: int, skip8: int, skip4: int, dims: tuple[int, int, int]):
        super().__init__()
        c16, c8, c4 = dims
        self.compress = ResBlock(indim, c16)
        self.up_16_8 = UpsampleBlock(skip8, c16, c8)
        self.up_8_4 = UpsampleBlock(skip4, c8, c4)
        self.pred = nn.Conv2d(c4, 1, 3, padding=1)

    def forward(self, x16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.compress(x16)  # B,c16,h,w
        x = self.up_16_8(f8, x)  # B,c8,2h,2w
        x = self.up_8_4(f4, x)  # B,c4,4h,4w
        z = F.relu(x)
        return self.pred(z), z  # B,1,4h,4w ; B,c4,4h,4w


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling on the memory readout (stride 16, rates 6/12/18)."""

    def __init__(self, indim: int, outdim: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()

        def branch(kernel: int, dilation: int) -> nn.Sequential:
            pad = 0 if kernel == 1 else dilation
            return nn.Sequential(nn.Conv2d(indim, outdim, kernel, padding=pad, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(outdim), nn.ReLU(inplace=True))

        self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, r) for r in rates])
        self.pool = nn.Sequential(nn.Conv2d(indim, outdim, 1, bias=False), nn.BatchNorm2d(outdim),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(outdim * (len(rates) + 2), outdim, 1, bias=False),
                                     nn.BatchNorm2d(outdim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))  # B,C,1,1
        # A nearest resize of the 1x1 map, not `expand`: the same values, but expand lowers to a BROADCAST_TO
        # the TFLite interpreter refuses to prepare and GPU delegates do not run.
        pooled = F.interpolate(pooled, size=x.shape[2:], mode="nearest")
        outs = [b(x) for b in self.branches] + [pooled]
        return self.project(torch.cat(outs, dim=1))
