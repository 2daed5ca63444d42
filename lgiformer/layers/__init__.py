"""Layers shared by every model family (one copy, used by pretraining and finetuning alike)."""
from lgiformer.layers.attention import Attention, use_fused_attn
from lgiformer.layers.blocks import Block, PatchEmbed3d, make_mlp

__all__ = ["Attention", "Block", "PatchEmbed3d", "make_mlp", "use_fused_attn"]
