"""Typed configuration: dataclasses, layered as defaults < YAML recipe < command line.

Every run is described by one dataclass tree (``PretrainConfig``, ``FinetuneConfig``). A recipe YAML mirrors its
sections; the command line overrides any leaf with ``--section.key value`` (or ``section.key=value``). Values are
checked against the field's type: ``"False"`` is False (the reference parsed any string as True with
``type=bool``), a list field takes ``a,b`` or a YAML list, and an unknown key fails with the closest valid names.
The common flag names of the reference MAE-DFER / VideoMAE scripts (``--batch_size``, ``--blr``, ``--mask_ratio``,
``--model``...) are accepted as aliases, so their users can move over.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import yaml

from lgiformer.data.synthetic import check_options
from lgiformer.errors import InputError
from lgiformer.models import ENCODER_NAMES

T = TypeVar("T")


class ConfigError(InputError):
    """A recipe or command-line value that does not fit the config schema."""


# ---------------------------------------------------------------------------------------------- conversion


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise ConfigError(f"{where}: expected a boolean, true or false, got {value!r}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` (from YAML or a command-line string) as type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>" or type(tp).__name__ == "UnionType":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        return _parse_bool(value, where)
    if tp in (int, float, str):
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{where}: expected a string, got {value!r}")
            return "" if value is None else str(value)
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            number = float(value) if tp is float else value
            if tp is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                number = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _unknown(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (valid: {', '.join(valid)})")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and bad values raise :class:`ConfigError`."""
    data = dict(data or {})
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(key, fields, where)
        _, tp = fields[key]
        path = f"{where}.{key}"
        if _is_dataclass_type(tp):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def merge(base: dict, update: Mapping[str, Any]) -> dict:
    """Deep merge of nested dicts; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A recipe file; ``_base_: other.yaml`` (relative to the file) is merged underneath first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    base = data.pop("_base_", None)
    if base:
        data = merge(read_yaml(path.parent / base), data)
    return data


def parse_overrides(args: Sequence[str], cls: type, aliases: Mapping[str, str] | None = None) -> dict:
    """``--a.b value``, ``--a.b=value``, ``a.b=value`` and the aliased reference flags -> nested dict.

    A boolean leaf given as a bare flag (``--run.compile``) is set to true."""
    aliases = dict(aliases or {})
    out: dict = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
        elif "=" in token:
            key, _, value = token.partition("=")
            eq = "="
        else:
            raise ConfigError(f"unexpected argument {token!r}: use --section.key value or section.key=value")
        key = key.replace("-", "_")
        if "." not in key and key in aliases:
            try:
                _leaf_type(cls, aliases[key])
                key = aliases[key]
            except ConfigError:
                pass  # an alias for a section this run does not have: report the name as given
        tp = _leaf_type(cls, key)
        if not eq:
            if _takes_bool(tp) and (i + 1 >= len(args) or args[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise ConfigError(f"--{key} needs a value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        i += 1
    return out


def _takes_bool(tp: Any) -> bool:
    """A boolean leaf, or a union that accepts booleans (``bool | str``): a bare flag sets it to true."""
    return tp is bool or bool in typing.get_args(tp)


def _leaf_type(cls: type, key: str) -> Any:
    node: Any = cls
    where = "config"
    for part in key.split("."):
        if not _is_dataclass_type(node):
            raise ConfigError(f"{where} is not a section; cannot set {key!r}")
        fields = _fields(node)
        if part not in fields:
            raise _unknown(part, fields, where)
        node = fields[part][1]
        where = f"{where}.{part}"
    if _is_dataclass_type(node):
        raise ConfigError(f"{key!r} is a section; set one of its keys ({', '.join(_fields(node))})")
    return node


def load_config(cls: type[T], config_file: str | Path | None = None, overrides: Sequence[str] = (),
                aliases: Mapping[str, str] | None = None) -> T:
    """defaults < ``config_file`` < ``overrides`` (command-line tokens)."""
    data = read_yaml(config_file) if config_file else {}
    data = merge(data, parse_overrides(list(overrides), cls, aliases))
    return from_dict(cls, data, where="config")


def save_config(cfg: Any, path: str | Path, **extra: Any) -> None:
    """The resolved config (plus derived values such as the effective lr) as YAML next to the outputs."""
    data = to_dict(cfg)
    if extra:
        data["derived"] = extra
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False))


def split_config_arg(argv: Sequence[str], default: str | None) -> tuple[str | None, list[str]]:
    """Take ``--config FILE`` out of argv (the rest are overrides). The ``--local_rank`` that the ``deepspeed`` and
    old ``torch.distributed.launch`` launchers append is dropped: the rank comes from the environment."""
    argv = list(argv)
    cleaned: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("--local_rank", "--local-rank"):
            skip = True
            continue
        if token.startswith(("--local_rank=", "--local-rank=")):
            continue
        cleaned.append(token)
    argv = cleaned
    config = default
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
            return config, argv[:i] + argv[i + 2:]
        if token.startswith("--config="):
            return token.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return config, argv


# ---------------------------------------------------------------------------------------------- shared sections


@dataclasses.dataclass
class OptimConfig:
    """AdamW with warmup + cosine. The lr actually used is ``blr x total batch / 256`` unless ``lr`` is set; it is
    logged and saved, because it changes with the number of GPUs (docs/REFERENCE.md#defect-9)."""
    blr: float = 3e-4
    lr: float | None = None
    min_blr: float = 1e-5            # the cosine's floor, scaled like blr
    warmup_blr: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05
    weight_decay_end: float | None = None   # cosine weight-decay schedule end (None: constant)
    layer_decay: float | None = None
    clip_grad: float | None = None
    epochs: int = 100
    warmup_epochs: float = 5.0
    accum_steps: int = 1

    def validate(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two values in [0, 1), got {self.betas}")
        if self.epochs < 1 or self.accum_steps < 1:
            raise ConfigError("optim.epochs and optim.accum_steps must be >= 1")
        if self.blr <= 0 or (self.lr is not None and self.lr <= 0):
            raise ConfigError("optim.blr / optim.lr must be positive")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError(f"optim.warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")

    def effective_lr(self, total_batch: int) -> tuple[float, float, float]:
        """(lr, min_lr, warmup start lr) for a total batch (all processes, with accumulation)."""
        scale = total_batch / 256.0
        lr = self.lr if self.lr is not None else self.blr * scale
        return lr, self.min_blr * scale, self.warmup_blr * scale


@dataclasses.dataclass
class RunConfig:
    """Where and how a run executes (not what it learns)."""
    output_dir: str = "output/run"
    batch_size: int = 8                 # per process (micro-batch)
    precision: str = "auto"             # auto (bf16 on GPUs that support it, else fp32) | bf16 | fp16 | fp32
    zero_stage: int = 0
    device: str = "auto"
    seed: int = 0
    resume: str = ""                    # "" (fresh), "auto" (newest complete checkpoint, if any), or a path
    overwrite: bool = False             # a fresh run in a folder with another run's checkpoints moves them aside
    save_every: int = 1                 # epochs
    keep_last: int = 3
    log_every: int = 10                 # micro-batches
    image_every: int = 100              # steps between reconstruction images (0: never)
    feature_batches: int = 4            # training forwards per epoch whose feature sizes are logged (0: none)
    max_nonfinite: int = 10             # consecutive non-finite losses before aborting
    max_steps_per_epoch: int = 0        # 0: the whole epoch (a cap is for smoke runs and tests)
    compile: bool | str = "auto"        # torch.compile: auto (on for CUDA, off on CPU) | true | false
                                        # (mode, CUDA graphs and cache: lgiformer/engine/compile.py)
    grad_checkpointing: bool = False
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"run.batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"run.precision: expected auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"run.zero_stage: expected 0-3, got {self.zero_stage}")
        if not isinstance(self.compile, bool) and self.compile != "auto":
            raise ConfigError(f"run.compile: expected a boolean (true/false) or auto, got {self.compile!r}")
        if self.max_nonfinite < 1 or self.keep_last < 1 or self.log_every < 1:
            raise ConfigError("run.max_nonfinite, run.keep_last and run.log_every must be >= 1")
        if self.feature_batches < 0:
            raise ConfigError(f"run.feature_batches must be >= 0, got {self.feature_batches}")


@dataclasses.dataclass
class EncoderConfig:
    """The encoder's architecture, shared by every task's ``model`` section. ``None`` takes the variant's value."""
    name: str = "lgiformer_base_patch16_160"
    img_size: int = 160
    num_frames: int = 16
    tubelet_size: int = 2
    patch_size: int = 16
    region_size: list[int] | None = None     # (t, h, w) tokens per region (lgiformer_* only)
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0

    def validate(self) -> None:
        if self.name not in ENCODER_NAMES:
            raise ConfigError(f"model.name: unknown encoder {self.name!r}; available: {', '.join(ENCODER_NAMES)}")
        if self.region_size is not None and not self.name.startswith("lgiformer"):
            raise ConfigError("model.region_size applies to lgiformer_* encoders only")

    def arch_kwargs(self) -> dict[str, Any]:
        """The encoder's constructor arguments that this section sets (drop path excluded)."""
        kwargs: dict[str, Any] = dict(img_size=self.img_size, num_frames=self.num_frames,
                                      tubelet_size=self.tubelet_size, patch_size=self.patch_size)
        for key in ("region_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs


@dataclasses.dataclass
class DataConfig:
    """What every task's ``data`` section has."""
    dataset: str = ""                         # a name in lgiformer/data/datasets.yaml
    data_root: str = ""                       # "" with a synthetic dataset: data/synthetic/<its options' name>
    num_workers: int = 2
    backend: str = "auto"                     # auto | decord | pyav | frames
    bad_sample_threshold: float = 0.01        # unreadable fraction that stops training (per epoch) or evaluation
    min_frames: int = 0                       # a listed video needs this many frames (0: the clip's num_frames)
    synthetic: dict = dataclasses.field(default_factory=dict)   # generator options (lgiformer.data.synthetic)

    def validate(self) -> None:
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if not 0.0 <= self.bad_sample_threshold <= 1.0:
            raise ConfigError(f"data.bad_sample_threshold must be in [0, 1], got {self.bad_sample_threshold}")
        if self.min_frames < 0:
            raise ConfigError(f"data.min_frames must be >= 0 (0: the clip's num_frames), got {self.min_frames}")
        check_synthetic(self.synthetic)


# Reference MAE-DFER / VideoMAE flag names -> ours (only where they mean the same thing).
REFERENCE_ALIASES = {
    "batch_size": "run.batch_size", "output_dir": "run.output_dir", "log_dir": "run.output_dir", "seed": "run.seed",
    "resume": "run.resume", "save_ckpt_freq": "run.save_every", "zero_stage": "run.zero_stage",
    "blr": "optim.blr", "lr": "optim.lr", "min_lr": "optim.min_blr", "warmup_lr": "optim.warmup_blr",
    "weight_decay": "optim.weight_decay", "weight_decay_end": "optim.weight_decay_end",
    "opt_betas": "optim.betas", "opt_eps": "optim.eps", "clip_grad": "optim.clip_grad", "epochs": "optim.epochs",
    "warmup_epochs": "optim.warmup_epochs", "layer_decay": "optim.layer_decay", "update_freq": "optim.accum_steps",
    "model": "model.name", "input_size": "model.img_size", "num_frames": "model.num_frames",
    "tubelet_size": "model.tubelet_size", "drop_path": "model.drop_path_rate", "mask_ratio": "model.mask_ratio",
    "mask_type": "model.mask_type", "decoder_depth": "model.decoder_depth",
    "sampling_rate": "data.sampling_rate", "num_workers": "data.num_workers", "data_path": "data.list_file",
    "data_root": "data.data_root", "finetune": "model.pretrained", "nb_classes": "data.num_classes",
    "data_set": "data.dataset", "reprob": "data.reprob", "aa": "data.auto_augment", "mixup": "data.mixup",
    "cutmix": "data.cutmix", "smoothing": "data.smoothing", "test_num_segment": "data.test_num_clips",
    "test_num_crop": "data.test_num_crops", "fold": "data.fold",
}


def check_synthetic(options: dict, where: str = "data.synthetic") -> None:
    """A recipe's synthetic-data options, checked at load: a typo fails before any process or file exists."""
    if not options:
        return
    try:
        check_options(options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def config_main(argv: Sequence[str], *, prog: str, doc: str, default_config: str | Path,
                load: Callable[[str | None, list[str]], Any], run: Callable[[Any], Any]) -> int:
    """The body of a ``run.py`` entry point: ``--help`` prints ``doc``; ``--config FILE`` (default
    ``default_config``) plus ``--section.key value`` overrides are loaded by ``load``; a config error is one line on
    stderr and exit 2 (before any process group or file exists); then ``run(config)``, where an
    :class:`~lgiformer.errors.InputError` (bad data, lists, checkpoints) is its message without a traceback and exit
    2 (a message listing several problems has one line per problem; processes other than rank 0 print only its
    first line)."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        return 0
    config_file, overrides = split_config_arg(argv, str(default_config))
    try:
        cfg = load(config_file, overrides)
    except ConfigError as err:
        print(f"{prog}: config error: {err}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except InputError as err:  # bad data, lists or checkpoints found after start-up: no traceback
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            print(f"{prog}: error: {err}", file=sys.stderr)
        else:  # the other processes stop too; rank 0's message has the details (each rank's own first line)
            print(f"{prog}: error (rank {rank}): {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
