"""No code path unpickles arbitrary objects: a malicious checkpoint is refused and never executed."""
import argparse
import pickle
from pathlib import Path

import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.convert import main as convert_main
from lgiformer.interop import UnsafeCheckpointError, load_checkpoint

FIX = Path(__file__).parent / "fixtures" / "mae_dfer_reference"


class Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _weights():
    return {"patch_embed.proj.weight": torch.zeros(8, 3, 2, 16, 16)}


@pytest.mark.parametrize("how", ["zip", "legacy", "plain_pickle_protocol4", "inside_namespace"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, how):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    if how == "zip":
        torch.save({"model": _weights(), "args": Payload(marker)}, path)
    elif how == "legacy":
        torch.save({"model": _weights(), "extra": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    elif how == "plain_pickle_protocol4":
        path.write_bytes(pickle.dumps({"model": {}, "x": Payload(marker)}, protocol=4))
    else:
        torch.save({"model": _weights(), "args": argparse.Namespace(lr=1e-3, hook=Payload(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load|cannot read") as info:
        load_checkpoint(path)
    assert not marker.exists(), "the payload ran"
    if how in ("zip", "legacy", "inside_namespace"):
        assert "builtins.exec" in str(info.value)


def test_cli_refuses_malicious_checkpoint_with_clear_message(tmp_path, capsys):
    marker = tmp_path / "marker"
    torch.save({"model": _weights(), "args": Payload(marker)}, tmp_path / "evil.pth")
    rc = convert_main(["mae-dfer", "--input", str(tmp_path / "evil.pth"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to load" in err and "argparse.Namespace" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_other_objects_are_refused_even_if_harmless(tmp_path):
    from collections import Counter

    torch.save({"model": _weights(), "counts": Counter(a=1)}, tmp_path / "c.pth")  # torch itself allows Counter
    with pytest.raises(UnsafeCheckpointError, match="collections.Counter"):
        load_checkpoint(tmp_path / "c.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_tensors_containers_and_namespace_load(tmp_path, legacy):
    obj = {"model": _weights(), "epoch": 3, "args": argparse.Namespace(model="vit", input_size=(160, 160)),
           "lists": [1, 2.0, "x", None, (True,)]}
    torch.save(obj, tmp_path / "ok.pth", _use_new_zipfile_serialization=not legacy)
    out = load_checkpoint(tmp_path / "ok.pth")
    assert isinstance(out["args"], argparse.Namespace) and out["args"].input_size == (160, 160)
    assert torch.equal(out["model"]["patch_embed.proj.weight"], obj["model"]["patch_embed.proj.weight"])
    assert argparse.Namespace not in torch.serialization.get_safe_globals(), "the allowlist must not leak"


def test_reference_fixture_loads():
    ckpt = load_checkpoint(FIX / "lgiformer_tiny_finetuned.pth")
    assert isinstance(ckpt["args"], argparse.Namespace) and "lg_region_tokens" in ckpt["model"]
