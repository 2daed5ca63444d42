"""The MAE-DFER pretraining model: masked encoder, light decoder, joint appearance + motion reconstruction.

Token order is the encoder layout's region-major order throughout: the mask, the visible tokens the encoder
returns, the decoder's position table and the targets are all indexed the same way (see ``lgiformer.tokens``).
The model draws its own mask, builds its own targets and computes its own loss; the engine never touches pixels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from torch import nn

from lgiformer.layers import Block
from lgiformer.masking import MaskGenerator
from lgiformer.models.base import init_weights
from lgiformer.targets import build_targets, part_sizes
from lgiformer.tokens import patchify, sinusoid_table, unpatchify


class Decoder(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps=norm_eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, out_dim)

    def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -num_predicted:]))


class MaskedVideoAutoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder_embed_dim: int = 384, decoder_depth: int = 4,
                 decoder_num_heads: int = 6, mask_type: str = "region_balanced", mask_ratio: float = 0.9,
                 targets: Sequence[str] = ("appearance", "motion"), motion_weight: float = 0.5,
                 norm_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, norm_std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        if encoder.global_pool or encoder.num_classes:
            raise ValueError("the pretraining encoder must be built with global_pool='' and num_classes=0")
        if not 0.0 <= motion_weight <= 1.0:
            raise ValueError(f"motion_weight must be in [0, 1], got {motion_weight}")
        if mask_type != "region_balanced" and encoder.layout.num_regions > 1:
            # Caught here, not at the first step: the batched regions need equal visible counts per region.
            raise ValueError(f"mask_type {mask_type!r} leaves regions with unequal numbers of visible tokens; an "
                             f"encoder with {encoder.layout.num_regions} regions needs mask_type='region_balanced'")
        args = encoder.model_args
        self.tubelet_size, self.patch_size = args["tubelet_size"], args["patch_size"]
        self.targets = tuple(targets)
        self.target_sizes = part_sizes(self.targets, self.tubelet_size, self.patch_size, args["in_chans"])
        self.motion_weight = motion_weight
        self.decoder_args = dict(decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                                 decoder_num_heads=decoder_num_heads, mask_type=mask_type, mask_ratio=mask_ratio,
                                 targets=list(self.targets), motion_weight=motion_weight)
        self.encoder = encoder
        self.layout = encoder.layout
        self.masker = MaskGenerator(self.layout, mask_type, mask_ratio)
        self.encoder_to_decoder = nn.Linear(encoder.embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", self.layout.to_region_major(
            sinusoid_table(self.layout.num_tokens, decoder_embed_dim), dim=0), persistent=False)
        self.decoder = Decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, sum(self.target_sizes.values()),
                               mlp_ratio, norm_eps=norm_eps)
        self.register_buffer("norm_mean", torch.tensor(norm_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("norm_std", torch.tensor(norm_std, dtype=torch.float32), persistent=False)
        self.encoder_to_decoder.apply(init_weights)
        self.decoder.apply(init_weights)
        trunc_normal_(self.mask_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def build_targets(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, N, D] targets in the canonical (region-major) token order."""
        raw = build_targets(clips, self.norm_mean, self.norm_std, self.tubelet_size, self.patch_size, self.targets)
        return self.layout.to_region_major(raw)

    def predict(self, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predictions for the masked tokens, [B, num_masked, D], in token order."""
        b = clips.shape[0]
        visible = self.encoder.forward_features(clips, mask)[:, self.encoder.num_prefix_tokens:]
        x_vis = self.encoder_to_decoder(visible)
        d = x_vis.shape[-1]
        pos = self.decoder_pos_embed.to(x_vis.dtype).expand(b, -1, -1)
        pos_vis, pos_masked = pos[~mask].view(b, -1, d), pos[mask].view(b, -1, d)
        x = torch.cat((x_vis + pos_vis, self.mask_token.to(x_vis.dtype) + pos_masked), dim=1)
        return self.decoder(x, pos_masked.shape[1])

    def forward(self, clips: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns the loss and its parts. ``mask`` ([B, N] bool, region-major) is drawn if not given."""
        if mask is None:
            mask = self.masker(clips.shape[0], clips.device)
        pred = self.predict(clips, mask).float()
        with torch.no_grad():
            target = self.build_targets(clips)[mask].view(pred.shape)
        out, offset = {}, 0
        for part, size in self.target_sizes.items():
            out[f"loss_{part}"] = F.mse_loss(pred[..., offset:offset + size], target[..., offset:offset + size])
            offset += size
        if "loss_appearance" in out and "loss_motion" in out:
            w = self.motion_weight
            out["loss"] = (1 - w) * out["loss_appearance"] + w * out["loss_motion"]
        else:
            out["loss"] = F.mse_loss(pred, target)
        return out

    @torch.no_grad()
    def reconstruction_images(self, clips: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Frames [T, 3, H, W] in [0, 1] for the first clip: input, masked input, predicted appearance, predicted
        and true motion (targets are per-token normalised, so predictions are shown re-scaled to the input's
        per-token statistics)."""
        clips = clips[:1]
        if mask is None:
            mask = self.masker(1, clips.device)
        pred = self.predict(clips, mask).float()
        target = self.build_targets(clips)
        full = target.masked_scatter(mask.unsqueeze(-1), pred)
        mean, std = self.norm_mean.view(1, -1, 1, 1, 1), self.norm_std.view(1, -1, 1, 1, 1)
        video = (clips.float() * std + mean).clamp(0, 1)
        grid, t = self.layout.grid, self.tubelet_size
        p, c = self.patch_size, clips.shape[1]

        def to_frames(tokens: torch.Tensor, frames: int) -> torch.Tensor:
            tokens = self.layout.to_raster(tokens).view(1, -1, frames, p, p, c)
            return unpatchify(tokens, grid)[0].transpose(0, 1)  # [T', 3, H, W]

        visible = (~self.layout.to_raster(mask, dim=1)).to(video.dtype).view(1, -1, 1, 1, 1, 1)
        masked_video = unpatchify(patchify(video, t, p) * visible, grid)[0].transpose(0, 1)
        images = {"input": video[0].transpose(0, 1), "masked": masked_video}
        offset = 0
        for part, size in self.target_sizes.items():
            frames = size // (p * p * c)
            pred_part, true_part = full[..., offset:offset + size], target[..., offset:offset + size]
            offset += size
            images[f"pred_{part}"] = _to_unit(to_frames(pred_part, frames))
            images[f"true_{part}"] = _to_unit(to_frames(true_part, frames))
        return images


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map normalised values to [0, 1] for display (+-3 std onto the range)."""
    return (x / 6 + 0.5).clamp(0, 1)
