"""The timm convention: ``import lgiformer`` registers every model, and imports nothing heavy."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_registers_every_encoder_with_timm_and_imports_nothing_heavy():
    """A fresh interpreter: after ``import lgiformer`` alone, ``timm.create_model`` builds every encoder (the base one
    runs a clip), and DeepSpeed, transformers and matplotlib are not loaded (they cost seconds and are only needed
    to train, to read Hugging Face folders and to plot)."""
    code = (
        "import json, sys\n"
        "import lgiformer\n"  # first: its torchvision fix must run before timm imports torchvision
        "import timm, torch\n"
        "names = sorted(timm.list_models('lgiformer_*') + timm.list_models('vit_*_patch16_160'))\n"
        "m = timm.create_model('lgiformer_base_patch16_160', num_classes=7, depth=1).eval()\n"
        "with torch.no_grad():\n"
        "    shape = list(m(torch.zeros(1, 3, 16, 160, 160)).shape)\n"
        "built = [n for n in names if timm.create_model(n, depth=1) is not None]\n"
        "heavy = [k for k in sys.modules if k.split('.')[0] in ('deepspeed', 'transformers', 'matplotlib')]\n"
        "print(json.dumps(dict(names=names, built=built, shape=shape, heavy=heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    from lgiformer.models import ENCODER_NAMES

    assert result["names"] == sorted(ENCODER_NAMES) and "lgiformer_base_patch16_160" in result["names"]
    assert result["built"] == result["names"]
    assert result["shape"] == [1, 7]
    assert result["heavy"] == []
