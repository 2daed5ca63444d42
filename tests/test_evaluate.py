"""View averaging, deterministic validation, reports (metrics JSON, predictions CSV, confusion PNG)."""
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lgiformer  # noqa: F401
from lgiformer.inference import average_views, evaluate, forward_views, save_report


class ToyClips(Dataset):
    """Label k clips are brighter in channel k; ``views`` > 0 returns [V, 3, T, H, W] with per-view jitter."""

    def __init__(self, n=12, k=3, views=0):
        self.n, self.k, self.views = n, k, views

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        label = i % self.k
        shape = (max(self.views, 1), 3, 2, 4, 4)
        x = torch.randn(shape, generator=g) * 0.1
        x[:, label] += 1.0
        return (x if self.views else x[0]), label, i


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.drop = nn.Dropout(0.5)  # would make results random if eval mode were not set
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3) * 4)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.drop(x.mean((2, 3, 4))))


def test_average_views_is_mean_of_softmax():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    p = average_views(logits)
    expected = (logits[:, 0].softmax(-1) + logits[:, 1].softmax(-1)) / 2
    assert torch.allclose(p, expected)
    assert torch.allclose(p.sum(-1), torch.ones(2))
    # averaging probabilities, not logits: the confident view does not simply win
    assert p[0, 1] > 0.5 and not torch.allclose(p[0], logits[0].mean(0).softmax(-1))
    assert torch.allclose(average_views(logits[:, 0]), logits[:, 0].softmax(-1))  # single view


def test_forward_views_shapes_and_chunking():
    model = ToyModel().eval()
    views = torch.randn(2, 4, 3, 2, 4, 4)
    out = forward_views(model, views)
    assert out.shape == (2, 4, 3)
    assert torch.allclose(out, forward_views(model, views, max_views_per_call=3))
    assert torch.allclose(out[1, 2], model(views[1, 2:3])[0])


@pytest.mark.parametrize("views", [0, 4])
def test_validation_is_deterministic(views):
    model = ToyModel().train()  # evaluate must switch to eval mode (dropout off) and restore training mode
    loader = DataLoader(ToyClips(views=views), batch_size=5, shuffle=False)
    a = evaluate(model, loader, 3, ["a", "b", "c"])
    b = evaluate(model, DataLoader(ToyClips(views=views), batch_size=3), 3, ["a", "b", "c"])
    assert model.training
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.indices, np.arange(12))
    assert a.metrics == b.metrics
    assert a.metrics["uar"] == 1.0 and a.metrics["war"] == 1.0


def test_save_report(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    loader = DataLoader(ToyClips(views=2), batch_size=4)
    result = evaluate(ToyModel(), loader, 3, ["a", "b", "c"])
    with SummaryWriter(tmp_path / "tb") as writer:
        report = save_report(result, tmp_path, "test", ["a", "b", "c"], sample_paths=[f"v{i}" for i in range(12)],
                             writer=writer, step=3, extra={"selection": "last"})
    assert report["selection"] == "last"
    assert json.loads((tmp_path / "test_metrics.json").read_text())["war"] == 1.0
    rows = list(csv.DictReader(open(tmp_path / "test_predictions.csv")))
    assert len(rows) == 12 and rows[5]["path"] == "v5" and rows[5]["pred_name"] == "c"
    assert sum(float(rows[0][f"p_{n}"]) for n in "abc") == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "test_confusion.png").stat().st_size > 0
    assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())
