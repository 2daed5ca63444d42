"""The fold summary script: mean +- std over folds from each run's metrics JSON."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_summarize_folds(tmp_path):
    for fold, (u, w) in enumerate([(0.5, 0.6), (0.7, 0.8)], 1):
        run = tmp_path / f"fold{fold}"
        run.mkdir()
        m = dict(uar=u, war=w, weighted_f1=w, selection="last", per_class_recall={"a": u, "b": None})
        (run / "test_metrics.json").write_text(json.dumps(m))
    out = subprocess.run([sys.executable, str(ROOT / "scripts/summarize_folds.py"), "--per-class",
                          str(tmp_path / "fold1"), str(tmp_path / "fold2")], capture_output=True, text=True, check=True)
    assert "60.00 ± 14.14" in out.stdout and "70.00 ± 14.14" in out.stdout  # UAR, WAR (sample std)
    assert "fold1 (last)" in out.stdout
    md = subprocess.run([sys.executable, str(ROOT / "scripts/summarize_folds.py"), "--format", "markdown",
                         str(tmp_path / "fold1")], capture_output=True, text=True, check=True).stdout
    assert md.startswith("| run (selection) | UAR | WAR | wF1 |")
