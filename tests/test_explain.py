"""``lgiformer.predict --explain``: the heat map is what its definition says (a hand computation for the gradient
map, the head's own attention for the label-token head), it finds the one place a model reads, and the CLI writes
one overlay per input."""
import json

import numpy as np
import torch
from PIL import Image

from _cli import run
from lgiformer.explain import token_heat
from lgiformer.models import create_model
from lgiformer.models.release import write_release

TINY = dict(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2)


def _clip(seed=0):
    return torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_gradient_map_is_relu_of_gradient_times_the_patch_embedding():
    torch.manual_seed(0)
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, region_size=[2, 2, 2], **TINY).eval()
    nontrivial = 0
    for seed in range(4):
        clip = _clip(seed)
        heat, index, method = token_heat(model, clip)
        embedded = model.patch_embed(clip[None]).detach().requires_grad_(True)  # the same forward, by hand
        x = model.layout.to_region_major(embedded) + model.pos_embed
        x = model.layout.split_regions(x)
        s = torch.cat((model.lg_region_tokens.expand(1, -1, -1).unsqueeze(2), x), dim=2)
        for blk in model.blocks:
            s = blk(s)
        logits = model.head(model.fc_norm(s[:, :, 0].mean(1)))
        assert index == int(logits[0].argmax()) and method == "gradient x embedding"
        grad, = torch.autograd.grad(logits[0, index], embedded)
        want = torch.relu((grad * embedded)[0].sum(-1)).reshape(2, 2, 2)
        want = (want - want.min()) / (want - want.min()).max().clamp_min(1e-12)
        torch.testing.assert_close(heat, want)
        nontrivial += float(heat.max()) == 1.0
    assert nontrivial >= 2


def test_the_map_finds_the_only_position_the_classifier_reads():
    """A ViT without blocks (so no attention mixes positions) whose spatial-pooled head has weights for one position
    only: nothing else can move the logits."""
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_160", num_classes=2, global_pool="spatial", **{**TINY, "depth": 0}).eval()
    with torch.no_grad():
        weight = model.head.weight.view(2, 2, 2, 32)  # [classes, h, w, C]
        weight.zero_()
        weight[:, 1, 0] = torch.randn(2, 32)
    heat, _, _ = token_heat(model, _clip(1))
    assert heat.shape == (2, 2, 2)
    assert float(heat[:, 1, 0].max()) == 1.0 and float(heat.sum() - heat[:, 1, 0].sum()) == 0.0


def test_label_token_heat_is_the_heads_attention_for_the_class():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_160", num_classes=3, global_pool="label_token",
                         head_args=dict(dim=16, num_heads=2, depth=1), **TINY).eval()
    clip = _clip(2)
    heat, index, method = token_heat(model, clip, class_index=1)
    with torch.no_grad():
        out = model.head(model.fc_norm(model.forward_features(clip[None])), grid=model.layout.grid, n_special=0)
    attn = out["attn"][0, :, 1].mean(0).reshape(2, 2, 2)
    want = (attn - attn.min()) / (attn - attn.min()).max()
    assert index == 1 and method == "label-token attention"
    torch.testing.assert_close(heat, want)


def test_predict_explain_writes_one_overlay_per_input(tmp_path, media):
    torch.manual_seed(0)
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, region_size=[2, 2, 2], **TINY)
    release = write_release(model, tmp_path / "rel", task="dfer", source={"format": "test"},
                            class_names=["a", "b", "c"], data=dict(sampling_rate=2, test_num_clips=1,
                                                                   test_num_crops=1))
    inputs = [media.folder(tmp_path / f"clip{i}", media.frames(t=12, size=48, seed=i)) for i in range(2)]
    proc = run(["-m", "lgiformer.predict", "--model", release, *inputs, "--explain", tmp_path / "maps", "--json"])
    results = json.loads(proc.stdout)["results"]
    for r in results:
        image = np.asarray(Image.open(r["explain"]["path"]))
        assert image.shape == (2 * 32, 2 * 32, 3)  # frames over overlays, one column per tubelet
        assert r["explain"]["class_index"] == ["a", "b", "c"].index(r["prediction"])
        assert not np.array_equal(image[:32], image[32:])  # the overlay is drawn
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["000_clip0.png", "001_clip1.png"]
