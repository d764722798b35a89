"""A dimension-agnostic conditional U-Net (2D or 3D) for the reverse process.

The network knows nothing of noise schedules: it maps (x_t, condition, t) to
one output channel, whose meaning (eps, x_0 or v) the training loop decides.
The condition (the spline-upsampled LR volume, or a previous cascade stage's
output) enters by channel concatenation with x_t, as in SR3 (Saharia et al.
2021, sec. 2.4).

Architecture (DDPM's U-Net, Ho et al. 2020, appendix B, at small width):
residual blocks with GroupNorm and SiLU, the timestep injected by a sinusoidal
embedding (Vaswani et al. 2017, sec. 3.5) and an MLP, strided-convolution
downsampling, nearest upsampling + convolution, skip connections by
concatenation, and multi-head self-attention at the coarsest level.
``spatial_dims`` picks Conv2d or Conv3d, so the 3D model and the three 2D
models of the 3x2D variant share one implementation (MONAI's habit).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv(spatial_dims: int) -> type[nn.Module]:
    if spatial_dims == 2:
        return nn.Conv2d
    if spatial_dims == 3:
        return nn.Conv3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _groups(channels: int, max_groups: int = 8) -> int:
    """The largest group count <= max_groups that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, sec. 3.5).

    ``t``: (N,) integer or float timesteps. Returns (N, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between (DDPM appendix B)."""

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb)).reshape(*h.shape[:2], *([1] * (x.ndim - 2)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, residual (DDPM appendix B)."""

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        tokens = self.norm(x).reshape(n, c, -1).transpose(1, 2)  # (N, L, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        heads = [z.reshape(n, -1, self.num_heads, c // self.num_heads).transpose(1, 2) for z in (q, k, v)]
        out = F.scaled_dot_product_attention(*heads)  # (N, heads, L, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(n, -1, c))
        return x + out.transpose(1, 2).reshape(n, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(spatial_dims)(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(spatial_dims)(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """Conditional U-Net: (x_t, cond, t) -> one channel.

    Args:
        spatial_dims: 2 or 3.
        cond_channels: channels of the condition concatenated to x_t.
        base_channels: width of the first level.
        channel_mult: width multiplier per level; len(channel_mult) levels,
            len - 1 downsamplings, so inputs need sides divisible by
            2 ** (len(channel_mult) - 1) (``inference`` pads for this).
        num_res_blocks: residual blocks per level.
        attention: self-attention at the coarsest level.
        num_heads: attention heads.
        dropout: dropout inside residual blocks.

    ``forward(x, cond, t)``: x (N, 1, *S), cond (N, cond_channels, *S),
    t (N,) LongTensor of training timestep indices -> (N, 1, *S).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        cond_channels: int = 1,
        base_channels: int = 16,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention: bool = True,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult needs at least one level")
        conv = _conv(spatial_dims)
        self.spatial_dims = spatial_dims
        self.num_levels = len(channel_mult)
        temb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )
        self.stem = conv(1 + cond_channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in channel_mult]
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_widths = []
        ch = base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(spatial_dims, ch, width, temb_dim, dropout))
                ch = width
            self.down_blocks.append(blocks)
            skip_widths.append(ch)
            if level < len(widths) - 1:
                self.downsamples.append(Downsample(spatial_dims, ch))

        self.mid1 = ResBlock(spatial_dims, ch, ch, temb_dim, dropout)
        self.mid_attn = AttentionBlock(ch, num_heads) if attention else nn.Identity()
        self.mid2 = ResBlock(spatial_dims, ch, ch, temb_dim, dropout)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for i in range(num_res_blocks):
                in_ch = ch + skip_widths[level] if i == 0 else ch
                blocks.append(ResBlock(spatial_dims, in_ch, widths[level], temb_dim, dropout))
                ch = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(Upsample(spatial_dims, ch))

        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out_conv = conv(ch, 1, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @property
    def divisor(self) -> int:
        """Spatial sides must be multiples of this."""
        return 2 ** (self.num_levels - 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for side in x.shape[2:]:
            if side % self.divisor:
                raise ValueError(
                    f"spatial shape {tuple(x.shape[2:])} is not divisible by {self.divisor}"
                )
        temb = self.time_mlp(timestep_embedding(t, self.base_channels))
        h = self.stem(torch.cat([x, cond], dim=1))
        skips = []
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, temb)
            skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for i, blocks in enumerate(self.up_blocks):
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, temb)
            if i < len(self.upsamples):
                h = self.upsamples[i](h, skips[-1].shape[2:])
        return self.out_conv(F.silu(self.out_norm(h)))


class TriPlanarUNet(nn.Module):
    """The seed's cheaper variant: three 2D U-Nets on sagittal, coronal and axial slices, fused.

    Each net sees the 2D slices of a 3D input along its own axis (slices
    become batch entries) and predicts them slice by slice; the three
    predictions are averaged voxel-wise into one 3D output. The fusion is part
    of the model, so the three nets are trained jointly on the fused output
    and the sampler sees one denoiser. Same interface as ``UNet``:
    ``forward(x, cond, t)`` with x (N, 1, D, H, W) -> (N, 1, D, H, W).
    Array axes 0, 1, 2 are taken as the sagittal, coronal and axial
    directions (RAS-like storage, as in HCP and MNI volumes).
    """

    AXES = {"sagittal": 0, "coronal": 1, "axial": 2}

    def __init__(self, **unet_kwargs) -> None:
        super().__init__()
        unet_kwargs.pop("spatial_dims", None)
        self.nets = nn.ModuleDict({name: UNet(spatial_dims=2, **unet_kwargs) for name in self.AXES})

    @property
    def divisor(self) -> int:
        return self.nets["axial"].divisor

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"TriPlanarUNet takes (N, C, D, H, W) inputs, got shape {tuple(x.shape)}")
        n = x.shape[0]
        fused = torch.zeros_like(x)
        for name, axis in self.AXES.items():
            dim = axis + 2
            depth = x.shape[dim]

            def to_slices(v: torch.Tensor) -> torch.Tensor:  # (N, C, ...) -> (N * depth, C, P, Q)
                v = v.movedim(dim, 1)
                return v.reshape(n * depth, *v.shape[2:])

            out = self.nets[name](to_slices(x), to_slices(cond), t.repeat_interleave(depth))
            out = out.reshape(n, depth, *out.shape[1:]).movedim(1, dim)
            fused = fused + out
        return fused / len(self.AXES)


MODEL_VARIANTS: tuple[str, ...] = ("unet3d", "triplanar2d")


def unet_from_config(model: dict, spatial_dims: int = 3, cond_channels: int = 1) -> nn.Module:
    """Build the reverse-process network from the config's ``model`` section.

    ``model["variant"]``: ``unet3d`` (default) or ``triplanar2d`` (``TriPlanarUNet``).
    """
    kwargs = dict(
        cond_channels=cond_channels,
        base_channels=int(model["base_channels"]),
        channel_mult=tuple(int(m) for m in model["channel_mult"]),
        num_res_blocks=int(model["num_res_blocks"]),
        attention=bool(model["attention"]),
        num_heads=int(model["num_heads"]),
        dropout=float(model.get("dropout", 0.0)),
    )
    variant = model.get("variant", "unet3d")
    if variant == "unet3d":
        return UNet(spatial_dims=spatial_dims, **kwargs)
    if variant == "triplanar2d":
        return TriPlanarUNet(**kwargs)
    raise ValueError(f"unknown model variant {variant!r}; allowed: {', '.join(MODEL_VARIANTS)}")
