"""The typed config: layering, overrides, reference aliases, and clear errors for bad input."""
from pathlib import Path

import pytest

from lgiformer.config import ConfigError, load_config, parse_overrides, split_config_arg
from lgiformer.tasks.finetune import FinetuneConfig, load_finetune_config
from lgiformer.tasks.pretrain import PretrainConfig, load_pretrain_config
from lgiformer.data.synthetic import resolve_root


def test_layering_defaults_yaml_cli(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("optim:\n  blr: 0.5\n  epochs: 20\nrun:\n  batch_size: 4\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\noptim:\n  epochs: 30\n")
    cfg = load_pretrain_config(str(child), ["--run.batch_size", "16", "optim.warmup_epochs=2"])
    assert cfg.optim.blr == 0.5            # from the base file
    assert cfg.optim.epochs == 30          # the child wins over the base
    assert cfg.run.batch_size == 16        # the command line wins over both
    assert cfg.optim.warmup_epochs == 2.0
    assert cfg.model.mask_ratio == 0.9     # dataclass default


def test_reference_flag_aliases_and_values():
    cfg = load_pretrain_config(None, ["--batch_size", "12", "--mask_type", "part_window", "--opt_betas", "0.9,0.95",
                                      "--model", "vit_small_patch16_160", "--epochs", "40"])
    assert cfg.run.batch_size == 12 and cfg.optim.epochs == 40
    assert cfg.model.mask_type == "region_balanced"  # the reference's name for the same masking
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.model.name == "vit_small_patch16_160"
    ft = load_finetune_config(None, ["--fold", "3", "--pretrained", "none", "--nb_classes", "11"])
    assert (ft.data.fold, ft.model.pretrained, ft.data.num_classes) == (3, "none", 11)


@pytest.mark.parametrize("text,expected", [("False", False), ("false", False), ("True", True), ("true", True)])
def test_booleans_parse_strictly(text, expected):
    assert load_pretrain_config(None, ["--run.compile", text]).run.compile is expected


@pytest.mark.parametrize("text", ["0", "1", "yes", "no", "on", "off", "y"])
def test_booleans_refuse_anything_but_true_and_false(text):
    """The README promises true/false: "yes" or "0" is a typo to report, not a value to guess."""
    with pytest.raises(ConfigError, match="expected a boolean, true or false"):
        load_pretrain_config(None, ["--run.tensorboard", text])


def test_bare_boolean_flag_is_true():
    assert load_pretrain_config(None, ["--run.compile", "--run.batch_size", "2"]).run.compile is True


@pytest.mark.parametrize("args,fragment", [
    (["--run.batch_sise", "3"], "did you mean batch_size"),
    (["--run.compile", "maybe"], "expected a boolean"),
    (["--model.mask_ratio", "abc"], "expected float"),
    (["--model.mask_ratio", "1.5"], "mask_ratio must be in (0, 1)"),
    (["--run.precision", "fp8"], "run.precision"),
    (["--model.name", "resnet50"], "unknown encoder"),
    (["--model.targets", "appearance,depth"], "model.targets"),
    (["--optim.warmup_epochs", "500"], "warmup_epochs"),
    (["--run", "3"], "is a section"),
    (["stray"], "unexpected argument"),
])
def test_bad_values_fail_with_a_clear_message(args, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_pretrain_config(None, args)
    assert fragment in str(err.value)


@pytest.mark.parametrize("value", ["none", "null", "None", ""])
def test_auto_augment_off_spellings_all_mean_no_randaugment(value):
    assert load_finetune_config(None, ["--data.auto_augment", value]).data.auto_augment == ""


def test_bad_auto_augment_is_a_config_error_not_a_timm_assertion():
    with pytest.raises(ConfigError) as err:
        load_finetune_config(None, ["--data.auto_augment", "m7-n4"])
    assert "data.auto_augment" in str(err.value) and "rand-m7-n4" in str(err.value)


def test_unknown_key_in_yaml_names_the_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"config\.optim: unknown key 'learning_rate'"):
        load_pretrain_config(str(bad), [])
    with pytest.raises(ConfigError, match="not found"):
        load_pretrain_config(str(tmp_path / "missing.yaml"), [])


def test_effective_lr_scales_with_total_batch():
    cfg = load_config(PretrainConfig, None, ["--optim.blr", "3e-4"])
    lr, min_lr, _ = cfg.optim.effective_lr(512)
    assert lr == pytest.approx(6e-4) and min_lr == pytest.approx(2e-5)
    cfg = load_config(PretrainConfig, None, ["--optim.lr", "1e-3"])
    assert cfg.optim.effective_lr(512)[0] == 1e-3  # an absolute lr is taken as is


def test_split_config_arg_and_recipes_load():
    assert split_config_arg(["--config", "a.yaml", "--x", "1"], None) == ("a.yaml", ["--x", "1"])
    assert split_config_arg(["--x", "1"], "d.yaml") == ("d.yaml", ["--x", "1"])
    assert split_config_arg(["--local_rank=3", "--x", "1", "--local-rank", "2"], None) == (None, ["--x", "1"])
    for name in ("demo", "voxceleb2_lgiformer_base", "voxceleb2_vit_base"):
        load_pretrain_config(f"pretrain/configs/{name}.yaml", [])
    paper = load_pretrain_config("pretrain/configs/voxceleb2_lgiformer_base.yaml", [])
    assert (paper.model.mask_ratio, paper.optim.betas, paper.optim.blr) == (0.9, [0.9, 0.95], 3e-4)
    assert load_pretrain_config("pretrain/configs/voxceleb2_vit_base.yaml", []).model.mask_type == "tube"
    for name in ("demo", "dfew", "mafw", "ferv39k"):
        load_finetune_config(f"finetune/configs/{name}.yaml", [])
    dfew = load_finetune_config("finetune/configs/dfew.yaml", ["--fold", "4"])
    assert (dfew.optim.layer_decay, dfew.data.mixup, dfew.data.cutmix, dfew.data.fold) == (0.75, 0.8, 1.0, 4)
    assert load_finetune_config("finetune/configs/ferv39k.yaml", []).data.sampling_rate == 1


def test_the_three_demos_share_one_synthetic_set():
    """The demo release must be pretrained on the videos that the finetuning demos use, and README's predict command
    reads data/synthetic/demo: the three demos name no data root and ask for the same options, the "demo" set."""
    sets = {(c.data.data_root, tuple(sorted(c.data.synthetic.items()))) for c in (
        load_pretrain_config("pretrain/configs/demo.yaml", []),
        load_finetune_config("finetune/configs/demo.yaml", []),
        load_finetune_config("finetune/configs/au_demo.yaml", []))}
    assert len(sets) == 1, sets
    (root, options), = sets
    assert root == "" and dict(options)["face_zoom"] == 1.6
    assert resolve_root(root, dict(options)) == Path("data/synthetic/demo")


def test_overrides_parse_to_nested_dict():
    assert parse_overrides(["--optim.blr=0.1", "run.seed=3"], FinetuneConfig) == {"optim": {"blr": "0.1"},
                                                                                   "run": {"seed": "3"}}


def test_finetuning_refuses_zero3_before_training_not_after():
    with pytest.raises(ConfigError, match="run.zero_stage 3 is for pretraining only"):
        load_finetune_config(None, ["--run.zero_stage", "3"])
    assert load_finetune_config(None, ["--run.zero_stage", "2"]).run.zero_stage == 2


def test_label_token_head_arguments_are_checked_at_load():
    cfg = load_finetune_config(None, ["--model.global_pool", "label_token", "--model.head_args", "{dim: 64}"])
    assert cfg.model.head_kwargs() == {"global_pool": "label_token", "head_args": {"dim": 64}}
    with pytest.raises(ConfigError, match=r"model.head_args \['dims'\] are not settable .*accepted: dim, depth"):
        load_finetune_config(None, ["--model.global_pool", "label_token", "--model.head_args", "{dims: 64}"])
    with pytest.raises(ConfigError, match="model.head_args .* are for model.global_pool label_token"):
        load_finetune_config(None, ["--model.head_args", "{dim: 64}"])


@pytest.mark.parametrize("load", [load_pretrain_config, load_finetune_config])
def test_synthetic_data_options_are_checked_at_load(load):
    """Before: a typo reached the generator after the process group was up, as a TypeError traceback."""
    with pytest.raises(ConfigError, match=r"data.synthetic: unknown .*'subjects:40'.* space after each colon"):
        load(None, ["--data.synthetic", "{subjects:40}"])
    with pytest.raises(ConfigError, match="data.synthetic: .*subjects must be >= 5"):
        load(None, ["--data.synthetic", "{subjects: 3}"])
    assert load(None, ["--data.synthetic", "{subjects: 40, face_zoom: 1.6}"]).data.synthetic["subjects"] == 40
    assert load(None, ["--data.synthetic", "{subjects: 40, overwrite: true}"]).data.synthetic["overwrite"] is True
    with pytest.raises(ConfigError, match="data.synthetic: .*overwrite must be true or false"):
        load(None, ["--data.synthetic", "{overwrite: 3}"])
