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


def test_summarize_au_folds_with_pooled_row(tmp_path):
    """AU runs: per-AU F1 per fold, the mean over folds (U6, docs/AU_METHODS.md), the pooled F1 from the predictions."""
    header = "path,frame,subject,AU1_prob,AU1_pred,AU1_label,AU2_prob,AU2_pred,AU2_label\n"
    folds = {  # AU1: fold 1 TP + FN, fold 2 TP + FP; AU2: fold 1 FP only, fold 2 TP; an unannotated row (-1)
        1: ["v,0,s,0.9,1,1,0.8,1,0", "v,1,s,0.2,0,1,0.1,0,0", "v,2,s,0.9,1,-1,0.1,0,-1"],
        2: ["w,0,t,0.7,1,1,0.6,1,1", "w,1,t,0.6,1,0,0.4,0,0"],
    }
    runs = []
    for fold, lines in folds.items():
        run = tmp_path / f"fold{fold}"
        run.mkdir()
        (run / "test_predictions.csv").write_text(header + "\n".join(lines) + "\n")
        f1 = {1: {"AU1": 2 / 3, "AU2": 0.0}, 2: {"AU1": 2 / 3, "AU2": 1.0}}[fold]
        m = dict(mean_f1=sum(f1.values()) / 2, per_au=f1, threshold=0.5, selection={"select": "last", "epoch": 3})
        (run / "test_metrics.json").write_text(json.dumps(m))
        runs.append(str(run))
    out = subprocess.run([sys.executable, str(ROOT / "scripts/summarize_folds.py"), "--pooled", *runs],
                         capture_output=True, text=True, check=True).stdout
    assert "fold1 (last)" in out and "mean F1" in out and "AU1" in out
    assert "66.67 ± 0.00" in out and "50.00 ± 70.71" in out      # AU1, AU2 over folds (sample std)
    pooled = next(line for line in out.splitlines() if line.startswith("pooled over folds")).split()
    # pooled AU1: 2 TP, 1 FP, 1 FN -> 2/3; AU2: 1 TP, 1 FP -> 2/3, not the 50 of the mean over folds
    assert pooled[3:] == ["66.67", "66.67", "66.67"]
