"""Deterministic procedural face videos: the project's embedded default data set.

Faces are drawn with numpy as soft implicit shapes in a head-centred coordinate frame, so that per-frame head pose
(translation, rotation, scale, pseudo-yaw) is one inverse transform of the pixel grid. Expressions are action-unit
(AU) trajectories with onset / apex / offset dynamics; the seven DFEW classes are AU combinations that also differ in
their timing and head motion. Blinks, talking and pose jitter are distractors. See ``docs/SYNTHETIC.md``.

Python API::

    root = resolve_root("", options)                                       # data/synthetic/<name of the options>
    ensure_synthetic(root, **options) -> meta dict                         # generates only if absent / incomplete
    generate(out_dir, seed=0, unlabeled_clips=160, ...) -> meta dict      # always (re)generates
    render_clip(identity, "Happy", 32, 112, rng, talking=False) -> (frames uint8 [T,H,W,3], aus float32 [T,9])

CLI::

    python -m lgiformer.data.synthetic --out /tmp/syn [--seed 0] [--parts unlabeled,labeled,au] ...

Every item (video, clip, identity) draws from its own generator ``np.random.default_rng([seed, part, index])``, so the
output is byte-for-byte reproducible and independent of generation order and of the number of worker processes.

Modules: ``options`` (the knobs, seed streams), ``expressions`` (AUs, classes, dynamics), ``faces`` (identities and
the drawing of a frame), ``render`` (a clip: face + expression + distractors), ``writers`` (mp4, JPEG, text),
``layout`` (the three parts, their lists and ``meta.json``; ``generate``), ``store`` (which folder, reuse or
refuse; ``ensure_synthetic``), ``cli``.
"""
from lgiformer.data.synthetic.cli import main
from lgiformer.data.synthetic.expressions import (AU_NAMES, CHANNELS, CLASSES, EXPRESSIONS, ExpressionSpec,
                                                  expression_curves, random_au_curves)
from lgiformer.data.synthetic.faces import Identity
from lgiformer.data.synthetic.layout import AU_INVALID, GENERATOR_VERSION, auto_workers, generate
from lgiformer.data.synthetic.options import PARTS, SyntheticOptions, check_options
from lgiformer.data.synthetic.render import render_clip, save_class_strip
from lgiformer.data.synthetic.store import (DATA_DIR, NAMED_SETS, SyntheticSetConflict, ensure_synthetic,
                                            find_existing, resolve_root, set_name)
from lgiformer.data.synthetic.writers import write_mp4

__all__ = ["GENERATOR_VERSION", "CLASSES", "AU_NAMES", "CHANNELS", "AU_INVALID", "PARTS", "SyntheticOptions",
           "check_options", "Identity", "ExpressionSpec", "EXPRESSIONS", "expression_curves", "random_au_curves",
           "render_clip", "write_mp4", "generate", "auto_workers", "DATA_DIR", "NAMED_SETS", "SyntheticSetConflict",
           "set_name", "resolve_root", "find_existing", "ensure_synthetic", "save_class_strip", "main"]
