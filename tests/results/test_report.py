"""The results table: one row per experiment (seeds merged, every other config difference its own
row), selection on val and test reported, sample std / SEM, the metric, cl_bench versions, failures."""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from cl_bench import __version__
from cl_bench.cli.report import main as report_main
from cl_bench.core.experiment import experiment_identity
from cl_bench.records.run_folder import state_dir
from cl_bench.report.make import read_report_csv, write_report
from tests.helpers.cli import cl_bench
from tests.helpers.config import compose_config


def write_config(folder: Path, overrides: tuple[str, ...]) -> None:
    """The run folder's .hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them."""
    config = compose_config(*overrides, hydra=True)
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save({"hydra": config.hydra}, folder / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), folder / ".hydra" / "overrides.yaml")
    OmegaConf.set_struct(config, False)
    del config["hydra"]
    OmegaConf.save(config, folder / ".hydra" / "config.yaml")


def keep_own_config(folder: Path) -> Path:
    """The run's own copy of the config it started with (.cl_bench/), as cl_bench keeps it; returns its folder."""
    shutil.copytree(folder / ".hydra", state_dir(folder))
    return state_dir(folder)


def edit_config(path: Path, key: str, value) -> None:
    config = OmegaConf.load(path)
    OmegaConf.update(config, key, value, merge=False)
    OmegaConf.save(config, path)


def warnings_of(caplog) -> list[str]:
    """The report's warnings (its modules': cl_bench.report.*), each checked to be one line."""
    messages = [r.getMessage() for r in caplog.records
                if r.name.startswith("cl_bench.report.") and r.levelno == logging.WARNING]
    assert all("\n" not in message for message in messages), messages
    return messages


# A two-task run's metrics rows: task a's start and end (global steps 0, 10), then task b's step 0 (the model
# as a ended) and steps 10, 20 (global 20, 30).
ROWS = [{"step": step, "task": task, "task_step": task_step, "val/a": 0.5, "val/b": 0.5}
        for step, task, task_step in ((0, 0, 0), (10, 0, 10), (10, 1, 0), (20, 1, 10), (30, 1, 20))]


def fake_run(folder: Path, *overrides: str, score=0.5, test=0.4, final=(0.6, 0.6), final_val=(0.6, 0.6),
             status="ok", version: str | None = __version__, error="NonFiniteLoss: the loss became NaN",
             window: str | None = "training", score_step=20, rows=ROWS) -> None:
    """A finished run folder: the composed config of `overrides`, a summary with these results (its Score over
    `window`; None: a summary made before score.window existed) and metrics `rows`."""
    write_config(folder, overrides)
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    summary = {"status": status, "method": config.method.label, "lr": config.lr, "seed": config.seed,
               "datasets": list(config.dataset), "scenario": config.scenario, "wall_time_s": 10.0,
               "steps_per_s": 100.0, "versions": {"cl_bench": version} if version else {}}
    if status == "ok":
        summary.update(score=score, score_k={"A": score - 0.1, "B": score + 0.1}, score_test=test,
                       score_step=score_step, accuracy="scenario", tasks=["a", "b"],
                       accuracy_matrix=[[0.9, 0.0], list(final)], val_accuracy_matrix=[[0.9, 0.0], list(final_val)],
                       average_final_accuracy=sum(final) / len(final))
        if window is not None:
            summary.update(score_window=window, score_task_step=score_step - 10)
    elif error:
        summary["error"] = error
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


class Sweep:
    """A multirun folder the tests add runs to (jobs 0, 1, ...)."""

    def __init__(self, root: Path):
        self.root, self.jobs = root, 0

    def add(self, *overrides: str, **results) -> Path:
        folder = self.root / str(self.jobs)
        self.jobs += 1
        fake_run(folder, *overrides, **results)
        return folder

    def report(self, **flags) -> tuple[str, pd.DataFrame]:
        text = write_report([self.root], self.root, **flags)
        return text, read_report_csv(self.root / "report.csv")


@pytest.fixture
def sweep(tmp_path) -> Sweep:
    return Sweep(tmp_path / "multirun")


def row(table: pd.DataFrame, technique: str) -> pd.Series:
    (found,) = table[table.Technique == technique].itertuples(index=False)
    return pd.Series(found._asdict())


def test_runs_differing_in_model_steps_splits_or_optimiser_get_rows_of_their_own(sweep):
    for seed in (0, 1):
        sweep.add(f"seed={seed}", score=0.5 + 0.02 * seed)
    sweep.add("model=mlp400")
    sweep.add("steps=500")
    sweep.add("dataset.split_sklearn_digits.splits=[[0,1],[2,3]]")
    sweep.add("optimizer=sgd")
    text, table = sweep.report()
    assert sorted(table.Technique) == [
        "Baseline", "Baseline · model=mlp400", "Baseline · optimizer=sgd", "Baseline · splits=[[0,1],[2,3]]",
        "Baseline · steps=500",
    ]
    assert row(table, "Baseline").n == 2 and row(table, "Baseline").score == pytest.approx(0.51)
    assert row(table, "Baseline · model=mlp400").n == 1
    assert "| Baseline · model=mlp400 | 50.0% |" in text  # one seed: no ±


def test_two_rows_sharing_a_name_both_say_what_differs(sweep):
    sweep.add("model=mlp")
    sweep.add("model=mlp400")
    _, table = sweep.report()
    assert sorted(table.Technique) == ["Baseline · model=mlp", "Baseline · model=mlp400"]


def test_seeds_merge_even_where_the_class_order_seed_follows_the_seed(sweep):
    for seed in (0, 1, 2):
        sweep.add(f"seed={seed}", "dataset.split_sklearn_digits.class_order=random")
    sweep.add("dataset.split_sklearn_digits.order_seed=7", "dataset.split_sklearn_digits.class_order=random")
    _, table = sweep.report()
    assert sorted(table.Technique) == ["Baseline · order_seed=0", "Baseline · order_seed=7"]
    assert row(table, "Baseline · order_seed=0").n == 3


def test_the_lowlr_preset_and_the_baseline_at_low_lr_share_a_row(sweep):
    sweep.add("method=lowlr", "seed=0")
    sweep.add("method=baseline", "lr=1e-4", "seed=1")
    sweep.add("method=baseline", "seed=0")
    text, table = sweep.report()
    assert sorted(table.Technique) == ["Baseline", "Baseline (low lr)"]
    assert row(table, "Baseline (low lr)").n == 2
    assert "| Baseline (low lr) |" in text and "| Baseline |" in text


def test_selected_weights_are_chosen_by_val_and_their_test_reported(sweep):
    for seed in (0, 1):
        # λ=10 is better on val (0.70 mean) than λ=100 (0.65) but worse on test: val decides
        sweep.add("method=ewc", "method.lambda=10", f"seed={seed}", score=0.68 + 0.04 * seed, test=0.40)
        sweep.add("method=ewc", "method.lambda=100", f"seed={seed}", score=0.65, test=0.90)
    sweep.add("method=ewc", "method.fisher_samples=50", score=0.9, test=0.9)  # not selectable: its own row
    text, table = sweep.report()
    ewc = row(table, "EWC · fisher_samples=200")
    assert json.loads(ewc.params) == {"method.gamma": 1.0, "method.lambda": 10}
    assert ewc.score == pytest.approx(0.70) and ewc.score_test == pytest.approx(0.40) and ewc.n == 2
    cells = "| 70.0% ± 2.8 | 60.0% ± 2.8 | 80.0% ± 2.8 | 40.0% ± 0.0 | lambda=10 | 2 |"
    assert f"| EWC · fisher_samples=200 {cells}" in text
    assert row(table, "EWC · fisher_samples=50").score_test == pytest.approx(0.9)


def test_select_adds_a_key_to_choose_by_val(sweep):
    sweep.add("lr=1e-3", score=0.5, test=0.5)
    sweep.add("lr=1e-4", score=0.6, test=0.3)
    _, table = sweep.report()
    assert sorted(table.Technique) == ["Baseline", "Baseline (low lr)"]
    text, table = sweep.report(select=("lr",))
    (chosen,) = table.itertuples()
    assert chosen.Technique == "Baseline" and chosen.lr == pytest.approx(1e-4)
    assert chosen.score_test == pytest.approx(0.3)
    assert "| lr=0.0001 | 1 |" in text


def test_the_sweeps_report_select_adds_a_key_too(sweep):
    sweep.add("lr=1e-3", "report.select=[lr]", score=0.5)
    sweep.add("lr=1e-4", "report.select=[lr]", score=0.6)
    _, table = sweep.report()
    assert len(table) == 1 and table.lr.iloc[0] == pytest.approx(1e-4)


def test_the_spread_is_the_sample_std_or_the_sem(sweep):
    scores = [0.50, 0.56, 0.61]
    for seed, score in enumerate(scores):
        sweep.add(f"seed={seed}", score=score)
    text, table = sweep.report()
    std = statistics.stdev(scores)
    assert table.score_std.iloc[0] == pytest.approx(std)
    assert table.score_sem.iloc[0] == pytest.approx(std / math.sqrt(3))
    assert f"| Baseline | 55.7% ± {100 * std:.1f} |" in text and "± sample std" in text
    text, _ = sweep.report(spread="sem")
    assert f"| Baseline | 55.7% ± {100 * std / math.sqrt(3):.1f} |" in text and "± SEM" in text


def test_final_accuracy_selects_and_reports_the_accuracies_after_the_last_task(sweep):
    # λ=10 has the better Score, λ=100 the better final val accuracy
    sweep.add("method=ewc", "method.lambda=10", score=0.8, final=(0.2, 0.9), final_val=(0.3, 0.9))
    sweep.add("method=ewc", "method.lambda=100", score=0.6, final=(0.5, 0.7), final_val=(0.6, 0.8))
    text, table = sweep.report()
    assert json.loads(table.params.iloc[0])["method.lambda"] == 10
    text, table = sweep.report(metric="final_accuracy")
    assert json.loads(table.params.iloc[0])["method.lambda"] == 100
    assert table.final_accuracy.iloc[0] == pytest.approx(0.6) and table.final_val_accuracy.iloc[0] == pytest.approx(0.7)
    assert text.startswith("| Technique | Val final acc | Test final acc_A | Test final acc_B | Test final acc |")
    assert "| EWC | 70.0% | 50.0% | 70.0% | 60.0% | lambda=100 | 1 |" in text


def with_task_aware(folder: Path, final: tuple[float, float], final_val: tuple[float, float]) -> None:
    """Give a class-IL run's summary the task-aware matrices whose last rows are `final` (test) and `final_val`."""
    summary = json.loads((folder / "summary.json").read_text())
    summary["accuracy_matrices"] = {
        "scenario": {"test": summary["accuracy_matrix"], "val": summary["val_accuracy_matrix"], "score": 0.5},
        "task_aware": {"test": [[0.9, 0.5], list(final)], "val": [[0.9, 0.5], list(final_val)], "score": 0.7},
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_the_task_aware_final_accuracy_is_a_table_of_its_own(sweep, caplog):
    # class-IL: λ=10 has the better final val accuracy, λ=100 the better task-aware one
    for lam, final_val, aware, aware_val in ((10, (0.5, 0.9), (0.8, 0.9), (0.8, 0.8)),
                                             (100, (0.4, 0.8), (0.9, 0.95), (0.9, 0.9))):
        folder = sweep.add("method=ewc", f"method.lambda={lam}", "scenario=class", final_val=final_val)
        with_task_aware(folder, aware, aware_val)
    sweep.add("scenario=task", final=(0.7, 0.8), final_val=(0.75, 0.85))  # its own accuracy is task-aware
    sweep.add("scenario=domain", "method=l2")  # has none: left out, said why
    _, table = sweep.report(metric="final_accuracy")
    assert json.loads(row(table, "EWC").params)["method.lambda"] == 10
    text, table = sweep.report(metric="final_task_aware_accuracy")
    ewc = row(table, "EWC")
    assert json.loads(ewc.params)["method.lambda"] == 100
    assert ewc.final_task_aware_accuracy == pytest.approx(0.925)
    assert ewc.final_task_aware_val_accuracy == pytest.approx(0.9)
    assert ewc.final_task_aware_accuracy_A == pytest.approx(0.9)
    assert row(table, "Baseline").final_task_aware_accuracy == pytest.approx(0.75)
    assert text.startswith("| Sequence | Technique | Val final task-aware acc | Test final task-aware acc_A |")
    assert "L2" not in set(table.Technique)
    assert any("report.metric=final_task_aware_accuracy: a domain-IL run has no task-aware accuracy" in message
               and "use report.metric=final_accuracy" in message for message in warnings_of(caplog))


def test_runs_disagreeing_on_the_metric_need_the_flag(sweep, capsys):
    sweep.add("seed=0")
    sweep.add("seed=1", "report.metric=final_accuracy")
    with pytest.raises(SystemExit) as stop:
        report_main([str(sweep.root)])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "disagree on report.metric" in message and "--metric" in message and message.count("\n") == 1
    report_main([str(sweep.root), "--metric", "score"])
    assert "| Baseline | 50.0% ± 0.0 |" in capsys.readouterr().out


def test_rows_of_an_earlier_cl_bench_are_marked_and_kept_apart(sweep):
    sweep.add("seed=0", score=0.5)
    sweep.add("seed=1", score=0.5)
    sweep.add("seed=0", score=0.9, version="0.1.0")
    sweep.add("seed=1", score=0.9, version=None)
    _, table = sweep.report()
    assert sorted(table.Technique) == ["Baseline", "Baseline [cl_bench 0.1.0]", "Baseline [cl_bench unknown]"]
    assert row(table, "Baseline").score == pytest.approx(0.5) and row(table, "Baseline").n == 2


def test_failed_runs_are_marked_not_missing(sweep):
    sweep.add("method=kd", status="failed")
    text, table = sweep.report()
    assert "| KD | **failed** |" in text
    assert "NonFiniteLoss" in table.error.iloc[0]


def test_running_runs_show_what_has_finished(sweep):
    sweep.add("method=ewc", "seed=0")
    sweep.add("method=ewc", "seed=1", status="failed")
    sweep.add("method=kd", status="failed")
    running = sweep.root / "99"
    write_config(running, ("method=kd", "seed=1"))
    (running / "metrics.jsonl").write_text(json.dumps({"step": 0, "task": 0, "val/a": 0.1, "val/b": 0.1}))
    text, table = sweep.report()
    assert "| 1 (1 failed) |" in text  # EWC's row notes its failed job
    assert "| KD | **failed** |" in text and "(1 running)" not in text  # KD's only finished job failed
    assert row(table, "KD").running == 1


def test_cli_writes_table_csv_and_figure(sweep, tmp_path, capsys):
    sweep.add("seed=0")
    out = tmp_path / "report"
    report_main([str(sweep.root), "--out", str(out)])
    assert "| Technique |" in capsys.readouterr().out
    for name in ("report.md", "report.csv", "jobs.csv", "comparison.png"):
        assert (out / name).exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run or multirun folder"):
        write_report([tmp_path / "nope"], tmp_path)


def test_the_identity_leaves_out_where_and_how_a_run_is_done():
    a = compose_config(
        "data_dir=/a", "threads=1", "device=cpu", "first_task.cache=false", "seed=3", "eval_batch_size=7", hydra=True
    )
    b = compose_config("data_dir=/b", "output_root=/elsewhere", "logger=wandb", "checkpoint.keep=5", hydra=True)
    assert experiment_identity(a) == experiment_identity(b)  # ${now:...} of hydra.run.dir needs no runtime
    assert "seed" not in experiment_identity(a) and "report" not in experiment_identity(a)
    assert experiment_identity(a) != experiment_identity(compose_config("batch_size=32", hydra=True))
    smaller = compose_config("batch_size=32", hydra=True)
    assert experiment_identity(a, ignore={"batch_size"}) == experiment_identity(smaller, ignore={"batch_size"})
    same = experiment_identity(compose_config("model.dropout=0", "+method.lr=0.001", hydra=True))  # 0 is dropout's 0.0
    assert json.dumps(experiment_identity(a), sort_keys=True) == json.dumps(same, sort_keys=True)
    mnist = experiment_identity(compose_config("dataset=[split_mnist]", "data_dir=/x", hydra=True))
    assert "root" not in mnist["dataset"]["split_mnist"]["source"]
    assert experiment_identity({"name": "${hydra:job.name}", "seed": 1}) == {"name": "${hydra:job.name}"}


CALLBACK_WITHOUT_WANDB = """
import sys
from omegaconf import OmegaConf
from cl_bench.cli.sweep_end import finish_sweep
config = {"hydra": {"sweep": {"dir": sys.argv[1]}, "sweeper": {}},
          "logger": {"_target_": "cl_bench.loggers.base.RunLogger"},
          "report": {"metric": "score", "spread": "sem", "select": []}}
print("exit:", finish_sweep(OmegaConf.create(config)))
print("wandb imported:", "wandb" in sys.modules)
"""


def test_the_callback_writes_the_report_without_importing_wandb_unless_asked(sweep):
    sweep.add("method=ewc")
    command = [sys.executable, "-c", CALLBACK_WITHOUT_WANDB, str(sweep.root)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| EWC |" in done.stdout and "± SEM" in done.stdout and "wandb imported: False" in done.stdout
    assert (sweep.root / "report.md").exists() and not (sweep.root / "wandb").exists()


def test_a_real_sweep_over_models_gives_a_row_per_model(tmp_path):
    sweep = tmp_path / "sweep"
    done = cl_bench(tmp_path, "model=mlp,mlp400", "first_task.steps=20", "steps=20", f"hydra.sweep.dir={sweep}",
                    multirun=True)
    assert done.returncode == 0, done.stderr
    table = read_report_csv(sweep / "report.csv")
    assert sorted(table.Technique) == ["Baseline · model=mlp", "Baseline · model=mlp400"]
    assert "| Baseline · model=mlp400 |" in done.stdout
    write_report([sweep], tmp_path / "final", metric="final_accuracy")
    finals = read_report_csv(tmp_path / "final" / "report.csv").set_index("Technique").final_accuracy
    for job in sweep.glob("*/summary.json"):
        (model,) = [o for o in OmegaConf.load(job.parent / ".hydra" / "overrides.yaml") if o.startswith("model=")]
        expected = json.loads(job.read_text())["average_final_accuracy"]
        assert finals[f"Baseline · {model}"] == pytest.approx(expected)


def test_a_run_repeated_in_two_sweeps_counts_as_one_seed(tmp_path):
    first, second = Sweep(tmp_path / "first"), Sweep(tmp_path / "second")
    first.add("seed=0", final_val=(0.6, 0.6))
    first.add("seed=1", final_val=(0.7, 0.7))
    second.add("seed=1", final_val=(0.7, 0.7))  # the same experiment and seed, run again
    write_report([first.root, second.root], tmp_path / "both", metric="final_accuracy")
    table = read_report_csv(tmp_path / "both" / "report.csv")
    assert table.n.tolist() == [2]
    assert table.final_val_accuracy.tolist() == [pytest.approx(0.65)]


def test_a_runs_own_config_is_read_not_the_one_hydra_rewrote(sweep):
    sweep.add("method=ewc", "seed=0")
    for job in (sweep.add("method=ewc", "seed=1"), sweep.add("method=ewc", "seed=2", status="failed")):
        keep_own_config(job)
        shutil.rmtree(job / ".hydra")
        write_config(job, ("method=kd",))  # a later invocation in the folder, refused: .hydra/ is its config
    text, table = sweep.report()
    assert table.Technique.tolist() == ["EWC"] and table.n.tolist() == [2]
    assert "| 2 (1 failed) |" in text and "| EWC | 2 | failed | method=ewc seed=2 |" in text


def test_a_saved_config_naming_a_function_is_refused_and_nothing_called(sweep, tmp_path, caplog):
    sweep.add("seed=0")
    bad = sweep.add("seed=1")
    victim = tmp_path / "victim"
    edit_config(keep_own_config(bad) / "config.yaml", "logger", {"_target_": "builtins.open", "file": str(victim),
                                                                 "mode": "w"})
    _, table = sweep.report()
    assert not victim.exists()
    assert table.n.tolist() == [1]  # the refused run is not a seed of the row
    (warning,) = warnings_of(caplog)
    assert str(bad) in warning and "logger._target_=builtins.open" in warning


def test_a_method_target_of_a_saved_config_is_not_imported(sweep, tmp_path, monkeypatch, caplog):
    module = tmp_path / "cl_bench_test_side_effect.py"
    module.write_text("from pathlib import Path\nPath(__file__).with_name('imported').write_text('yes')\n"
                      "class Method:\n    selectable = ('lambda',)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sweep.add("seed=0")
    bad = sweep.add("method=ewc")
    edit_config(bad / ".hydra" / "config.yaml", "method._target_", "cl_bench_test_side_effect.Method")
    _, table = sweep.report()
    assert not (tmp_path / "imported").exists() and "cl_bench_test_side_effect" not in sys.modules
    assert table.Technique.tolist() == ["Baseline"]
    (warning,) = warnings_of(caplog)
    assert str(bad) in warning and "cl_bench_test_side_effect.Method" in warning


def test_a_target_of_the_users_own_config_folder_is_allowed_when_given(sweep, tmp_path, capsys, caplog):
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "mine.yaml").write_text("_target_: my_lab.methods.Mine\nlabel: Mine\n")
    job = sweep.add("seed=0")
    edit_config(job / ".hydra" / "config.yaml", "method", {"_target_": "my_lab.methods.Mine", "label": "Mine"})
    summary = json.loads((job / "summary.json").read_text())
    (job / "summary.json").write_text(json.dumps({**summary, "method": "Mine"}))
    with pytest.raises(SystemExit):
        report_main([str(sweep.root)])
    assert "no readable cl_bench runs" in capsys.readouterr().err and "--config-dir" in warnings_of(caplog)[0]
    report_main([str(sweep.root), "--config-dir", str(tmp_path / "conf")])
    assert "| Mine | 50.0% |" in capsys.readouterr().out
    assert "my_lab.methods.Mine cannot be imported (ModuleNotFoundError" in warnings_of(caplog)[-1]


def test_a_truncated_summary_counts_its_job_as_unreadable(sweep, caplog):
    sweep.add("seed=0")
    broken = sweep.add("seed=1") / "summary.json"
    broken.write_text(broken.read_text()[:40])
    text, table = sweep.report()
    assert "| 1 (1 unreadable) |" in text and row(table, "Baseline").unreadable == 1
    assert "| Baseline | 1 | unreadable | seed=1 | summary.json: " in text
    (warning,) = warnings_of(caplog)
    assert str(broken) in warning


@pytest.mark.parametrize("damage", ["truncated", "invalid", "empty"])
def test_a_truncated_or_invalid_config_leaves_its_run_out(sweep, caplog, damage):
    sweep.add("seed=0")
    config = sweep.add("seed=1") / ".hydra" / "config.yaml"
    text = config.read_text()
    damaged = {"truncated": text[: len(text) // 2], "invalid": "seed: [1, 2\n", "empty": ""}[damage]
    config.write_text(damaged)
    _, table = sweep.report()
    assert table.Technique.tolist() == ["Baseline"] and table.n.tolist() == [1]
    (warning,) = warnings_of(caplog)
    assert str(config) in warning


def test_broken_choices_or_overrides_of_an_earlier_run_are_named_and_the_run_kept(sweep, caplog):
    job = sweep.add("method=kd", status="failed")
    (job / ".hydra" / "hydra.yaml").write_text("hydra: [\n")
    (job / ".hydra" / "overrides.yaml").write_text("- method=kd\n  -: [\n")
    text, _ = sweep.report()
    assert "| KD | 0 | failed | unknown | NonFiniteLoss" in text
    hydra_warning, overrides_warning = warnings_of(caplog)
    assert "hydra.yaml" in hydra_warning and "overrides.yaml" in overrides_warning


def only_a_file(root: Path) -> None:
    root.mkdir()
    (root / "notes.txt").write_text("no runs here")


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: None, "no such run or multirun folder"),
    (lambda root: root.mkdir(), "no cl_bench runs under"),
    (only_a_file, "no cl_bench runs under"),
])
def test_a_missing_folder_or_one_without_runs_is_a_one_line_error(tmp_path, capsys, make, message):
    root = tmp_path / "sweep"
    make(root)
    with pytest.raises(SystemExit) as stop:
        report_main([str(root)])
    assert stop.value.code != 0
    error = capsys.readouterr().err
    assert error.startswith(f"cl-bench-report: error: {message}") and error.count("\n") == 1
    assert str(root) in error and "Traceback" not in error
    if message != "no such run or multirun folder":
        assert "summary.json" in error  # what was looked for


def test_a_folder_where_no_run_started_is_not_counted_as_running(sweep, caplog):
    sweep.add("seed=0")
    write_config(sweep.root / "1", ("seed=1",))  # only Hydra's .hydra/: e.g. the folder of a resume= invocation
    text, table = sweep.report()
    assert row(table, "Baseline").running == 0 and "| 1 |" in text
    (warning,) = warnings_of(caplog)
    assert str(sweep.root / "1") in warning and "no run started" in warning


def test_every_status_is_counted_on_its_own(sweep):
    sweep.add("method=ewc", "seed=0")
    sweep.add("method=ewc", "seed=1", status="failed")
    sweep.add("method=ewc", "seed=2", status="interrupted", error="stopped; continue with: cl-bench resume=...")
    sweep.add("method=ewc", "seed=3", status="not_run", error=None)
    sweep.add("method=ewc", "seed=4", status="not_run", error=None)
    sweep.add("method=kd", status="interrupted")
    sweep.add("method=replay", status="not_run", error=None)
    write_config(sweep.root / "99", ("method=l2",))
    (sweep.root / "99" / "metrics.jsonl").write_text(json.dumps({"step": 0, "task": 0, "val/a": 0.1}) + "\n")
    text, table = sweep.report()
    assert "| 1 (1 failed, 1 interrupted, 2 not run) |" in text
    ewc = row(table, "EWC")
    assert (ewc.n, ewc.failed, ewc.interrupted, ewc.not_run, ewc.running) == (1, 1, 1, 2, 0)
    assert "| KD | **interrupted** |" in text and "| 0 (1 interrupted) |" in text
    assert "| Replay | **not run** |" in text and "| 0 (1 not run) |" in text
    assert "| L2 | running |" in text and row(table, "L2").status == "running"


def test_jobs_without_a_result_are_named_with_their_overrides(sweep, tmp_path):
    sweep.add("method=kd", "lr=0.01", "seed=0")
    sweep.add("method=kd", "lr=0.01", "seed=1", status="failed")
    sweep.add("method=kd", "lr=0.01", "seed=2", status="not_run", error=None)
    text, _ = sweep.report()
    section = text.split("Jobs without a result", 1)[1]
    assert "| KD (lr=0.01) | 1 | failed | method=kd lr=0.01 seed=1 | NonFiniteLoss: the loss became NaN |" in section
    assert "| KD (lr=0.01) | 2 | not run | method=kd lr=0.01 seed=2 |  |" in section
    assert "| 0 |" not in section  # the ok job is in the table only
    jobs = pd.read_csv(sweep.root / "jobs.csv", dtype={"job": str})
    assert jobs.job.tolist() == ["0", "1", "2"] and jobs.status.tolist() == ["ok", "failed", "not_run"]
    assert jobs.overrides[1] == "method=kd lr=0.01 seed=1" and "NonFiniteLoss" in jobs.error[1]
    write_report([sweep.root], tmp_path / "elsewhere")
    assert read_report_csv(tmp_path / "elsewhere" / "jobs.csv").job[1] == str(sweep.root / "1")


def rows_with_b(*points: tuple[float, float]) -> list[dict]:
    """Metrics rows: task a trained to 0.9 (b untrained, 0.1), then task b's step 0 (the same model) and one row
    per (a, b) of `points` at task b's steps 10, 20, ..."""
    rows = [{"step": 0, "task": 0, "task_step": 0, "val/a": 0.1, "val/b": 0.1},
            {"step": 10, "task": 0, "task_step": 10, "val/a": 0.9, "val/b": 0.1},
            {"step": 10, "task": 1, "task_step": 0, "val/a": 0.9, "val/b": 0.1}]
    return rows + [{"step": 10 + 10 * i, "task": 1, "task_step": 10 * i, "val/a": a, "val/b": b}
                   for i, (a, b) in enumerate(points, start=1)]


def made_before_score_window(folder: Path) -> None:
    """The run's config as cl_bench wrote it before score.window: no `score`."""
    path = folder / ".hydra" / "config.yaml"
    config = OmegaConf.load(path)
    del config["score"]
    OmegaConf.save(config, path)


def test_a_summary_made_before_score_window_is_scored_from_its_metrics_over_the_last_tasks_training(sweep):
    # KD seed 0's Score was B's step 0 (0.9 + 0.1) / 2 = 0.5; over B's training its peak is (0.35 + 0.6) / 2 at
    # step 30, whose model the run did not keep; EWC's was already at a training point (step 20), which stands
    made_before_score_window(sweep.add("method=kd", "seed=0", window=None, score=0.5, score_step=10, test=0.45,
                                       rows=rows_with_b((0.5, 0.4), (0.35, 0.6))))
    sweep.add("method=kd", "seed=1", score=0.6, test=0.55)
    made_before_score_window(sweep.add("method=ewc", window=None, score=0.7, score_step=20, test=0.65,
                                       rows=rows_with_b((0.8, 0.6), (0.5, 0.5))))
    text, table = sweep.report()
    kd, ewc = row(table, "KD"), row(table, "EWC")
    assert kd.n == 2 and kd.score == pytest.approx(((0.35 + 0.6) / 2 + 0.6) / 2)  # one experiment, one rule
    assert kd.score_A == pytest.approx((0.35 + 0.5) / 2) and kd.score_B == pytest.approx((0.6 + 0.7) / 2)
    assert math.isnan(kd.score_test)  # seed 1's test Score alone would stand for both seeds
    assert (ewc.score, ewc.score_A, ewc.score_B, ewc.score_test) == pytest.approx((0.7, 0.8, 0.6, 0.65))
    assert "| KD | 53.8% ± 8.8 | 42.5% ± 10.6 | 65.0% ± 7.1 |  |" in text
    assert "\nTest Score unknown in KD (1 of 2 seeds): made before score.window existed" in text
    assert "score.window=with_start" not in text and "Not informative" not in text


def test_a_summary_made_before_score_window_without_its_metrics_keeps_its_score_and_says_its_window(sweep, caplog):
    old = sweep.add("method=kd", "seed=0", window=None, score=0.5, score_step=10, test=0.45)
    made_before_score_window(old)
    (old / "metrics.jsonl").unlink()
    sweep.add("method=kd", "seed=1", score=0.6, test=0.55)
    text, table = sweep.report()
    kd_old = row(table, "KD · window=with_start")
    assert (kd_old.score, kd_old.score_test, kd_old.n) == pytest.approx((0.5, 0.45, 1))  # a rule of its own
    assert row(table, "KD · window=training").score == pytest.approx(0.6)
    assert "Score over the last task's points from its step 0 (score.window=with_start) in KD · window=with_start; " \
           "from its first update on in the others.\n" in text
    (warning,) = warnings_of(caplog)
    assert str(old) in warning and "cannot be recomputed over score.window=training" in warning


def test_columns_final_adds_each_tasks_final_validation_accuracy(sweep, capsys):
    for seed, final_val in ((0, (0.2, 0.9)), (1, (0.4, 0.8))):
        sweep.add("method=ewc", f"seed={seed}", final_val=final_val)
    text, _ = sweep.report()
    assert "Final" not in text  # the default table
    report_main([str(sweep.root), "--columns", "final"])
    text = capsys.readouterr().out
    header = "| Technique | Val Score | Val Score_A | Val Score_B | Test Score | Final A | Final B | Best hyper-parameters"
    assert text.startswith(header)
    assert "| 40.0% ± 0.0 | 30.0% ± 14.1 | 85.0% ± 7.1 |  | 2 |" in text
    assert "\nFinal A, Final B: each task's validation accuracy after the last task.\n" in text
    table = read_report_csv(sweep.root / "report.csv")
    assert table.val_final_A.tolist() == pytest.approx([0.3]) and table.val_final_B.tolist() == pytest.approx([0.85])
    sweep.add("method=ewc", "seed=2", "report.columns=[finale]")
    with pytest.raises(ValueError, match=r"report.columns=\['finale'\]: expected some of final"):
        sweep.report()
