"""Procedural faces: an identity's appearance, the per-video scene and the drawing of one frame.

Faces are soft implicit shapes (approximate signed distances, anti-aliased) in a head-centred coordinate frame, so
that a frame's head pose (translation, rotation, scale, pseudo-yaw) is one inverse transform of the pixel grid, and
every facial action is a displacement of these shapes driven by the expression channels (``expressions.py``). Only
numpy: the drawing is deterministic to the byte, which the data set's reproducibility rests on.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import numpy as np

from lgiformer.data.synthetic.expressions import AU_NAMES, CHANNEL_INDEX, EXTRA_CHANNELS

__all__ = ["Identity", "Scene", "draw_frame"]

_SKIN_LIGHT, _SKIN_DARK = np.array([0.97, 0.82, 0.71]), np.array([0.33, 0.20, 0.13])
_HAIR = np.array([[0.07, 0.05, 0.04], [0.30, 0.19, 0.10], [0.55, 0.38, 0.20], [0.86, 0.72, 0.45],
                  [0.58, 0.24, 0.10], [0.62, 0.61, 0.60]])
_EYES = np.array([[0.30, 0.18, 0.08], [0.15, 0.09, 0.05], [0.25, 0.45, 0.65], [0.30, 0.45, 0.25],
                  [0.45, 0.35, 0.20]])


@dataclasses.dataclass(frozen=True)
class Identity:
    """Appearance of one person (lengths in image-width units at head scale 1; colours RGB in [0, 1])."""

    skin: Tuple[float, float, float]
    hair: Tuple[float, float, float]
    hair_style: int                  # 0 short, 1 long, 2 buzz cut, 3 voluminous
    hair_part: float
    eye_color: Tuple[float, float, float]
    lip_color: Tuple[float, float, float]
    brow_color: Tuple[float, float, float]
    head_a: float
    head_b: float
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    brow_gap: float
    brow_w: float
    brow_th: float
    brow_arch: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_th: float
    beard: float                     # 0: none, else opacity
    glasses: bool
    glasses_color: Tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Identity":
        t = rng.random()
        skin = np.clip((1 - t) * _SKIN_LIGHT + t * _SKIN_DARK + rng.normal(0, 0.025, 3), 0, 1)
        hair = np.clip(_HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, 3), 0, 1)
        brow = np.clip(0.55 * hair + 0.45 * skin * 0.35 if hair.mean() > 0.4 else hair * 1.05, 0, 1)
        lip = np.clip(skin * np.array([0.88, 0.58, 0.58]) + np.array([0.06, 0.0, 0.01]), 0, 1)
        head_b = rng.uniform(0.36, 0.41)
        eye_y = rng.uniform(-0.06, -0.03)
        nose_y = eye_y + rng.uniform(0.11, 0.14)
        return cls(
            skin=tuple(skin), hair=tuple(hair), hair_style=int(rng.choice(4, p=[0.4, 0.3, 0.1, 0.2])),
            hair_part=float(rng.uniform(-1, 1)),
            eye_color=tuple(np.clip(_EYES[rng.integers(len(_EYES))] + rng.normal(0, 0.03, 3), 0, 1)),
            lip_color=tuple(lip), brow_color=tuple(brow),
            head_a=float(rng.uniform(0.27, 0.32)), head_b=float(head_b),
            eye_x=float(rng.uniform(0.1, 0.125)), eye_y=float(eye_y), eye_w=float(rng.uniform(0.05, 0.063)),
            eye_h=float(rng.uniform(0.021, 0.028)), brow_gap=float(rng.uniform(0.042, 0.056)),
            brow_w=float(rng.uniform(0.058, 0.072)), brow_th=float(rng.uniform(0.015, 0.023)),
            brow_arch=float(rng.uniform(0.0, 0.012)), nose_y=float(nose_y), nose_w=float(rng.uniform(0.026, 0.036)),
            mouth_y=float(nose_y + rng.uniform(0.075, 0.095)), mouth_w=float(rng.uniform(0.07, 0.088)),
            lip_th=float(rng.uniform(0.011, 0.016)),
            beard=float(rng.uniform(0.55, 0.9)) if rng.random() < 0.12 else 0.0,
            glasses=bool(rng.random() < 0.2),
            glasses_color=tuple(rng.choice([[0.08, 0.08, 0.08], [0.45, 0.3, 0.15], [0.7, 0.7, 0.72]])),
        )


def _background(rng: np.random.Generator, size: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per-video background: two colours mixed by a gradient, a smooth texture, stripes or a two-tone wall."""
    c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    ang = rng.uniform(0, 2 * np.pi)
    g = 0.5 + (np.cos(ang) * xs + np.sin(ang) * ys)             # gradient in [0, 1]-ish
    kind = int(rng.integers(4))
    if kind == 1:       # smooth blobs
        tex = np.zeros_like(xs)
        for _ in range(4):
            f, a = rng.uniform(2, 7), rng.uniform(0, 2 * np.pi)
            tex += np.sin(f * (np.cos(a) * xs + np.sin(a) * ys) * 2 * np.pi + rng.uniform(0, 2 * np.pi))
        g = 0.5 * g + 0.5 * (0.5 + tex / 8)
    elif kind == 2:     # stripes / tiles
        f, a = rng.uniform(4, 14), rng.uniform(0, np.pi)
        g = 0.6 * g + 0.4 * (np.sin(f * (np.cos(a) * xs + np.sin(a) * ys) * 2 * np.pi) > 0)
    elif kind == 3:     # two-tone wall with a vertical edge
        g = 0.3 * g + 0.7 * (xs > rng.uniform(-0.45, 0.45))
    g = np.clip(g, 0, 1)[..., None]
    return ((1 - g) * c1 + g * c2).astype(np.float32)


@dataclasses.dataclass
class Scene:
    """Per-video rendering context: pixel grid, background, lighting, clothes, noise level."""

    size: int
    xs: np.ndarray
    ys: np.ndarray
    bg: np.ndarray
    light: np.ndarray         # [H, W, 3] multiplicative lighting field (with colour tint)
    light_dir: Tuple[float, float]
    shirt: np.ndarray
    noise: float

    @classmethod
    def sample(cls, rng: np.random.Generator, size: int) -> "Scene":
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        ys, xs = np.meshgrid(c, c, indexing="ij")
        bg = _background(rng, size, xs, ys)
        ang = rng.uniform(0, 2 * np.pi)
        strength, gain = rng.uniform(0.0, 0.45), rng.uniform(0.78, 1.12)
        tint = 1.0 + rng.uniform(-0.06, 0.06, 3)
        field = gain * (1.0 + strength * (np.cos(ang) * xs + np.sin(ang) * ys))
        light = (field[..., None] * tint).astype(np.float32)
        return cls(size, xs, ys, bg, light, (float(np.cos(ang)), float(np.sin(ang))),
                   rng.uniform(0.05, 0.9, 3).astype(np.float32), float(rng.uniform(0.0, 0.014)))


def _soft(sd: np.ndarray, inv_px: float, width: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of a shape from an approximate signed distance (negative inside)."""
    return np.clip(0.5 - sd * (inv_px / width), 0.0, 1.0)


def _over(img: np.ndarray, alpha: np.ndarray, color: Any) -> None:
    """In-place ``img = img * (1 - alpha) + color * alpha``, restricted to the bounding box where ``alpha > 0``."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(alpha.any(axis=0))
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    color = np.asarray(color, np.float32)
    if color.ndim == 3:
        color = color[r, c]
    sub = img[r, c]
    sub += alpha[r, c, None].astype(np.float32, copy=False) * (color - sub)


def _ellipse_sd(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: Any) -> np.ndarray:
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1.0) * np.minimum(a, b)


class _Frame:
    """Head-centred coordinates of one frame, evaluated lazily on pixel windows that bound a face-space box."""

    def __init__(self, scene: "Scene", tx: float, ty: float, rot: float, scale: float, yaw: float,
                 img: np.ndarray) -> None:
        self.scene, self.tx, self.ty, self.s = scene, tx, ty, scale
        self.cr, self.sr = math.cos(rot), math.sin(rot)
        self.shift = 0.045 * yaw                    # pseudo-yaw: inner features slide sideways
        self.inv_px = scene.size * scale            # 1 / (pixel size in face units)
        self.img = img

    def window(self, u0: float, u1: float, v0: float, v1: float, features: bool = True):
        """``(img view, u, v)`` on the pixels covering face box ``[u0, u1] x [v0, v1]`` (``u`` is feature-relative
        when ``features``); ``None`` when the box is off the frame."""
        shift = self.shift if features else 0.0
        us = np.array([u0, u1, u0, u1]) + shift
        vs = np.array([v0, v0, v1, v1])
        x = self.tx + self.s * (self.cr * us - self.sr * vs)
        y = self.ty + self.s * (self.sr * us + self.cr * vs)
        n = self.scene.size
        c0, c1 = max(0, int(math.floor((x.min() + 0.5) * n)) - 1), min(n, int(math.ceil((x.max() + 0.5) * n)) + 1)
        r0, r1 = max(0, int(math.floor((y.min() + 0.5) * n)) - 1), min(n, int(math.ceil((y.max() + 0.5) * n)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        dx = self.scene.xs[r0:r1, c0:c1] - self.tx
        dy = self.scene.ys[r0:r1, c0:c1] - self.ty
        u = (self.cr * dx + self.sr * dy) * (1.0 / self.s) - shift
        v = (self.cr * dy - self.sr * dx) * (1.0 / self.s)
        return self.img[r0:r1, c0:c1], u, v


def draw_frame(idt: Identity, scene: Scene, st: Dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 frame; ``st`` holds this frame's pose, channel intensities, blink and gaze."""
    au = st["au"]
    AU1, AU2, AU4, AU6, AU9, AU12, AU15, AU25, AU26 = (float(au[CHANNEL_INDEX[n]]) for n in AU_NAMES)
    press, stretch, lid, lipraise = (float(au[CHANNEL_INDEX[n]]) for n in EXTRA_CHANNELS)
    img = scene.bg.copy()
    fr = _Frame(scene, st["tx"], st["ty"], st["rot"], st["scale"], st["yaw"], img)
    inv_px = fr.inv_px
    a, b = idt.head_a, idt.head_b
    skin = np.asarray(idt.skin, np.float32)
    hair = np.asarray(idt.hair, np.float32)
    b_low = b + 0.05 * AU26                          # the jaw drops with AU26
    lu, lv = scene.light_dir

    def head_sd(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (np.sqrt((u / a) ** 2 + (v / np.where(v > 0, b_low, b)) ** 2) - 1.0) * a

    def hair_tex(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (1.0 + 0.12 * np.sin(70 * u + 6 * np.sin(25 * v)))[..., None] * hair

    # Clothes and neck.
    w = fr.window(-a * 2.0, a * 2.0, 0.1, b + 0.6, features=False)
    if w is not None:
        im, u, v = w
        _over(im, _soft(_ellipse_sd(u, v, 0.0, b + 0.3, a * 1.9, 0.26), inv_px), scene.shirt)
        _over(im, _soft(np.maximum(np.abs(u) - a * 0.45, 0.15 - v), inv_px), skin * 0.78)
    # Hair behind the head, ears, head with shading.
    w = fr.window(-a * 1.35, a * 1.35, -b * 1.35, b + 0.1, features=False)
    if w is not None:
        im, u, v = w
        if idt.hair_style == 1:
            back = np.maximum(_ellipse_sd(u, v, 0.0, 0.04, a * 1.28, b * 1.18), v - 0.3)
            _over(im, _soft(back, inv_px), hair_tex(u, v) * 0.85)
        elif idt.hair_style == 3:
            _over(im, _soft(_ellipse_sd(u, v, 0.0, -0.08, a * 1.25, b * 1.02), inv_px), hair_tex(u, v) * 0.9)
        elif idt.hair_style == 0:
            _over(im, _soft(_ellipse_sd(u, v, 0.0, -0.03, a * 1.07, b * 1.03), inv_px), hair_tex(u, v) * 0.9)
        _over(im, _soft(_ellipse_sd(np.abs(u), v, a - 0.012, idt.eye_y + 0.035, 0.03, 0.055), inv_px), skin * 0.88)
        r2 = (u / a) ** 2 + (v / np.where(v > 0, b_low, b)) ** 2
        shade = 1.0 - 0.2 * r2 * r2 + 0.12 * (lu * u / a + lv * v / b)
        _over(im, _soft((np.sqrt(r2) - 1.0) * a, inv_px), shade[..., None] * skin)

    ex, ey, ew = idt.eye_x, idt.eye_y, idt.eye_w
    ny = idt.nose_y
    brow_base = ey - idt.brow_gap
    # Mouth geometry (the nasolabial folds need it too).
    mw = idt.mouth_w * (1.0 + 0.2 * AU12 + 0.25 * stretch - 0.12 * press - 0.05 * AU15)
    cdy = -0.036 * AU12 + 0.032 * AU15 + 0.005 * stretch
    my = idt.mouth_y - 0.007 * lipraise - 0.003 * AU9

    # Mid face: cheeks (AU6), nasolabial folds (AU12 / AU9 / AU6), nose (AU9 flares, lifts and wrinkles it).
    w = fr.window(-0.2, 0.2, ey - 0.02, my + 0.06)
    if w is not None:
        im, u, v = w
        au_abs = np.abs(u)
        cheek_sd = _ellipse_sd(au_abs, v, ex + 0.01, ey + 0.085 - 0.022 * AU6, 0.05, 0.03)
        _over(im, _soft(cheek_sd, inv_px, 4.0) * (0.12 + 0.5 * AU6), np.clip(skin * 1.1 + [0.05, -0.02, -0.02], 0, 1))
        y0, y1 = ny + 0.004, my + cdy + 0.012
        u0, u1 = idt.nose_w * 1.35, mw + 0.01
        frac = (v - y0) / (y1 - y0)
        fold_sd = np.maximum(np.abs(au_abs - (u0 + (u1 - u0) * frac)) - 0.0028, (np.abs(frac - 0.5) - 0.5) * (y1 - y0))
        _over(im, _soft(fold_sd, inv_px) * (0.1 + 0.6 * max(AU12, AU9, 0.6 * AU6)), skin * 0.62)
        side = -0.012 if lu > 0 else 0.012
        bridge_sd = np.maximum(np.abs(u - side) - 0.004, np.maximum(v - ny, ey + 0.01 - v))
        _over(im, _soft(bridge_sd, inv_px, 2.0) * 0.25, skin * 0.7)
        _over(im, _soft(_ellipse_sd(u, v, 0.0, ny - 0.004 * AU9, idt.nose_w, 0.016), inv_px, 2.5) * 0.7, skin * 0.9)
        nos_sd = _ellipse_sd(au_abs, v, idt.nose_w * 0.55 * (1 + 0.25 * AU9), ny + 0.012 - 0.008 * AU9,
                             0.011 * (1 + 0.3 * AU9), 0.0065)
        _over(im, _soft(nos_sd, inv_px) * 0.9, skin * 0.35)
        if AU9 > 0.1:
            ph = (v - (ey + 0.012)) / 0.011
            d = np.abs(ph - np.round(ph)) * 0.011
            nw_sd = np.maximum(np.maximum(d - 0.002, au_abs - 0.026), np.maximum(-ph - 0.3, ph - 2.3) * 0.011)
            _over(im, _soft(nw_sd, inv_px) * (0.75 * AU9), skin * 0.6)

    # Upper face: forehead wrinkles (AU1 / AU2), glabellar lines (AU4), eyes, brows.
    w = fr.window(-0.21, 0.21, brow_base - 0.1, ey + 0.035)
    if w is not None:
        im, u, v = w
        au_abs = np.abs(u)
        raise_ = max(AU1, AU2)
        if raise_ > 0.15:
            ph = (v - (brow_base - 0.035) - 1.2 * u ** 2) / 0.017
            d = np.abs(ph - np.round(ph)) * 0.017
            wr_sd = np.maximum(np.maximum(d - 0.0022, au_abs - 0.11), np.maximum(ph - 0.5, -2.5 - ph) * 0.017)
            _over(im, _soft(wr_sd, inv_px) * (0.55 * (raise_ - 0.15) / 0.85), skin * 0.68)
        if AU4 > 0.1:
            gl_sd = np.maximum(np.abs(au_abs - 0.012) - 0.0022, np.abs(v - brow_base) - 0.018)
            _over(im, _soft(gl_sd, inv_px) * (0.65 * AU4), skin * 0.62)
        # Eyes: almond between the lids; AU6 narrows from below, the lid raiser widens, blinks close both lids.
        blink = st["blink"]
        x = (au_abs - ex) / ew
        bulge = np.clip(1.0 - x * x, 0.0, 1.0)
        eh = idt.eye_h * (1.0 - blink)
        vt = ey - eh * (1.0 - 0.35 * AU6 - 0.15 * AU4 + 0.55 * lid) * bulge
        vb = ey + eh * 0.55 * (1.0 - 0.5 * AU6) * bulge
        eye_sd = np.maximum(np.maximum(vt - v, v - vb), (np.abs(x) - 1.0) * ew)
        eye_a = _soft(eye_sd, inv_px) * np.clip((vb - vt) * inv_px, 0.0, 1.0)
        _over(im, eye_a, [0.93, 0.92, 0.89])
        gx, gy = st["gaze"]
        ir = idt.eye_h * 0.95
        iris_d = np.sqrt((u - (np.where(u >= 0, ex, -ex) + gx)) ** 2 + (v - (ey + gy)) ** 2)
        _over(im, _soft(iris_d - ir, inv_px) * eye_a, idt.eye_color)
        _over(im, _soft(iris_d - ir * 0.45, inv_px) * eye_a, [0.03, 0.03, 0.03])
        lash_sd = np.maximum(np.abs(v - vt) - 0.0032, (np.abs(x) - 1.08) * ew)
        _over(im, _soft(lash_sd, inv_px) * 0.85, np.asarray(idt.brow_color) * 0.6)
        # Brows: AU1 raises the inner end, AU2 the outer end, AU4 lowers and pulls the inner ends together.
        bw = idt.brow_w
        inner = ex - 0.85 * bw - 0.014 * AU4
        xb = (au_abs - inner) / (2 * bw)
        v_in = brow_base - 0.04 * AU1 - 0.01 * AU2 + 0.028 * AU4
        v_out = brow_base - 0.04 * AU2 - 0.006 * AU1 + 0.01 * AU4
        arch = idt.brow_arch * (1.0 + 0.8 * min(AU1, AU2)) + 0.005 * AU2
        vc = v_in + (v_out - v_in) * xb - arch * 4 * xb * (1 - xb)
        brow_sd = np.maximum(np.abs(v - vc) - idt.brow_th * (0.6 - 0.25 * xb), (np.abs(xb - 0.5) - 0.5) * 2 * bw)
        _over(im, _soft(brow_sd, inv_px) * 0.95, idt.brow_color)

    # Lower face: beard, lips, mouth cavity, teeth.
    w = fr.window(-a * 1.02, a * 1.02, ny + 0.01, b_low + 0.01)
    if w is not None:
        im, u, v = w
        if idt.beard > 0:
            line = np.maximum(my - 0.03 - 0.06 * (u / a) ** 2, ny + 0.025)
            clear = -_ellipse_sd(u, v, 0.0, my + 0.01, mw * 1.3, 0.032 + 0.05 * AU26)    # shaved round the lips
            beard_sd = np.maximum(np.maximum(head_sd(u + fr.shift, v), line - v), clear)
            _over(im, _soft(beard_sd, inv_px, 2.0) * idt.beard, hair_tex(u, v) * 0.8)
        xm = u / mw
        mb = np.clip(1.0 - xm * xm, 0.0, 1.0)
        vcm = my + cdy * xm * xm
        op = 0.022 * AU25 + 0.06 * AU26
        vu = vcm - (op * 0.3 + 0.007 * lipraise) * mb
        vl = vcm + op * 0.7 * mb
        thick = idt.lip_th * (1.0 - 0.75 * press) * (0.3 + 0.7 * np.sqrt(mb))
        side_sd = (np.abs(xm) - 1.0) * mw
        lips_sd = np.maximum(np.maximum(vu - thick - v, v - vl - 1.25 * thick), side_sd)
        _over(im, _soft(lips_sd, inv_px) * 0.9, idt.lip_color)
        cav_sd = np.maximum(np.maximum(vu - v, v - vl), side_sd)
        _over(im, _soft(cav_sd, inv_px), [0.22, 0.06, 0.07])
        teeth_sd = np.maximum(cav_sd, v - (vu + np.minimum(0.009, 0.4 * (vl - vu))))
        _over(im, _soft(teeth_sd, inv_px) * np.clip((vl - vu) * inv_px - 1.0, 0, 1), [0.9, 0.88, 0.82])

    # Hairline / fringe, glasses.
    w = fr.window(-a * 1.05, a * 1.05, -b * 1.05, 0.05, features=False)
    if w is not None:
        im, u, v = w
        if idt.hair_style != 2:
            hl = -0.55 * b + 0.38 * b * (u / a) ** 2 + 0.04 * idt.hair_part * u / a
            _over(im, _soft(np.maximum(head_sd(u, v) - 0.004, v - hl), inv_px), hair_tex(u, v))
        else:
            buzz_sd = np.maximum(head_sd(u, v), v - (-0.6 * b + 0.3 * b * (u / a) ** 2))
            _over(im, _soft(buzz_sd, inv_px) * 0.55, hair_tex(u, v))
    if idt.glasses:
        R = ew * 1.3
        w = fr.window(-(ex + R + 0.01), ex + R + 0.01, ey - R - 0.01, ey + R + 0.01)
        if w is not None:
            im, u, v = w
            au_abs = np.abs(u)
            ring = np.abs(np.sqrt((au_abs - ex) ** 2 + (v - ey) ** 2) - R) - 0.004
            bridge = np.maximum(au_abs - (ex - R), np.abs(v - (ey - 0.006)) - 0.003)
            _over(im, _soft(np.minimum(ring, bridge), inv_px), idt.glasses_color)

    img *= scene.light * st["flicker"]
    if scene.noise > 0:
        img += rng.normal(0.0, scene.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
