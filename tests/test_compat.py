import subprocess
import sys


def test_timm_and_torchvision_import_after_lgiformer():
    """In a fresh interpreter: `import lgiformer` makes timm and torchvision.transforms importable, whether or not
    torchvision's compiled ops match torch (the CPU torch + CUDA torchvision trap)."""
    code = (
        "import lgiformer, lgiformer._compat as c, torch, timm, torchvision.transforms as T\n"
        "m = timm.create_model('resnet10t', pretrained=False).eval()\n"
        "assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)\n"
        "assert T.Compose([T.CenterCrop(8)])(torch.zeros(3, 16, 16)).shape == (3, 8, 8)\n"
        "if c.TORCHVISION_OPS_PATCHED:\n"
        "    assert hasattr(torch.ops.torchvision, 'nms')\n"
        "print('patched' if c.TORCHVISION_OPS_PATCHED else 'native')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"patched", "native"}
