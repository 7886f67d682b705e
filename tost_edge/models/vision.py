"""ToST vision (the official tost_cab_* architecture, XCiT/CaiT-style) and its softmax baseline vit_cab_*.

Parameter names and shapes equal the official `tost_vision/tost.py`, so official checkpoints load strictly.

Images of mixed sizes go through one call without padding or resizing (the Fourier positional encoding takes any
grid): model([img0 [3, 224, 224], img1 [3, 160, 288], ...]) packs their patch tokens end to end, each image's
tokens attending only among themselves (TSSA with cu_seqlens: one call a layer for all of them).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import tssa
from ..ops.packing import offsets_of, packed_offsets, sequence_positions
from .checkpointing import Checkpointed, _exporting


class PositionalEncodingFourier(nn.Module):
    """Fourier positional encoding projected by a 1x1 conv (DETR / XCiT)."""

    def __init__(self, hidden_dim: int = 32, dim: int = 768, temperature: float = 10000):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.scale = 2 * math.pi
        self.temperature = temperature
        self.hidden_dim = hidden_dim

    def forward(self, B: int, H: int, W: int) -> torch.Tensor:
        dev = self.token_projection.weight.device
        y_embed = torch.arange(1, H + 1, dtype=torch.float32, device=dev)[:, None].expand(H, W)
        x_embed = torch.arange(1, W + 1, dtype=torch.float32, device=dev)[None, :].expand(H, W)
        eps = 1e-6
        y_embed = y_embed / (H + eps) * self.scale
        x_embed = x_embed / (W + eps) * self.scale
        dim_t = torch.arange(self.hidden_dim, dtype=torch.float32, device=dev)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.hidden_dim)
        pos_x = x_embed[:, :, None] / dim_t                                     # [H, W, hidden]
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)[None]          # [1, 2*hidden, H, W]
        pos = self.token_projection(pos.to(self.token_projection.weight.dtype))
        return pos.expand(B, -1, -1, -1)


class PackedImages(NamedTuple):
    """Images' patch tokens packed end to end along a batch of one: their offsets [N + 1] (checked host ints), the
    most tokens of one image, and each token's image [total] on the model's device."""
    cu: List[int]
    max_seqlen: int
    image: torch.Tensor


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # BatchNorm2d keeps the official SyncBatchNorm's state-dict names (weight, bias, running stats)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class ConvPatchEmbed(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768):
        super().__init__()
        if patch_size == 16:
            chans = [3, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        elif patch_size == 8:
            chans = [3, embed_dim // 4, embed_dim // 2, embed_dim]
        else:
            raise ValueError(f"patch_size: expected 8 or 16 (convolutional patch embedding), got {patch_size}")
        layers = []
        for i in range(len(chans) - 1):
            if i:
                layers.append(nn.GELU())
            layers.append(conv3x3(chans[i], chans[i + 1], 2))
        self.proj = nn.Sequential(*layers)
        self.num_patches = (img_size // patch_size) ** 2

    def forward(self, x):
        x = self.proj(x)
        Hp, Wp = x.shape[2], x.shape[3]
        if torch.is_grad_enabled() and x.requires_grad and not _exporting():
            return _GridToTokens.apply(x), (Hp, Wp)
        return x.flatten(2).transpose(1, 2), (Hp, Wp)


class _GridToTokens(torch.autograd.Function):
    """[B, C, H, W] -> [B, H*W, C] as x.flatten(2).transpose(1, 2), whose backward hands the grid a contiguous
    gradient rather than the transpose's channels-last-strided one: from such a gradient, torch 2.13's CPU batch norm
    backward computes wrong input gradients at batch 1 (train and eval mode, fp32 and fp64), which would reach the
    patch embedding's convolutions (a single image, or an image size of its own in a packed list)."""

    @staticmethod
    def forward(ctx, x):
        ctx.grid = x.shape
        return x.flatten(2).transpose(1, 2)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(1, 2).contiguous().view(ctx.grid)


class Mlp(nn.Module):
    """timm's Mlp: fc1, GELU, fc2 (names as in the official checkpoints)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AttentionTSSA(nn.Module):
    """The official AttentionTSSA: qkv (C -> C), TSSA over the tokens, to_out."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        self.heads = num_heads
        self.qkv = nn.Linear(dim, dim, bias=qkv_bias)
        self.temp = nn.Parameter(torch.ones(num_heads, 1))
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(proj_drop))
        self.backend = "torch"

    def forward(self, x, packed: Optional["PackedImages"] = None):              # x: [B, N, C] or [1, total, C]
        cu, longest = (packed.cu, packed.max_seqlen) if packed is not None else (None, None)
        return self.to_out(tssa(self.qkv(x), self.temp, self.heads, backend=self.backend, cu_seqlens=cu,
                                max_seqlen=longest))


class Attention(nn.Module):
    """Softmax multi-head self-attention (the vit_cab baseline)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.backend = "torch"

    def forward(self, x, packed: Optional["PackedImages"] = None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        # packed images: a block-diagonal mask (each image's tokens see their own; [total, total], as softmax costs)
        mask = None if packed is None else packed.image[:, None] == packed.image[None, :]
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))


ATTENTION = {"tssa": AttentionTSSA, "softmax": Attention}


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop, attn_layer, eta):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x, packed: Optional["PackedImages"] = None):
        x = x + self.gamma1 * self.attn(self.norm1(x), packed)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class ClassAttention(nn.Module):
    """CaiT class attention: only the CLS token queries."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q[:, :, 0:1] * k).sum(-1) * self.scale).softmax(-1)           # [B, H, N]
        cls = (attn.unsqueeze(2) @ v).transpose(1, 2).reshape(B, 1, C)
        return torch.cat([self.proj_drop(self.proj(cls)), x[:, 1:]], dim=1)

    def attend_packed(self, cls: torch.Tensor, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The CLS outputs of packed images: cls [N, C] (normed), tokens [total, C] (normed), image [total] (each
        token's image) -> [N, C]. Each CLS attends to itself and its image's tokens: the softmax over them taken with
        per-image sums (index_add), the same math as forward on [cls, tokens] one image at a time."""
        N, C = cls.shape
        H = self.num_heads
        qc, kc, vc = self.qkv(cls).view(N, 3, H, C // H).unbind(1)            # [N, H, d] each
        bias = None if self.qkv.bias is None else self.qkv.bias[C:]
        kt, vt = F.linear(tokens, self.qkv.weight[C:], bias).view(-1, 2, H, C // H).unbind(1)  # [total, H, d]
        sc = (qc * kc).sum(-1) * self.scale                                     # [N, H]
        st = (qc[image] * kt).sum(-1) * self.scale                              # [total, H]
        top = sc.detach().scatter_reduce(0, image[:, None].expand(-1, H), st.detach(), "amax")   # (for exp's range)
        ec, et = torch.exp(sc - top), torch.exp(st - top[image])
        den = ec.index_add(0, image, et)                                        # [N, H]
        num = (ec[..., None] * vc).index_add(0, image, et[..., None] * vt)      # [N, H, d]
        return self.proj_drop(self.proj((num / den[..., None]).reshape(N, C)))


class ClassAttentionBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop, eta, tokens_norm):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if eta is not None:
            self.gamma1 = nn.Parameter(eta * torch.ones(dim))
            self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        else:
            self.gamma1, self.gamma2 = 1.0, 1.0
        self.tokens_norm = tokens_norm

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.norm1(x))
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat([self.norm2(x[:, 0:1]), x[:, 1:]], dim=1)
        cls = self.gamma2 * self.mlp(x[:, 0:1])
        # as the official block: the residual adds the patch tokens to themselves (they feed the next block)
        return x + torch.cat([cls, x[:, 1:]], dim=1)

    def forward_packed(self, cls: torch.Tensor, tokens: torch.Tensor, image: torch.Tensor):
        """forward of packed images: cls [N, C], tokens [total, C], image [total] -> (cls, tokens), each image's
        as forward on its [1, 1 + n, C] would give."""
        nc, nt = self.norm1(cls), self.norm1(tokens)
        cls = cls + self.gamma1 * self.attn.attend_packed(nc, nt, image)
        tokens = tokens + self.gamma1 * nt        # (the attention returns the normed tokens as they came)
        if self.tokens_norm:
            tokens = self.norm2(tokens)
        cls = self.norm2(cls)
        return cls + self.gamma2 * self.mlp(cls), tokens + tokens


class ToSTVision(Checkpointed, nn.Module):
    """ToST vision transformer (tost_cab_*), or its softmax twin (vit_cab_*) with attn='softmax'.

    forward(images [B, 3, H, W], or a list of [3, H_i, W_i] of mixed sizes) -> logits [B, num_classes];
    features(images) -> [B, embed_dim] (CLS).
    set_checkpointing(True) recomputes each block's activations in the backward pass (checkpointing.py).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, num_classes: int = 1000,
                 eta: Optional[float] = 1.0, tokens_norm: bool = True, cls_attn_layers: int = 2,
                 drop_rate: float = 0.0, use_pos: bool = True, attn: str = "tssa"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: expected a multiple of num_heads={num_heads}, got {embed_dim}")
        if attn not in ATTENTION:
            raise ValueError(f"attn: expected one of {list(ATTENTION)}, got {attn!r}")
        self.config = dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, num_classes=num_classes,
                           eta=eta, tokens_norm=tokens_norm, cls_attn_layers=cls_attn_layers,
                           drop_rate=drop_rate, use_pos=use_pos, attn=attn)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = ConvPatchEmbed(img_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, ATTENTION[attn],
                                           eta if eta is not None else 1.0) for _ in range(depth)])
        self.cls_attn_blocks = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, eta, tokens_norm)
            for _ in range(cls_attn_layers)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pos_embeder = PositionalEncodingFourier(dim=embed_dim)
        self.use_pos = use_pos
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def family(self) -> str:
        return "softmax" if self.config["attn"] == "softmax" else "tost"

    def set_backend(self, backend: str) -> "ToSTVision":
        from ..ops import BACKENDS
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        for b in self.blocks:
            b.attn.backend = backend
        return self

    def features(self, images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """images: [B, 3, H, W], or a list of B images [3, H_i, W_i] of any sizes (packed: see the module)
        -> [B, embed_dim], the CLS features."""
        if isinstance(images, (list, tuple)):
            return self._packed_features(images)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape [B, 3, H, W] or a list of [3, H, W], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        B = images.shape[0]
        x, (Hp, Wp) = self.patch_embed(images)                                  # [B, N, C]
        if self.use_pos:
            x = x + self.pos_embeder(B, Hp, Wp).reshape(B, -1, x.shape[1]).permute(0, 2, 1)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = self._block(blk, x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        for blk in self.cls_attn_blocks:
            x = self._block(blk, x)
        return self.norm(x)[:, 0]

    def _packed_features(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """features of images of mixed sizes: their patch tokens packed end to end, each image's attending only
        among themselves. Images of one size go through the patch embedding together (in training, its batch norms
        take their statistics over each size's images: a batch of one size is the unpacked batch's)."""
        if not images:
            raise ValueError("images: expected at least one image [3, H, W], got an empty list")
        by_size: dict = {}
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3:
                got = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
                raise ValueError(f"images[{i}]: expected shape [3, H, W], got {got}")
            by_size.setdefault(tuple(im.shape[1:]), []).append(i)
        tokens: List[torch.Tensor] = [None] * len(images)                           # [n_i, C] each
        for idx in by_size.values():
            x, (Hp, Wp) = self.patch_embed(torch.stack([images[i] for i in idx]))  # [g, n, C]
            if self.use_pos:
                x = x + self.pos_embeder(1, Hp, Wp).reshape(1, -1, x.shape[1]).permute(0, 2, 1)
            for j, i in enumerate(idx):
                tokens[i] = x[j]
        x = self.pos_drop(torch.cat(tokens)[None])                                  # [1, total, C]
        cu = packed_offsets(x, offsets_of(t.shape[0] for t in tokens))             # (checked once, not a layer)
        image, _ = sequence_positions(torch.tensor(cu, device=x.device), x.shape[1])   # [total]
        packed = PackedImages(cu, max(t.shape[0] for t in tokens), image)
        for blk in self.blocks:
            x = self._block(blk, x, packed)
        cls, x = self.cls_token[0].expand(len(images), -1), x[0]                     # [N, C], [total, C]
        for blk in self.cls_attn_blocks:
            cls, x = self._block(blk.forward_packed, cls, x, image)
        return self.norm(cls)

    def forward(self, images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """images: [B, 3, H, W] or a list of B images [3, H_i, W_i] of any sizes -> logits [B, num_classes]."""
        return self.head(self.features(images))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
