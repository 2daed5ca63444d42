"""The generator's options and seed streams: the only inputs that decide what a synthetic set contains.

Kept apart from the drawing and writing code because recipes check their ``data.synthetic`` mapping at config load
(:func:`check_options`) and because the options, recorded in ``meta.json``, decide whether a set on disk can be
reused and which folder an option set gets (``store.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import numpy as np

__all__ = ["PARTS", "STREAMS", "SyntheticOptions", "check_options", "item_rng"]

PARTS = ("unlabeled", "labeled", "au")
# Sub-streams of the seed: one integer per (part, kind of item). Never renumber: outputs depend on them.
STREAMS = {"unlabeled": 1, "unlabeled_id": 2, "labeled": 3, "labeled_id": 4, "au": 5, "au_id": 6, "au_mask": 7,
           "folds": 8, "strip": 9}
# Not a generator option: a recipe's data.synthetic may add it to allow replacing a set made with other options.
OVERWRITE = "overwrite"


@dataclasses.dataclass
class SyntheticOptions:
    """Every knob of the generator; all of them are recorded in ``meta.json`` and decide whether to regenerate."""

    seed: int = 0
    size: int = 112                          # frame height = width (even, for yuv420p)
    fps: int = 25
    num_frames: int = 32                     # frames per unlabeled video
    labeled_frames: int = 32                 # frames per labeled (DFEW-like) clip
    au_frames: int = 32                      # frames per AU clip
    unlabeled_clips: int = 160
    clips_per_identity: int = 2              # unlabeled videos per identity ("many identities")
    subjects: int = 10                       # labeled subjects (>= 5: five subject-disjoint folds)
    clips_per_class_per_subject: int = 2
    au_subjects: int = 6                     # AU-set subjects (>= 3: three subject-exclusive folds)
    au_clips: int = 48
    jpeg_quality: int = 90
    crf: int = 20                            # H.264 quality of the unlabeled videos
    face_zoom: float = 1.0                   # camera framing: 1 = loose (head ~45 % of the width), 1.6 = face crop
    parts: Tuple[str, ...] = PARTS

    def __post_init__(self) -> None:
        if isinstance(self.parts, str):
            self.parts = tuple(p.strip() for p in self.parts.split(",") if p.strip())
        bad = [p for p in self.parts if p not in PARTS]
        self.parts = tuple(p for p in PARTS if p in set(self.parts))   # canonical order
        for name in ("seed", "size", "fps", "num_frames", "labeled_frames", "au_frames", "unlabeled_clips",
                     "clips_per_identity", "subjects", "clips_per_class_per_subject", "au_subjects", "au_clips",
                     "jpeg_quality", "crf"):
            setattr(self, name, int(getattr(self, name)))
        self.face_zoom = float(self.face_zoom)
        problems = []
        if bad or not self.parts:
            problems.append(f"parts must be a non-empty subset of {PARTS}")
        if self.size < 32 or self.size % 2:
            problems.append(f"size must be an even number >= 32, got {self.size}")
        for name in ("num_frames", "labeled_frames", "au_frames"):
            if getattr(self, name) < 2:
                problems.append(f"{name} must be >= 2")
        if self.unlabeled_clips < 1 or self.clips_per_identity < 1 or self.clips_per_class_per_subject < 1:
            problems.append("unlabeled_clips, clips_per_identity and clips_per_class_per_subject must be >= 1")
        if self.subjects < 5:
            problems.append(f"subjects must be >= 5 (five subject-disjoint folds), got {self.subjects}")
        if self.au_subjects < 3 or self.au_clips < self.au_subjects:
            problems.append(f"au_subjects must be >= 3 and au_clips >= au_subjects, got {self.au_subjects}, "
                            f"{self.au_clips}")
        if not 1 <= self.jpeg_quality <= 100 or not 0 <= self.crf <= 51 or self.seed < 0 or self.fps < 1:
            problems.append("jpeg_quality must be in 1..100, crf in 0..51, seed >= 0, fps >= 1")
        if not 0.5 <= self.face_zoom <= 3.0:
            problems.append(f"face_zoom must be in [0.5, 3], got {self.face_zoom}")
        if problems:
            raise ValueError("invalid synthetic data options: " + "; ".join(problems))

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parts"] = list(self.parts)
        return d


def check_options(options: Mapping[str, Any]) -> SyntheticOptions:
    """The options of a recipe's ``data.synthetic``, checked before anything runs: a ValueError names unknown keys
    (with the valid ones) and bad values. ``overwrite`` (a bool, not a generator option) is allowed."""
    valid = [f.name for f in dataclasses.fields(SyntheticOptions)]
    unknown = [str(k) for k in options if k not in valid and k != OVERWRITE]
    if unknown:
        hint = (" (a YAML mapping needs a space after each colon: {subjects: 40})"
                if any(":" in k for k in unknown) else "")
        raise ValueError(f"unknown synthetic data option(s) {unknown}{hint}; valid: {', '.join(valid)}, {OVERWRITE}")
    if not isinstance(options.get(OVERWRITE, False), bool):
        raise ValueError(f"synthetic data option {OVERWRITE} must be true or false, got {options[OVERWRITE]!r}")
    return SyntheticOptions(**{k: v for k, v in options.items() if k != OVERWRITE})


def item_rng(opts: SyntheticOptions, stream: str, index: int) -> np.random.Generator:
    """The generator of one item: a function of (seed, stream, index) only, so that the output does not depend on
    generation order, on the parts generated or on the number of worker processes."""
    return np.random.default_rng([opts.seed, STREAMS[stream], index])
