"""The MAE-DFER pretraining model: masked encoder, light decoder, joint appearance + motion reconstruction.

Token order is the encoder layout's region-major order throughout: the mask, the visible tokens the encoder
returns, the decoder's position table and the targets are all indexed the same way (see ``lgiformer.tokens``).
The model draws its own mask, builds its own targets and computes its own loss; the engine never touches pixels.

``init="reference"`` (the default) initialises the model as the reference's pretraining model does
(docs/REFERENCE.md#departure-1): Xavier-uniform weights for the Linear layers of the encoder and the decoder (a plain
ViT block's ``q`` and ``kv`` drawn as the one fused ``qkv`` Linear the reference has; the LGI-Former's attentions
have separate ``q`` and ``kv`` there too), zero biases, unit LayerNorms, PyTorch's default for
``encoder_to_decoder`` (the reference never re-initialises it), and the representative tokens and the mask token
from a normal of std 0.02 truncated at one std. ``init="trunc_normal"`` keeps the finetuning init (truncated normal,
std 0.02, for every Linear), which our pretraining used before. :class:`MaskedVideoAutoencoder` initialises its own
parts and takes the encoder as given (an imported one keeps its weights); :func:`init_pretrain_encoder` draws a
fresh encoder, as ``lgiformer.models.build_pretrain_model`` does.
"""
from __future__ import annotations

import inspect
import math
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


PRETRAIN_INITS = ("reference", "trunc_normal")
# The predictors of MaskedVideoAutoencoder.heldout_losses, with the names reports give them.
PREDICTORS = {"model": "this release", "visible_mean": "mean of the visible patches", "zero": "zero (no motion)"}


def _xavier_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@torch.no_grad()
def reference_init(module: nn.Module) -> None:
    """Xavier-uniform Linear weights, zero biases, unit LayerNorms; in every plain ViT ``Block``, ``q`` and ``kv``
    drawn as one fused ``qkv`` matrix (the reference's shape: the bound counts all three outputs)."""
    module.apply(_xavier_init)
    for m in module.modules():
        if isinstance(m, Block):
            q, kv = m.attn.q, m.attn.kv
            bound = math.sqrt(6.0 / (q.in_features + q.out_features + kv.out_features))
            nn.init.uniform_(q.weight, -bound, bound)
            nn.init.uniform_(kv.weight, -bound, bound)


def reference_token_init(tensor: torch.Tensor, std: float = 0.02) -> None:
    """The reference's ``trunc_normal_(x, std=.02)`` for learned tokens: truncated at one std, not two."""
    trunc_normal_(tensor, std=std, a=-std, b=std)


def init_pretrain_encoder(encoder: nn.Module, init: str = "reference") -> None:
    """Initialise a fresh encoder for pretraining: ``reference`` re-draws it as the reference's pretraining encoder
    (:func:`reference_init`, representative tokens by :func:`reference_token_init`); ``trunc_normal`` keeps the
    encoder's own init."""
    if init not in PRETRAIN_INITS:
        raise ValueError(f"init must be one of {PRETRAIN_INITS}, got {init!r}")
    if init == "reference":
        reference_init(encoder)
        for name in encoder.region_tokens:
            reference_token_init(getattr(encoder, name))


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
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, init: str = "reference",
                 mask_rounding: str = "floor") -> None:
        super().__init__()
        if encoder.global_pool or encoder.num_classes:
            raise ValueError("the pretraining encoder must be built with global_pool='' and num_classes=0")
        if init not in PRETRAIN_INITS:
            raise ValueError(f"init must be one of {PRETRAIN_INITS}, got {init!r}")
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
                                 targets=list(self.targets), motion_weight=motion_weight, mlp_ratio=mlp_ratio,
                                 norm_eps=norm_eps, init=init, mask_rounding=mask_rounding)
        self.encoder = encoder
        self.layout = encoder.layout
        self.masker = MaskGenerator(self.layout, mask_type, mask_ratio, mask_rounding)
        self.encoder_to_decoder = nn.Linear(encoder.embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", self.layout.to_region_major(
            sinusoid_table(self.layout.num_tokens, decoder_embed_dim), dim=0), persistent=False)
        self.decoder = Decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, sum(self.target_sizes.values()),
                               mlp_ratio, norm_eps=norm_eps)
        self.register_buffer("norm_mean", torch.tensor(norm_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("norm_std", torch.tensor(norm_std, dtype=torch.float32), persistent=False)
        if init == "reference":  # the encoder is used as given (build_pretrain_model initialises a fresh one)
            reference_init(self.decoder)
            self.encoder_to_decoder.reset_parameters()
            reference_token_init(self.mask_token)
        else:
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
        return self.losses(pred, target)

    def losses(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` and ``loss_<part>`` (MSE per target part) of predictions for the masked tokens."""
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
    def heldout_losses(self, clips: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Per clip ([B] each), the losses of the model's predictions (``model``) and of two predictors that learn
        nothing, on the same masked tokens: ``visible_mean`` predicts every masked token's targets as the mean of the
        clip's visible tokens' targets; ``zero`` predicts zero for every target (no motion; each patch flat at its
        own mean colour, since targets are normalised per token). A model that learned to reconstruct beats both."""
        pred = self.predict(clips, mask).float()
        target = self.build_targets(clips).float()
        visible = (~mask).unsqueeze(-1).to(target.dtype)
        mean_visible = (target * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True)
        masked = target[mask].view(pred.shape)
        predictors = {"model": pred, "visible_mean": mean_visible.expand(-1, mask.shape[1], -1)[mask].view(pred.shape),
                      "zero": torch.zeros_like(pred)}
        out = {}
        for name, p in predictors.items():
            per_clip = [self.losses(p[i], masked[i]) for i in range(p.shape[0])]
            out[name] = {k: torch.stack([c[k] for c in per_clip]) for k in per_clip[0]}
        return out

    @torch.no_grad()
    def reconstruction_images(self, clips: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Frames [T', 3, H, W] in [0, 1] for the first clip: ``input``, ``masked`` input, then ``pred_<part>`` and
        ``true_<part>`` for each target part. Visible tokens show their targets, masked tokens the predictions.

        The targets are normalised per token, so they are shown in pixels again with the statistics of the input's
        own tubelet (as MAE's and VideoMAE's visualisations do): ``true_appearance`` is then exactly the first frame
        of every tubelet, and motion is the pixel difference of consecutive frames, mid-grey for no change
        (``0.5 + difference / 2``)."""
        clips = clips[:1]
        if mask is None:
            mask = self.masker(1, clips.device)
        pred = self.predict(clips, mask).float()
        target = self.build_targets(clips).float()
        predicted = self.layout.to_raster(target.masked_scatter(mask.unsqueeze(-1), pred))
        target = self.layout.to_raster(target)
        mean, std = self.norm_mean.view(1, -1, 1, 1, 1), self.norm_std.view(1, -1, 1, 1, 1)
        raw = clips.float() * std + mean  # the targets' pixels (lgiformer.targets.normalised_tubelets): unclamped
        video = raw.clamp(0, 1)
        grid, t, p, c = self.layout.grid, self.tubelet_size, self.patch_size, clips.shape[1]
        tubelets = patchify(raw, t, p)
        mu = tubelets.mean(dim=(2, 3, 4), keepdim=True)
        sd = tubelets.var(dim=(2, 3, 4), unbiased=True, keepdim=True).sqrt() + 1e-6

        def to_pixels(tokens: torch.Tensor, part: str) -> torch.Tensor:
            tokens = tokens.view(*tokens.shape[:2], -1, p, p, c)
            pixels = tokens * sd + (mu if part != "motion" else 0)
            if part == "motion":
                pixels = 0.5 + pixels / 2
            return unpatchify(pixels, grid)[0].transpose(0, 1).clamp(0, 1)  # [T', 3, H, W]

        visible = (~self.layout.to_raster(mask, dim=1)).to(video.dtype).view(1, -1, 1, 1, 1, 1)
        images = {"input": video[0].transpose(0, 1),
                  "masked": unpatchify(patchify(video, t, p) * visible, grid)[0].transpose(0, 1)}
        offset = 0
        for part, size in self.target_sizes.items():
            images[f"pred_{part}"] = to_pixels(predicted[..., offset:offset + size], part)
            images[f"true_{part}"] = to_pixels(target[..., offset:offset + size], part)
            offset += size
        return images


# What a release's ``decoder`` entry may hold: the autoencoder's arguments besides the encoder and the normalisation
# (the release's ``input`` gives that).
DECODER_ARGS = frozenset(inspect.signature(MaskedVideoAutoencoder.__init__).parameters) - {"self", "encoder",
                                                                                            "norm_mean", "norm_std"}
