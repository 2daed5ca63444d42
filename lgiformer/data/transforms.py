"""Clip transforms: one random draw per clip, applied to every frame alike.

Image augmentations (timm, torchvision) draw new parameters per call, i.e. per frame, which would turn a clip into
flicker and break the motion the video model must learn. Here every random choice (crop box, flip, RandAugment ops
and magnitudes, erasing box) is drawn once per clip and applied to all frames; geometry runs on the whole
[T, C, H, W] tensor in one call.

Randomness comes only from Python's ``random`` and torch's global RNG, which the datasets seed per sample
(``sample_rng``), so a seeded call is reproducible. Input: uint8 ``[T, H, W, 3]`` (numpy array or tensor) or a list
of PIL images / ``[H, W, 3]`` arrays. Output: float32 ``[3, T, S, S]``, normalised with ``mean`` / ``std``.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np
import torch

from lgiformer import _compat  # noqa: F401  (torchvision compatibility fix, needed before timm / torchvision)
from PIL import Image  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402
from timm.data.auto_augment import rand_augment_transform  # noqa: E402
from timm.data.transforms import RandomResizedCropAndInterpolation  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

__all__ = ["ClipRandAugment", "ClipRandomErasing", "EvalTransform", "PretrainTransform", "TrainTransform",
           "build_transform", "normalize", "resize_short_side", "to_array_clip", "to_tensor_clip"]

_BILINEAR = InterpolationMode.BILINEAR
# TSN / VideoMAE "GroupMultiScaleCrop" positions, in units of a quarter of the free space (x, y): the 4 corners and
# the centre, then (more_fix_crop) 4 edge midpoints and 4 quarter points.
_FIX_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
                (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def to_array_clip(clip) -> np.ndarray:
    """Any accepted clip -> contiguous uint8 numpy ``[T, H, W, 3]``."""
    if isinstance(clip, (list, tuple)):
        clip = np.stack([np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f) for f in clip])
    elif isinstance(clip, torch.Tensor):
        clip = clip.cpu().numpy()
    arr = np.ascontiguousarray(clip)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected a clip [T, H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {arr.dtype}")
    return arr


def to_tensor_clip(clip) -> torch.Tensor:
    """Any accepted clip -> uint8 tensor ``[T, 3, H, W]``."""
    return torch.from_numpy(to_array_clip(clip)).permute(0, 3, 1, 2).contiguous()


def normalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[T, 3, H, W]`` uint8 (or float in [0, 1]) -> normalised float32 ``[3, T, H, W]``."""
    x = clip.float().div_(255.0) if clip.dtype == torch.uint8 else clip.float()
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).permute(1, 0, 2, 3).contiguous()


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[..., H, W]`` so that the short side is ``size``, keeping the aspect ratio (no squashing)."""
    h, w = clip.shape[-2:]
    if min(h, w) == size:
        return clip
    scale = size / min(h, w)
    return TF.resize(clip, [max(size, round(h * scale)), max(size, round(w * scale))], interpolation=_BILINEAR,
                     antialias=True)


def _resized_crop(clip: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    top, left, h, w = box
    return TF.resized_crop(clip, top, left, h, w, [size, size], interpolation=_BILINEAR, antialias=True)


class PretrainTransform:
    """Masked pretraining view (VideoMAE / TSN "GroupMultiScaleCrop"): crop sides from ``scales`` x the short side,
    width and height at most ``max_distort`` scale steps apart, at one of the fixed 13 (or 5 with
    ``more_fix_crop=False``) grid positions, resized to ``input_size``. No flip and no colour change: the
    reconstruction target is the clip itself, and the reference recipe uses no other augmentation."""

    def __init__(self, input_size: int = 160, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
                 max_distort: int = 1, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, more_fix_crop: bool = True) -> None:
        self.input_size, self.scales, self.max_distort = input_size, tuple(scales), max_distort
        self.mean, self.std = tuple(mean), tuple(std)
        self.offsets = _FIX_OFFSETS if more_fix_crop else _FIX_OFFSETS[:5]

    def crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)``; two ``random`` draws (size pair, grid position)."""
        sides = [int(min(h, w) * s) for s in self.scales]
        # as in TSN: a side within 3 px of the output size is snapped to it (saves a near-identity resize)
        sides = [self.input_size if abs(s - self.input_size) < 3 else s for s in sides]
        pairs = [(ch, cw) for i, ch in enumerate(sides) for j, cw in enumerate(sides)
                 if abs(i - j) <= self.max_distort]
        ch, cw = random.choice(pairs)
        ch, cw = min(ch, h), min(cw, w)
        ox, oy = random.choice(self.offsets)
        return oy * ((h - ch) // 4), ox * ((w - cw) // 4), ch, cw

    def __call__(self, clip) -> torch.Tensor:
        x = to_tensor_clip(clip)
        x = _resized_crop(x, self.crop_box(*x.shape[-2:]), self.input_size)
        return normalize(x, self.mean, self.std)


class ClipRandAugment:
    """timm's RandAugment (``rand-m7-n4-mstd0.5-inc1`` ...) with one draw for the whole clip.

    timm's ``RandAugment`` picks its ops with numpy on every call, and each ``AugmentOp`` draws whether to apply,
    its magnitude noise, the sign and the interpolation from ``random`` (some ops draw again inside, e.g. a random
    blur radius). Called per frame, every frame would get different ops. So the ops are picked once per clip here
    (with ``random``, keeping numpy out of the augmentation), then the chain is applied to every frame starting from
    the same saved ``random`` state: every frame replays the exact same draws. The ops stay timm's own (parsed by
    ``rand_augment_transform``), so the config string means what it means in timm. Histogram ops (AutoContrast,
    Equalize) still adapt to each frame's content, as the per-frame PIL ops of the reference did.
    """

    def __init__(self, config: str, input_size: int, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN) -> None:
        fill = tuple(int(round(255 * m)) for m in mean)
        ra = rand_augment_transform(config, dict(translate_const=int(input_size * 0.45), img_mean=fill))
        self.config, self.ops, self.num_layers, self.weights = config, ra.ops, ra.num_layers, ra.choice_weights

    def choose_ops(self) -> list:
        """The ops of one clip: ``num_layers`` draws with replacement, or weighted without replacement (timm)."""
        if self.weights is None:
            return random.choices(self.ops, k=self.num_layers)
        pool, weights, chosen = list(self.ops), [float(w) for w in self.weights], []
        for _ in range(min(self.num_layers, len(pool))):
            i = random.choices(range(len(pool)), weights=weights)[0]
            chosen.append(pool.pop(i))
            weights.pop(i)
        return chosen

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, H, W, 3]``."""
        ops = self.choose_ops()
        state = random.getstate()
        out = []
        for frame in clip:
            random.setstate(state)  # every frame replays the same draws
            img = Image.fromarray(frame)
            for op in ops:
                img = op(img)
            out.append(np.asarray(img.convert("RGB")))
        return np.stack(out)


class ClipRandomErasing:
    """Random erasing of a normalised clip ``[C, T, H, W]`` with the same box(es) and the same fill on ALL frames.

    timm's ``RandomErasing`` draws a box per image: on a clip the occluder would jump from frame to frame, a cue
    that exists in no real video (and that a temporal model can exploit to see behind it). Here timm's semantics
    (probability, 1 to ``count`` boxes sharing the area budget, area in [min_area, max_area], log-uniform aspect,
    10 attempts; fill "pixel" = per-pixel normal, "rand" = per-channel normal, "const" = 0) hold for a box that is
    static over time; a "pixel" fill is one noise image repeated over the frames."""

    def __init__(self, probability: float = 0.25, mode: str = "pixel", count: int = 1, min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3) -> None:
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode must be pixel, rand or const, got {mode!r}")
        self.probability, self.mode, self.count = probability, mode, max(1, count)
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def boxes(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """``(top, left, height, width)`` of the boxes of one clip (``random`` only); empty when not erasing."""
        if random.random() > self.probability:
            return []
        count = self.count if self.count == 1 else random.randint(1, self.count)
        out = []
        for _ in range(count):
            for _ in range(10):
                target = random.uniform(self.min_area, self.max_area) * h * w / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
                if ew < w and eh < h:
                    out.append((random.randint(0, h - eh), random.randint(0, w - ew), eh, ew))
                    break
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, t, h, w = x.shape
        boxes = self.boxes(h, w)
        if not boxes:
            return x
        x = x.clone()
        for top, left, eh, ew in boxes:
            if self.mode == "pixel":
                fill = torch.randn(c, 1, eh, ew, dtype=x.dtype)
            elif self.mode == "rand":
                fill = torch.randn(c, 1, 1, 1, dtype=x.dtype)
            else:
                fill = torch.zeros(c, 1, 1, 1, dtype=x.dtype)
            x[:, :, top:top + eh, left:left + ew] = fill  # broadcast over time: one occluder for the whole clip
        return x


class TrainTransform:
    """Finetuning augmentation of the reference recipe, clip-consistent: RandAugment, random resized crop (one box),
    horizontal flip (one coin), normalisation, random erasing (one box through all frames)."""

    def __init__(self, input_size: int = 160, auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1",
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 reprob: float = 0.25, remode: str = "pixel", recount: int = 1,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        self.input_size, self.scale, self.ratio, self.hflip = input_size, tuple(scale), tuple(ratio), hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.randaug = ClipRandAugment(auto_augment, input_size, mean) if auto_augment else None
        self.erase = ClipRandomErasing(reprob, remode, recount) if reprob > 0 else None

    def crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)``: timm's Inception-style box (area fraction in ``scale``, log-uniform aspect
        in ``ratio``, 10 attempts, then a centre fallback), drawn once for the clip."""
        # timm's get_params only reads the size of its image argument: a [1, H, W] placeholder stands for the clip
        return RandomResizedCropAndInterpolation.get_params(torch.empty(1, h, w), self.scale, self.ratio)

    def __call__(self, clip) -> torch.Tensor:
        frames = to_array_clip(clip)
        if self.randaug is not None:
            frames = self.randaug(frames)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        x = _resized_crop(x, self.crop_box(*x.shape[-2:]), self.input_size)
        if random.random() < self.hflip:
            x = x.flip(-1)
        x = normalize(x, self.mean, self.std)
        return self.erase(x) if self.erase is not None else x


class EvalTransform:
    """Deterministic test / validation view: resize the short side (keeping the aspect ratio), then crop
    ``input_size`` at position ``crop_index`` of ``num_crops``.

    The reference squashed frames to 160 x 160 before "cropping" 160 x 160, so its two test crops were the same
    image (docs/REFERENCE.md#defect-4). Here one crop (validation) is the centre crop of the short side resized to
    ``input_size``, i.e. the whole face of a square frame. With several crops the short side is resized to
    ``short_side_size``, by default ``round(1.15 * input_size)`` (184 for 160: 24 px of room, while a face still
    fills 87% of the view, close to the training crops), and the crops are spread evenly from one end to the other
    along the long side, or along the diagonal for square frames: the views really differ. A setting that leaves
    less room than ``num_crops - 1`` pixels, where views would repeat, is an error."""

    MULTI_CROP_ZOOM = 1.15

    def __init__(self, input_size: int = 160, short_side_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        if short_side_size is not None and short_side_size < input_size:
            raise ValueError(f"short_side_size {short_side_size} is smaller than input_size {input_size}")
        self.input_size, self.short_side_size = input_size, short_side_size
        self.mean, self.std = tuple(mean), tuple(std)

    def short_side(self, num_crops: int) -> int:
        if self.short_side_size is not None:
            return self.short_side_size
        return self.input_size if num_crops == 1 else round(self.input_size * self.MULTI_CROP_ZOOM)

    def crop_origin(self, h: int, w: int, crop_index: int, num_crops: int) -> tuple[int, int]:
        """``(top, left)`` of crop ``crop_index`` in an ``h`` x ``w`` frame whose short side is already resized."""
        s = self.input_size
        if num_crops == 1:
            return (h - s) // 2, (w - s) // 2
        room = max(h, w) - s
        if room < num_crops - 1:
            raise ValueError(f"{num_crops} crops of {s} px in a {h} x {w} frame would repeat: raise short_side_size")
        frac = crop_index / (num_crops - 1)
        if h == w:
            return round((h - s) * frac), round((w - s) * frac)
        if h > w:
            return round((h - s) * frac), (w - s) // 2
        return (h - s) // 2, round((w - s) * frac)

    def __call__(self, clip, crop_index: int = 0, num_crops: int = 1) -> torch.Tensor:
        if not 0 <= crop_index < num_crops:
            raise ValueError(f"crop_index {crop_index} not in [0, {num_crops})")
        x = resize_short_side(to_tensor_clip(clip), self.short_side(num_crops))
        top, left = self.crop_origin(*x.shape[-2:], crop_index, num_crops)
        x = x[..., top:top + self.input_size, left:left + self.input_size]
        return normalize(x, self.mean, self.std)


def build_transform(mode: str, input_size: int, **kwargs):
    """``pretrain`` -> PretrainTransform; ``train`` -> TrainTransform; ``val`` / ``test`` -> EvalTransform."""
    if mode == "pretrain":
        return PretrainTransform(input_size, **kwargs)
    if mode == "train":
        return TrainTransform(input_size, **kwargs)
    if mode in ("val", "test"):
        return EvalTransform(input_size, **kwargs)
    raise ValueError(f"transform mode must be pretrain, train, val or test, got {mode!r}")
