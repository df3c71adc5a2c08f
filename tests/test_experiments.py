"""Every experiment config (`conf/experiment/*.yaml`, a paper table's sweep) composes with each value of its
sweep grid, and its whole sweep runs for real on the real MNIST (`../shared/data` beside the repository,
or $CL_BENCH_MNIST_DIR): every row and grid point as shipped, only budgets, sizes and seeds shrunk (after
lightning-hydra-template's tests/test_sweeps.py). Without the files the smoke runs are skipped, except on
CI (CI=true), where that is a failure."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from cl_bench.core.layout import CONFIG_DIR
from cl_bench.data.sources import missing_mnist_files
from cl_bench.report.make import make_report, read_report_csv
from tests.helpers.cli import cl_bench
from tests.helpers.config import compose_config

EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
RUN_ELSEWHERE = {"two_cities"}  # image folders: tests/test_two_cities.py runs it

REAL_MNIST = Path(os.environ.get("CL_BENCH_MNIST_DIR", CONFIG_DIR.parent.parent / "shared" / "data"))

# Smoke budgets for every job: a hundred steps per task, evaluated at each task's start and end, one seed.
SMOKE = ["first_task.steps=100", "first_task.epochs=null", "steps=100", "epochs=null", "eval_every=100"]
SMOKE += ["seed=0", "threads=1"]
SMALLER = {  # the CNN evaluated on every task's 6,000 validation images is CPU-minutes: narrower layers,
    # and more steps at its lr of 1e-4
    "sorberg_permuted_mnist": ["model.channels=8", "model.hidden=64", "dataset.permuted_mnist.n_tasks=3",
                               "first_task.steps=500", "steps=500", "eval_every=500"],
    # 20 tasks, each evaluated on every task's images at each evaluation: two tasks; GEM's lr of 0.01 on rotated
    # digits needs more steps of the first task to learn it
    "buzzega_perm_mnist": ["dataset.permuted_mnist.n_tasks=2"],
    "buzzega_rot_mnist": ["dataset.rotated_mnist.n_tasks=2", "first_task.steps=300"],
    # 23 jobs, GEM's among them with a memory gradient per earlier task: two tasks
    "buzzega_split_mnist": ["dataset.split_mnist.splits=[[0,1],[2,3]]"],
    # 27 jobs, a third of them training a VAE beside the classifier: three tasks (a random order of two could be the
    # given one) of 20 steps
    "van_de_ven_split_mnist": ["dataset.split_mnist.splits=[[0,1],[2,3],[4,5]]", "first_task.steps=20", "steps=20",
                               "eval_every=20"],
    # GDumb's, BiC's and LUCIR's stages count epochs over their memories, not the budget's steps: batches of 100 make
    # them short, a small validation split makes GDumb's evaluation after each of its 256 fitting epochs cheap, and
    # two tasks make two fits (every row and buffer as shipped)
    "mammoth_baselines_split_mnist": ["batch_size=100", "dataset.split_mnist.val_fraction=0.01",
                                      "dataset.split_mnist.splits=[[0,1],[2,3]]"],
}
# A whole sweep's jobs in one process, one after another: up to 23 of them (Buzzega et al.'s Seq-MNIST).
SWEEP_TIMEOUT = 900
# One run with the random task order on: the same seed gives every job the same (shuffled) tasks.
RANDOM_ORDERS = {"van_de_ven_split_mnist": ["task_order=random"]}


def sweep_grid(experiment: str) -> dict[str, list[str]]:
    """The experiment's `hydra.sweeper.params`, each value list split."""
    params = compose_config(f"experiment={experiment}", hydra=True).hydra.sweeper.params
    return {key: value.split(",") for key, value in params.items()}


@pytest.fixture(scope="module")
def mnist_data() -> Path:
    """The real MNIST's data_dir (MNIST/raw/ with the four IDX files)."""
    raw = REAL_MNIST / "MNIST" / "raw"
    if missing_mnist_files(raw):
        message = f"the real MNIST is not in {raw} (set CL_BENCH_MNIST_DIR to the folder holding MNIST/raw/)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REAL_MNIST


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_value_of_the_sweep_grid_composes(experiment):
    grid = sweep_grid(experiment)
    assert grid, f"conf/experiment/{experiment}.yaml has no hydra.sweeper.params"
    for key, values in grid.items():
        for value in values:
            cfg = compose_config(f"experiment={experiment}", f"{key}={value}", hydra=True)
            chosen = cfg.hydra.runtime.choices.get(key, str(cfg.get(key)))  # a config group's choice, or a value
            assert chosen == value, (key, value)


@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS) - RUN_ELSEWHERE))
def test_the_whole_sweep_runs_on_real_mnist_and_reports_every_row(experiment, mnist_data, tmp_path):
    overrides = [*SMOKE, *SMALLER.get(experiment, []), *RANDOM_ORDERS.get(experiment, [])]
    done = cl_bench(tmp_path, f"experiment={experiment}", f"data_dir={mnist_data}", *overrides, multirun=True,
                    timeout=SWEEP_TIMEOUT)
    assert done.returncode == 0, done.stderr
    (sweep,) = (tmp_path / "out" / "multirun").glob("*/*")
    summaries = [json.loads(path.read_text()) for path in sweep.glob("*/summary.json")]
    grid = {key: values for key, values in sweep_grid(experiment).items() if key != "seed"}
    assert len(summaries) == math.prod(len(values) for values in grid.values())
    assert [s for s in summaries if s["status"] != "ok"] == []
    table = read_report_csv(sweep / "report.csv")
    assert sorted(zip(table.scenario, table.method)) == sorted({(s["scenario"], s["method"]) for s in summaries})
    assert (table.status == "ok").all() and (sweep / "comparison.png").exists()
    # real digits: a hundred steps of the first task learn it well above chance (1/2 to 1/10)
    assert all(s["accuracy_matrix"][0][0] > 0.6 for s in summaries), [s["accuracy_matrix"][0] for s in summaries]
    if all("accuracy_matrices" in s for s in summaries):  # class-IL: the task-aware table of the same runs
        aware = make_report([sweep], tmp_path / "task_aware", metric="final_task_aware_accuracy").table.frame
        for technique, final in zip(aware.Technique, aware.final_task_aware_accuracy):
            runs = [s for s in summaries if s["method"] == technique]
            last_rows = [s["accuracy_matrices"]["task_aware"]["test"][-1] for s in runs]
            assert final == pytest.approx(sum(sum(row) / len(row) for row in last_rows) / len(last_rows)), technique
    if experiment in RANDOM_ORDERS:
        orders = {tuple(s["tasks"]) for s in summaries}
        assert len(orders) == 1 and list(orders.pop()) != sorted(summaries[0]["tasks"])


def test_the_sweeps_script_runs_every_experiment():
    script = CONFIG_DIR.parent / "scripts" / "sweeps.sh"
    assert set(re.findall(r"experiment=(\w+) ;;", script.read_text())) == set(EXPERIMENTS)
    done = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "TABLE" in done.stderr  # no table named: the list of tables
