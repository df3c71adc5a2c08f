"""The Score table on a generated multirun: selection on val, test reported, seeds, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cl_bench.report import main as report_main
from cl_bench.report import write_report


def fake_run(folder: Path, method: str, lr: float, params: dict, seed: int, score: float, test: float, status="ok"):
    folder.mkdir(parents=True)
    summary = {"status": status, "method": method, "lr": lr, "method_params": params, "seed": seed,
               "datasets": ["split_sklearn_digits"], "scenario": "domain", "wall_time_s": 10.0, "steps_per_s": 100.0}
    if status == "ok":
        summary.update(score=score, score_k={"A": score - 0.1, "B": score + 0.1}, score_test=test,
                       score_test_k={"A": test, "B": test})
    else:
        summary["error"] = "NonFiniteLoss: the loss became NaN"
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": s, "task": int(s >= 10), "val/a": 0.5, "val/b": 0.5} for s in (0, 10, 20)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


@pytest.fixture
def multirun(tmp_path) -> Path:
    root = tmp_path / "multirun"
    job = iter(range(100))
    for seed in (0, 1):
        fake_run(root / str(next(job)), "Baseline", 0.001, {}, seed, 0.50 + 0.02 * seed, 0.45)
        fake_run(root / str(next(job)), "Baseline", 0.0001, {}, seed, 0.60, 0.55)
        # lambda=10 is better on val (0.7 mean) than lambda=100 (0.65) but worse on test: val decides
        fake_run(root / str(next(job)), "EWC", 0.001, {"lambda": 10}, seed, 0.68 + 0.04 * seed, 0.40)
        fake_run(root / str(next(job)), "EWC", 0.001, {"lambda": 100}, seed, 0.65, 0.90)
    fake_run(root / str(next(job)), "KD", 0.001, {"kappa": 1}, 0, 0, 0, status="failed")
    return root


def test_best_hyper_parameters_by_mean_val_score_and_their_test_score(multirun):
    text = write_report([multirun], multirun)
    table = pd.read_csv(multirun / "report.csv")
    ewc = table[table.method == "EWC"].iloc[0]
    assert json.loads(ewc.params) == {"lambda": 10}
    assert ewc.score == pytest.approx(0.70) and ewc.score_std == pytest.approx(0.02)
    assert ewc.score_test == pytest.approx(0.40)
    assert ewc.seeds == 2
    assert "| EWC | 70.0% ± 2.0 | 60.0% ± 2.0 | 80.0% ± 2.0 | 40.0% ± 0.0 | lambda=10 | 2 |" in text


def test_rows_keyed_by_method_and_lr_with_the_seeds_names(multirun):
    text = write_report([multirun], multirun)
    assert "| Baseline | 51.0% ± 1.0 |" in text
    assert "| Baseline (low lr) | 60.0% ± 0.0 |" in text
    assert text.splitlines()[0].startswith("| Technique | Score | Score_A | Score_B | Test Score")


def test_failed_runs_are_marked_not_missing(multirun):
    text = write_report([multirun], multirun)
    assert "| KD | **failed** |" in text
    table = pd.read_csv(multirun / "report.csv")
    assert "NonFiniteLoss" in table[table.method == "KD"].iloc[0].error


def test_running_runs_show_what_has_finished(multirun):
    running = multirun / "99"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "config.yaml").write_text(
        "method: {label: KD, kappa: 2}\nlr: ${oc.select:method.lr,0.001}\nseed: 0\n"
        "scenario: domain\ndataset: {split_sklearn_digits: {}}\n"
    )
    (running / "metrics.jsonl").write_text(json.dumps({"step": 0, "task": 0, "val/a": 0.1, "val/b": 0.1}))
    fake_run(multirun / "98", "EWC", 0.001, {"lambda": 10}, 2, 0.1, 0.1, status="failed")
    text = write_report([multirun], multirun)
    assert "| 2 (1 failed) |" in text  # EWC's best row notes its failed job
    assert "| KD | **failed** |" in text and "(1 running)" not in text  # KD's only finished job failed
    table = pd.read_csv(multirun / "report.csv")
    assert table[table.method == "KD"].iloc[0].running == 1


def test_cli_writes_table_csv_and_figure(multirun, tmp_path, capsys):
    out = tmp_path / "report"
    report_main([str(multirun), "--out", str(out)])
    assert "| Technique |" in capsys.readouterr().out
    for name in ("report.md", "report.csv", "comparison.png"):
        assert (out / name).exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run or multirun folder"):
        write_report([tmp_path / "nope"], tmp_path)


CALLBACK_WITHOUT_WANDB = """
import sys
from omegaconf import OmegaConf
from cl_bench.report import ReportCallback
config = {"hydra": {"sweep": {"dir": sys.argv[1]}}, "logger": {"_target_": "cl_bench.loggers.base.RunLogger"}}
ReportCallback().on_multirun_end(OmegaConf.create(config))
print("wandb imported:", "wandb" in sys.modules)
"""


def test_the_callback_writes_the_report_without_importing_wandb_unless_asked(multirun):
    command = [sys.executable, "-c", CALLBACK_WITHOUT_WANDB, str(multirun)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| EWC |" in done.stdout and "wandb imported: False" in done.stdout
    assert (multirun / "report.md").exists() and not (multirun / "wandb").exists()
