"""Facial action unit (AU) detection on the shared finetuning engine (``task: au``; specs/AU_HEADS.md).

One run = one fold of a subject-exclusive protocol (BP4D, DISFA, the synthetic AU set):

* encoder from ``cfg.model`` (``cfg.model.pretrained`` through :func:`lgiformer.tasks.pretrained.load_pretrained`,
  report in ``load_report.json``), built without pooling or classifier; an AU head from ``cfg.au.head``
  (:func:`lgiformer.au.build_au_head`) on its tokens, both inside :class:`AUModel`;
  ``cfg.au.freeze_encoder`` freezes the encoder, ``cfg.au.moke`` attaches AUFormer MoKE adapters (§3) to a frozen
  encoder and adds the training-only expert heads read by the ``mdwa`` loss;
* training on the fold's training list minus a validation part held out BY SUBJECT (``data.val_fraction`` of the
  training subjects, at least one when there are three or more); occurrence rates of the training labels (valid
  entries only, U1) weight the loss and initialise the heads' final biases (U2);
* the ONE shared loop (:func:`lgiformer.engine.trainer.fit`) with a ``step_fn`` returning the loss parts;
* evaluation frame-wise: every labelled frame of a test video is predicted from the clip centred on it (clip mode:
  the clip's prediction; dense mode: the prediction of the slot holding the centre frame). Reported per AU and as
  mean F1 at ``cfg.au.threshold`` (U5, U6): ``frame`` (raw per-frame probabilities), ``smoothed`` (moving mean over
  ``cfg.au.smooth_window`` frames within each video, §5.6; the primary metric when the window is > 1) and
  ``centre_clip`` (one centre window per video, the cheap clip-level view);
* selection ``cfg.eval.select`` (``best_val``: best validation mean F1, or ``last``), reports ``val_metrics.json``,
  ``test_metrics.json`` and ``test_predictions.csv`` in the run directory;
* export: the AU model is not a registered timm model, so instead of a release the run directory gets
  ``au_model.safetensors`` (the whole AUModel state dict) and ``au_config.json`` (encoder name and arguments, head,
  AU names, rates, threshold, data settings); :func:`load_au_model` rebuilds the model from them.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger("lgiformer")

# Heads whose natural training loss is not the plain weighted BCE: with ``au.loss: wbce`` (the default) they get it.
_HEAD_LOSS = {"fantrans_okd": "okd", "monet": "monet"}
MIN_RATE = 1e-3  # floor of the training occurrence rates used for the U1 weights and the U2 bias
_MOKE_KEYS = ("hidden", "dilations", "ca_mode", "unfreeze_norms", "expert_head")


# ==================================================================================================================
# The model
# ==================================================================================================================
# model_args that describe a classifier's head, not its encoder: dropped to rebuild the bare encoder.
CLASSIFIER_ARGS = ("num_classes", "global_pool", "head_args")


def _prefixed(regex: str, prefix: str = r"encoder\.") -> str:
    return "^" + prefix + regex[1:] if regex.startswith("^") else prefix + regex


def prefixed_groups(groups: dict, prefix: str) -> dict:
    """A timm ``group_matcher`` dict of a submodule, with every regex moved under ``prefix`` (``encoder.``, ...)."""
    return {key: _prefixed(value, prefix) if isinstance(value, str) else [(_prefixed(r, prefix), o) for r, o in value]
            for key, value in groups.items()}


def au_probs(out: Dict) -> torch.Tensor:
    """Per-AU probabilities from an AU head's output dict (heads that output ``probs`` give them), float32."""
    return (out["probs"] if "probs" in out else torch.sigmoid(out["logits"].float())).float()


class AUModel(nn.Module):
    """Encoder + AU head. ``forward(clips, y=None) -> the head's output dict`` (``logits`` ``[B, A]`` or
    ``[B, T', A]``, ``aux``, ...); ``y`` is passed to heads that use labels while training (MONET teacher forcing).

    ``moke``: attach MoKE adapters (§3.3) to the encoder (which freezes it) and add the training-only expert heads
    (``Linear(C, 1)`` per AU on the pooled last expert stream, ``aux["experts"]`` for the MDWA loss; clip mode only).
    ``freeze_encoder``: the encoder gets no gradient. ``no_weight_decay`` / ``group_matcher`` delegate to the encoder
    (names prefixed ``encoder.``), so :func:`lgiformer.optim.param_groups` applies layer decay to the encoder blocks
    and the full lr to the head."""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, num_aus: int, freeze_encoder: bool = False,
                 moke: bool = False, moke_args: Optional[Dict[str, Any]] = None, dense: bool = False,
                 rates: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.num_aus, self.dense, self.moke = num_aus, dense, moke
        self.grid = tuple(int(g) for g in encoder.grid_size)
        self.n_special = int(getattr(encoder, "num_prefix_tokens", 0))
        self.wants_labels = head.__class__.__name__ == "MonetHead"
        self.moke_state = None
        if moke:
            from lgiformer.au.moke import attach_moke

            args = dict(moke_args or {})
            expert_head = args.pop("expert_head", "own_au")
            if expert_head != "own_au":
                raise ValueError("au.head_args.moke_expert_head: only 'own_au' is supported in the AU task")
            self.moke_state = attach_moke(encoder, num_aus, **args)
            c = int(encoder.embed_dim)
            self.expert_weight = nn.Parameter(torch.zeros(num_aus, c))
            nn.init.trunc_normal_(self.expert_weight, std=0.02)
            self.expert_bias = nn.Parameter(torch.zeros(num_aus))
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: torch.Tensor) -> None:
        """U2 on the head (and on the MoKE expert heads)."""
        from lgiformer.au.losses import prior_bias

        if hasattr(self.head, "init_prior_bias"):
            self.head.init_prior_bias(rates)
        if self.moke:
            with torch.no_grad():
                self.expert_bias.copy_(prior_bias(rates))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        from lgiformer.au.heads import head_no_weight_decay

        skip = {f"encoder.{k}" for k in (self.encoder.no_weight_decay() if hasattr(self.encoder, "no_weight_decay")
                                         else ())}
        return skip | head_no_weight_decay(self.head, "head.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's groups under ``encoder.``; the head (unmatched) lands in the last group (lr scale 1)."""
        return prefixed_groups(self.encoder.group_matcher(coarse), r"encoder\.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.moke and enable:
            raise ValueError("gradient checkpointing cannot be used with MoKE adapters (au.moke)")
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, clips: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict:
        tokens = self.encoder.forward_features(clips)
        kwargs: Dict[str, Any] = dict(grid=self.grid, n_special=self.n_special)
        if self.wants_labels and y is not None and self.training:
            kwargs["y"] = y
        out = dict(self.head(tokens, **kwargs))
        if self.moke and not self.dense and self.moke_state is not None and self.moke_state.k_mlp is not None:
            k = self.moke_state.k_mlp  # [B, A, N, C]
            pooled = k[:, :, :self.n_special].mean(2) if self.n_special else k.mean(2)
            experts = (pooled * self.expert_weight).sum(-1) + self.expert_bias
            out["aux"] = {**(out.get("aux") or {}), "experts": experts}
        return out


def build_encoder(m, pretrained: str | None):
    """(encoder without pooling or classifier, load report)."""
    from lgiformer.tasks.build import build_classifier

    return build_classifier(m.name, 0, pretrained or None, global_pool="", drop_path_rate=m.drop_path_rate,
                            **m.arch_kwargs())


def head_kwargs(name: str, encoder: nn.Module, num_aus: int, dense: bool, head_args: Dict[str, Any],
                rates: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = dict(embed_dim=int(encoder.embed_dim), num_aus=num_aus, rates=rates)
    kwargs["mode"] = "dense" if dense else "clip"
    if name == "fantrans_okd":
        kwargs["grid"] = tuple(encoder.grid_size)
    args = {k: v for k, v in head_args.items() if not k.startswith("moke_")}
    from lgiformer.au.heads import _HEADS

    cls = _HEADS.get(name)
    if cls is not None:  # keys another head takes (a recipe's head_args with --au.head switched) are dropped
        import inspect

        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(k for k in args if k not in params)
            if unknown:
                log.warning("au.head_args %s are not arguments of the %s head: ignored", unknown, name)
                args = {k: v for k, v in args.items() if k in params}
    kwargs.update(args)
    return kwargs


def moke_kwargs(head_args: Dict[str, Any]) -> Dict[str, Any]:
    return {k[len("moke_"):]: v for k, v in head_args.items() if k.startswith("moke_") and k[5:] in _MOKE_KEYS}


def build_au_model(model_cfg, au_cfg, num_aus: int, rates: Optional[torch.Tensor] = None,
                   pretrained: str | None = None):
    """(AUModel, load report) from the ``model`` and ``au`` config sections."""
    from lgiformer.au import build_au_head

    encoder, report = build_encoder(model_cfg, pretrained)
    head = build_au_head(au_cfg.head, **head_kwargs(au_cfg.head, encoder, num_aus, au_cfg.dense,
                                                    dict(au_cfg.head_args), None))
    model = AUModel(encoder, head, num_aus=num_aus, freeze_encoder=au_cfg.freeze_encoder, moke=au_cfg.moke,
                    moke_args=moke_kwargs(dict(au_cfg.head_args)), dense=au_cfg.dense, rates=rates)
    return model, report


def build_loss(au_cfg, rates: torch.Tensor):
    from lgiformer.au import build_au_loss

    name = au_cfg.loss
    if name == "wbce" and au_cfg.head in _HEAD_LOSS:
        name = _HEAD_LOSS[au_cfg.head]
        log.info("au.head %s trains with its own loss %r (au.loss wbce is the default)", au_cfg.head, name)
    if name in ("kd_bernoulli", "pattel", "h2p"):
        raise ValueError(f"au.loss {name!r} is an auxiliary term, not a training loss on its own")
    tt: Any = "none"
    if au_cfg.target_transform != "none":
        tt = {"name": au_cfg.target_transform}
        if au_cfg.target_transform in ("vals", "rhls"):
            tt["ls_convention"] = "literal" if au_cfg.ls_convention in ("printed", "literal") else au_cfg.ls_convention
    kwargs: Dict[str, Any] = dict(rates=rates, target_transform=tt)
    if name != "kd_bernoulli":
        kwargs["au_weighting"] = au_cfg.au_weighting
    args = dict(au_cfg.loss_args)
    if isinstance(tt, dict):
        tt.update(args.pop("target_args", {}))
    kwargs.update(args)
    return build_au_loss(name, **kwargs), name


# ==================================================================================================================
# Data
# ==================================================================================================================
def split_by_subject(videos: Sequence, fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, validation) out of the TRAINING videos, by subject: ``round(fraction * subjects)`` subjects (at least
    one when there are three or more subjects and ``fraction > 0``) go to validation, chosen with a fixed seed."""
    videos = list(videos)
    subjects = sorted({v.subject for v in videos})
    if fraction <= 0 or len(subjects) < 2:
        return videos, []
    k = int(round(len(subjects) * fraction))
    if k == 0 and len(subjects) >= 3:
        k = 1
    k = min(k, len(subjects) - 1)
    if k == 0:
        return videos, []
    rng = np.random.default_rng([seed, 7919])
    held = set(rng.permutation(len(subjects))[:k].tolist())
    val_subjects = {s for i, s in enumerate(subjects) if i in held}
    return [v for v in videos if v.subject not in val_subjects], [v for v in videos if v.subject in val_subjects]


def training_rates(videos: Sequence) -> torch.Tensor:
    """U1: per-AU occurrence rate over every labelled frame of the training videos, valid entries only."""
    from lgiformer.au import occurrence_rates

    labels = torch.from_numpy(np.concatenate([v.labels for v in videos]))
    valid = torch.from_numpy(np.concatenate([v.valid for v in videos]))
    return occurrence_rates(labels, valid)


def window_positions(n: int, centre: int, num_frames: int, stride: int) -> np.ndarray:
    """``num_frames`` positions at ``stride`` with ``centre`` at index ``num_frames // 2``, clamped to the video."""
    idx = centre + stride * (np.arange(num_frames) - num_frames // 2)
    return np.clip(idx, 0, n - 1).astype(np.int64)


class AUFrameWindows(Dataset):
    """Evaluation items: one clip centred on each labelled frame (every ``frame_stride``-th) of each video, in video
    and time order. Items: ``(clip [3, T, S, S], labels [K], valid [K], item)``; :attr:`items` maps an item to
    ``(video index, position)``. Deterministic (no augmentation)."""

    def __init__(self, videos: Sequence, *, num_frames: int, sampling_rate: int, img_size: int,
                 backend: str = "auto", frame_stride: int = 1) -> None:
        from lgiformer.data.transforms import build_transform

        self.videos = list(videos)
        self.num_frames, self.stride, self.backend = num_frames, sampling_rate, backend
        self.items = [(vi, p) for vi, v in enumerate(self.videos) for p in range(0, len(v.frames), frame_stride)]
        self.transform = build_transform("val", img_size)
        self._reader: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _open(self, vi: int):
        from lgiformer.data.readers import open_video

        if self._reader is None or self._reader[0] != vi:
            self._reader = (vi, open_video(self.videos[vi].path, self.backend))
        return self._reader[1]

    def __getitem__(self, index: int):
        vi, p = self.items[index]
        v = self.videos[vi]
        positions = window_positions(len(v.frames), p, self.num_frames, self.stride)
        frames = self._open(vi).get(v.frames[positions].tolist())
        return (self.transform(frames), torch.from_numpy(v.labels[p]), torch.from_numpy(v.valid[p]), index)


# ==================================================================================================================
# Evaluation
# ==================================================================================================================
def au_metrics(probs, labels, valid, video_ids: Sequence, centre_mask=None, *, threshold: float = 0.5,
               smooth_window: int = 0, au_names: Sequence[str] | None = None) -> tuple[Dict[str, Any], Any]:
    """(metrics, smoothed probabilities or None). Per-AU F1 and mean F1 (U5, U6) of frame-wise probabilities
    ``[N, A]`` (frames of a video contiguous and in time order): ``frame`` (raw), ``smoothed`` (moving mean of
    ``smooth_window`` frames per video, §5.6; only when the window is > 1), ``centre_clip`` (only the rows in
    ``centre_mask``). ``mean_f1`` / ``per_au`` / ``protocol`` name the primary view (smoothed when present, else
    frame)."""
    from lgiformer.au import fold_f1, smooth_by_video

    probs = torch.as_tensor(probs).float()
    labels, valid = torch.as_tensor(labels).float(), torch.as_tensor(valid).bool()
    names = list(au_names) if au_names is not None else [f"AU{i}" for i in range(probs.shape[1])]
    out: Dict[str, Any] = dict(threshold=threshold, smooth_window=smooth_window, num_frames=int(probs.shape[0]),
                               num_videos=len(set(video_ids)), au_names=names)

    def view(p, y, v) -> Dict[str, Any]:
        r = fold_f1(p, y, v, threshold, names)
        return {"mean_f1": r["mean"], "per_au": r["by_name"]}

    out["frame"] = view(probs, labels, valid)
    primary = "frame"
    smoothed = None
    if smooth_window and smooth_window > 1:
        smoothed = smooth_by_video(probs, list(video_ids), smooth_window)
        out["smoothed"] = view(smoothed, labels, valid)
        primary = "smoothed"
    if centre_mask is not None and bool(torch.as_tensor(centre_mask).any()):
        m = torch.as_tensor(centre_mask).bool()
        out["centre_clip"] = view(probs[m], labels[m], valid[m])
    out["protocol"] = primary
    out["mean_f1"] = out[primary]["mean_f1"]
    out["per_au"] = out[primary]["per_au"]
    out["positive_rate"] = dict(zip(names, ((labels * valid).sum(0) / valid.sum(0).clamp_min(1)).tolist()))
    return out, smoothed


def _probs_from_output(out: Dict, dense: bool, centre_slot: int) -> torch.Tensor:
    probs = au_probs(out)
    return probs[:, centre_slot] if dense else probs


@torch.no_grad()
def predict_frames(model: nn.Module, dataset: AUFrameWindows, *, batch_size: int, device, amp_dtype=None,
                   num_workers: int = 0, dense: bool = False, tubelet: int = 2) -> torch.Tensor:
    """Probabilities ``[len(dataset), A]`` in dataset order. With torch.distributed each rank predicts a strided
    share and the shares are gathered."""
    import contextlib

    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    was_training = model.training
    model.eval()
    centre_slot = (dataset.num_frames // 2) // tubelet
    autocast = (torch.autocast(torch.device(device).type, dtype=amp_dtype)
                if amp_dtype is not None and amp_dtype != torch.float32 else contextlib.nullcontext())
    rows, probs = [], []
    for batch in loader:
        clips = batch[0].to(device, non_blocking=True)
        with autocast:
            out = model(clips)
        probs.append(_probs_from_output(out, dense, centre_slot).cpu())
        rows.append(batch[3])
    model.train(was_training)
    a = getattr(model, "num_aus", None)
    local_p = torch.cat(probs) if probs else torch.zeros(0, a or 0)
    local_i = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (local_i, local_p))
        local_i = torch.cat([g[0] for g in gathered])
        local_p = torch.cat([g[1] for g in gathered])
    result = torch.zeros(len(dataset), local_p.shape[1])
    result[local_i] = local_p
    return result


def evaluate_au(model: nn.Module, dataset: AUFrameWindows, au_names: Sequence[str], *, threshold: float,
                smooth_window: int, batch_size: int, device, amp_dtype=None, num_workers: int = 0,
                dense: bool = False, tubelet: int = 2, sampling_rate: int = 1) -> tuple[Dict, Dict]:
    """(metrics, arrays for the predictions file)."""
    from lgiformer.data.sampling import center_indices

    probs = predict_frames(model, dataset, batch_size=batch_size, device=device, amp_dtype=amp_dtype,
                           num_workers=num_workers, dense=dense, tubelet=tubelet)
    labels = torch.stack([torch.from_numpy(dataset.videos[vi].labels[p]) for vi, p in dataset.items])
    valid = torch.stack([torch.from_numpy(dataset.videos[vi].valid[p]) for vi, p in dataset.items])
    vids = [vi for vi, _ in dataset.items]
    centre_pos = {vi: int(center_indices(len(v.frames), dataset.num_frames, dataset.stride)[dataset.num_frames // 2])
                  for vi, v in enumerate(dataset.videos)}
    centre = torch.tensor([centre_pos[vi] == p for vi, p in dataset.items])
    metrics, smoothed = au_metrics(probs, labels, valid, vids, centre, threshold=threshold,
                                   smooth_window=smooth_window, au_names=au_names)
    return metrics, dict(probs=probs, smoothed=smoothed, labels=labels, valid=valid)


def write_predictions_csv(path: str | Path, dataset: AUFrameWindows, au_names: Sequence[str], arrays: Dict,
                          threshold: float) -> None:
    """One row per evaluated frame: ``path, frame, subject``, then per AU the raw probability, the smoothed one (if
    any), the prediction (from the primary probabilities) and the label (``-1`` = not annotated)."""
    probs, smoothed = arrays["probs"], arrays["smoothed"]
    primary = smoothed if smoothed is not None else probs
    header = ["path", "frame", "subject"]
    for name in au_names:
        header += [f"{name}_prob"] + ([f"{name}_smoothed"] if smoothed is not None else []) + [f"{name}_pred",
                                                                                              f"{name}_label"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row, (vi, p) in enumerate(dataset.items):
            v = dataset.videos[vi]
            line: list[Any] = [v.path, int(v.frames[p]), v.subject]
            for k in range(len(au_names)):
                line.append(f"{float(probs[row, k]):.5f}")
                if smoothed is not None:
                    line.append(f"{float(smoothed[row, k]):.5f}")
                line.append(int(float(primary[row, k]) >= threshold))
                line.append(int(v.labels[p, k]) if v.valid[p, k] else -1)
            w.writerow(line)


# ==================================================================================================================
# The run
# ==================================================================================================================
def _au_names(spec, videos_names: Sequence[str]) -> list[str]:
    return list(spec.au_names) if spec.aus else list(videos_names)


def run_au(cfg, env, logger) -> Dict[str, Any]:
    """The AU task (``task: au``) on the shared engine; see the module docstring. Returns the per-epoch records, the
    test metrics and the selection."""
    from lgiformer.config import to_dict
    from lgiformer.data import (AUVideoDataset, build_loader, ensure_synthetic, get_dataset_spec, read_au_csv,
                                resolve_root)
    from lgiformer.engine import ds, trainer
    from lgiformer.engine.distributed import barrier
    from lgiformer.engine.finetune import _lists
    from lgiformer.optim import param_groups

    d, m, a = cfg.data, cfg.model, cfg.au
    if a.aux_weight > 0:
        log.warning("au.aux_weight weighs the auxiliary AU loss of multi-task DFER + AU runs (task dfer); ignored "
                    "in task au")
    spec = get_dataset_spec(d.dataset)
    if spec.format != "au_csv":
        raise ValueError(f"task au needs an AU dataset (format au_csv); {spec.name} is {spec.format}")
    root = resolve_root(d.data_root, d.synthetic) if spec.synthetic else Path(d.data_root)
    if spec.synthetic:
        if env.is_main:
            ensure_synthetic(root, workers="auto", **d.synthetic)
        barrier()
    stride = d.sampling_rate or spec.sampling_rate
    train_list, test_list = _lists(d, spec, root)
    names = spec.au_names or None
    # Lists hold binary labels (9 = not annotated); DISFA intensities are binarised at >= 2 by data_lists (§10.2).
    videos, au_names = read_au_csv(train_list, root, au_names=names)
    test_videos, _ = read_au_csv(test_list, root, au_names=au_names)
    train_videos, val_videos = split_by_subject(videos, d.val_fraction, seed=cfg.run.seed)
    if cfg.eval.select == "best_val" and not val_videos:
        raise ValueError("eval.select best_val needs validation subjects: the training list has too few subjects "
                         "for data.val_fraction; use eval.select last")
    rates = training_rates(train_videos)
    num_aus = len(au_names)
    rare = [n for n, r in zip(au_names, rates.tolist()) if r < MIN_RATE]
    if rare:
        log.warning("AUs %s have (almost) no positive training label in this fold: their rate is clamped to %g for "
                    "the loss weights and the bias init", ",".join(rare), MIN_RATE)
        rates = rates.clamp_min(MIN_RATE)
    log.info("AU data %s fold %d: %d train videos (%d subjects), %d validation videos (%d subjects, held out of the "
             "training list by subject), %d test videos; AUs %s; training rates %s", spec.name, d.fold,
             len(train_videos), len({v.subject for v in train_videos}), len(val_videos),
             len({v.subject for v in val_videos}), len(test_videos), ",".join(au_names),
             " ".join(f"{n}={r:.3f}" for n, r in zip(au_names, rates.tolist())))

    model, report = build_au_model(m, a, num_aus, rates=rates, pretrained=m.pretrained or None)
    log.info("%s", report.summary())
    log.info("AU model: head %s, %s%s%s", a.head, trainer.describe_model(model),
             ", encoder frozen" if a.freeze_encoder else "", ", MoKE adapters" if a.moke else "")
    out_dir = Path(cfg.run.output_dir)
    if env.is_main:
        (out_dir / "load_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    loss_fn, loss_name = build_loss(a, rates)
    args = model.encoder.model_args
    frames, size, tubelet = args["num_frames"], args["img_size"], args["tubelet_size"]

    common = dict(num_frames=frames, sampling_rate=stride, img_size=size, seed=cfg.run.seed, backend=d.backend,
                  au_names=au_names, dense=a.dense)
    train_set = AUVideoDataset(train_videos, mode="train", auto_augment=d.auto_augment or None, reprob=d.reprob,
                               windows_per_video=a.windows_per_video, **common)
    window = dict(num_frames=frames, sampling_rate=stride, img_size=size, backend=d.backend)
    val_set = AUFrameWindows(val_videos, **window) if val_videos else None
    test_set = AUFrameWindows(test_videos, **window)
    loader = build_loader(train_set, cfg.run.batch_size, shuffle=True, drop_last=True, num_workers=d.num_workers,
                          seed=cfg.run.seed)
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
    training = trainer.build_training(model, groups, cfg.run, cfg.optim, env, logger, len(loader), cfg)
    loss_fn = loss_fn.to(env.device)
    amp = ds.amp_dtype(training.precision)
    eval_kwargs = dict(threshold=a.threshold, smooth_window=a.smooth_window, batch_size=cfg.run.batch_size,
                       device=env.device, amp_dtype=amp, num_workers=d.num_workers, dense=a.dense, tubelet=tubelet)
    best = trainer.BestOnValidation(cfg.run.output_dir, keep_weights=cfg.eval.select == "best_val",
                                    is_main=env.is_main)
    latest: Dict[str, Any] = {}  # the last validation of this session, reported when testing the last weights

    def step_fn(engine, batch) -> Dict[str, torch.Tensor]:
        clips = batch[0].to(env.device, training.dtype, non_blocking=True)
        y = batch[1].to(env.device, non_blocking=True).float()
        v = batch[2].to(env.device, non_blocking=True)
        if a.dense:
            from lgiformer.au import slot_targets

            y, v = slot_targets(y, tubelet, "first", v)
        out = engine(clips, y=y) if model.wants_labels else engine(clips)
        parts = loss_fn(out, y, v.float())
        with torch.no_grad():
            probs = _probs_from_output(out, False, 0)
            hit = ((probs >= a.threshold).float() == (y >= 0.5).float()).float()
            vf = v.float()
            parts["acc"] = (hit * vf).sum() / vf.sum().clamp_min(1)
        return parts

    def end_of_epoch(state, stats) -> dict:
        bad = train_set.bad_samples.end_epoch(state.epoch, d.bad_sample_threshold)
        record: Dict[str, Any] = {"bad_samples": bad["bad"]}
        last = state.epoch + 1 == cfg.optim.epochs
        if val_set is not None and ((state.epoch + 1) % cfg.eval.every == 0 or last):
            metrics, _ = evaluate_au(training.model, val_set, au_names, **eval_kwargs)
            record.update(val_mean_f1=metrics["mean_f1"], val_frame_f1=metrics["frame"]["mean_f1"])
            logger.scalars({"mean_f1": metrics["mean_f1"], "frame_f1": metrics["frame"]["mean_f1"]}, state.step,
                           prefix="val/")
            latest.update(metrics, epoch=state.epoch)
            best.update(metrics["mean_f1"], state.epoch, training.model, metrics=metrics)
        return record

    if a.head == "monet" and a.head_args.get("num_orders", 512) > 1:
        log.info("MONET: order warm-up and the separate order-selector lr of TH §2.5.3 are not applied here; the "
                 "order logits train with the head from step 0 (no weight decay)")
    records = trainer.fit(training, cfg.run, cfg.optim, loader, step_fn,
                          checkpoint_info=dict(kind="finetune_au", model_name=model.encoder.model_name,
                                               model_args=args, config=to_dict(cfg), au_names=au_names),
                          end_of_epoch=end_of_epoch, best=best)

    final_model, selection = trainer.select_final_model(training.model, cfg.eval.select, cfg.optim.epochs, best,
                                                        "val_mean_f1")
    metrics, arrays = evaluate_au(final_model, test_set, au_names, **eval_kwargs)
    metrics.update(selection=selection, dataset=spec.name, fold=d.fold, head=a.head, loss=loss_name,
                   train_rates=dict(zip(au_names, rates.tolist())))
    if env.is_main:
        val = ({**best.info["metrics"], "epoch": best.epoch} if selection["select"] == "best_val"
               and "metrics" in best.info else latest or None)
        if val is not None:  # the validation metrics of the tested weights (best epoch, or the last validation)
            (out_dir / "val_metrics.json").write_text(json.dumps(val, indent=1))
        (out_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=1))
        write_predictions_csv(out_dir / "test_predictions.csv", test_set, au_names, arrays, a.threshold)
        logger.scalars({"mean_f1": metrics["mean_f1"], "frame_f1": metrics["frame"]["mean_f1"]},
                       training.engine.global_steps, prefix="test/")
        log.info("test (%s, epoch %d, %d frames of %d videos): mean F1 %.2f (%s)  frame-wise %.2f  centre clip %s  |  "
                 "%s", selection["select"], selection["epoch"], metrics["num_frames"], metrics["num_videos"],
                 100 * metrics["mean_f1"], metrics["protocol"], 100 * metrics["frame"]["mean_f1"],
                 f"{100 * metrics['centre_clip']['mean_f1']:.2f}" if "centre_clip" in metrics else "-",
                 " ".join(f"{n} {100 * f:.1f}" for n, f in metrics["per_au"].items()))
        if cfg.release_dir != "none":
            save_au_model(final_model, out_dir, cfg, au_names, rates, selection, metrics)
    barrier()
    return dict(epochs=records, test=metrics, selection=selection)


# ==================================================================================================================
# Export
# ==================================================================================================================
def save_au_model(model: AUModel, out_dir: str | Path, cfg, au_names: Sequence[str], rates: torch.Tensor,
                  selection: Dict, metrics: Dict) -> Path:
    """``au_model.safetensors`` (the AUModel state dict, fp32) + ``au_config.json`` in ``out_dir``."""
    from safetensors.torch import save_file

    from lgiformer.config import to_dict

    out = Path(out_dir)
    sd = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
          for k, v in model.state_dict().items()}
    save_file(sd, str(out / "au_model.safetensors"), metadata={"format": "pt"})
    config = dict(format="lgiformer-au", model_name=model.encoder.model_name, model_args=model.encoder.model_args,
                  model=to_dict(cfg.model), au=to_dict(cfg.au), au_names=list(au_names),
                  rates=[float(r) for r in rates], threshold=cfg.au.threshold, smooth_window=cfg.au.smooth_window,
                  data=dict(dataset=cfg.data.dataset, fold=cfg.data.fold,
                            sampling_rate=cfg.data.sampling_rate),
                  selection=selection, test_mean_f1=metrics.get("mean_f1"))
    (out / "au_config.json").write_text(json.dumps(config, indent=1) + "\n")
    log.info("AU model: %s (+ au_config.json); rebuild with lgiformer.engine.finetune_au.load_au_model(%s)",
             out / "au_model.safetensors", out)
    return out / "au_model.safetensors"


def load_au_model(run_dir: str | Path) -> tuple[AUModel, Dict]:
    """Rebuild the AUModel saved by :func:`save_au_model` (eval mode) and return it with its ``au_config.json``.
    The encoder is built from the saved ``model_name`` / ``model_args`` (what was trained, whatever the recipe said)."""
    from safetensors.torch import load_file

    from lgiformer.au import build_au_head
    from lgiformer.engine.finetune import AUConfig
    from lgiformer.models import create_model

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "au_config.json").read_text())
    margs = {k: v for k, v in config["model_args"].items() if k not in CLASSIFIER_ARGS}
    encoder = create_model(config["model_name"], num_classes=0, global_pool="", **margs)
    acfg = AUConfig(**config["au"])
    num_aus = len(config["au_names"])
    head = build_au_head(acfg.head, **head_kwargs(acfg.head, encoder, num_aus, acfg.dense, dict(acfg.head_args)))
    model = AUModel(encoder, head, num_aus=num_aus, freeze_encoder=acfg.freeze_encoder, moke=acfg.moke,
                    moke_args=moke_kwargs(dict(acfg.head_args)), dense=acfg.dense)
    model.load_state_dict(load_file(str(run_dir / "au_model.safetensors")))
    return model.eval(), config
