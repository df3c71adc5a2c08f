"""Every experiment config (`conf/experiment/*.yaml`, a paper table's sweep) composes with each value of its
sweep grid, and its whole sweep runs for real on generated MNIST files: every row and grid point as
shipped, only budgets, sizes and seeds shrunk (after lightning-hydra-template's tests/test_sweeps.py)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cl_bench import CONFIG_DIR
from tests.conftest import write_idx
from tests.test_cli import cl_bench

EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
RUN_ELSEWHERE = {"two_cities"}  # image folders: tests/test_two_cities.py runs it

# Tiny budgets for every job: a few steps per task, evaluated at each task's start and end, one seed.
TINY = ["first_task.steps=4", "first_task.epochs=null", "steps=4", "epochs=null", "eval_every=4", "batch_size=16"]
TINY += ["seed=0", "threads=1"]
SMALLER = {
    "seed004_permuted_mnist": ["model.channels=4", "model.hidden=32", "dataset.permuted_mnist.n_tasks=3"],
    "van_de_ven_split_mnist": ["dataset.split_mnist.splits=[[0,1],[2,3],[4,5]]"],
}
# One run with the random orders on: the same seed gives every job the same (shuffled) tasks.
RANDOM_ORDERS = {"van_de_ven_split_mnist": ["task_order=random", "dataset.split_mnist.class_order=random"]}


def experiment_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=True)


def sweep_grid(experiment: str) -> dict[str, list[str]]:
    """The experiment's `hydra.sweeper.params`, each value list split."""
    params = experiment_config(f"experiment={experiment}").hydra.sweeper.params
    return {key: value.split(",") for key, value in params.items()}


@pytest.fixture(scope="module")
def mnist_data(tmp_path_factory) -> Path:
    """A data_dir with a generated MNIST large enough for the tables' Fisher samples (1000 a task):
    6000 train and 200 test images, a bright bar whose row says the digit."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data")
    for prefix, n in (("train", 6000), ("t10k", 200)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28))
        rows = 2 + 2 * labels[:, None] + np.arange(2)
        images[np.arange(n)[:, None], rows, 4:24] = 250
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_value_of_the_sweep_grid_composes(experiment):
    grid = sweep_grid(experiment)
    assert grid, f"conf/experiment/{experiment}.yaml has no hydra.sweeper.params"
    for key, values in grid.items():
        for value in values:
            cfg = experiment_config(f"experiment={experiment}", f"{key}={value}")
            chosen = cfg.hydra.runtime.choices.get(key, str(cfg.get(key)))  # a config group's choice, or a value
            assert chosen == value, (key, value)


@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS) - RUN_ELSEWHERE))
def test_the_whole_sweep_runs_and_reports_every_row(experiment, mnist_data, tmp_path):
    overrides = [*TINY, *SMALLER.get(experiment, []), *RANDOM_ORDERS.get(experiment, [])]
    done = cl_bench(tmp_path, f"experiment={experiment}", f"data_dir={mnist_data}", *overrides, multirun=True)
    assert done.returncode == 0, done.stderr
    (sweep,) = (tmp_path / "out" / "multirun").glob("*/*")
    summaries = [json.loads(path.read_text()) for path in sweep.glob("*/summary.json")]
    grid = {key: values for key, values in sweep_grid(experiment).items() if key != "seed"}
    assert len(summaries) == math.prod(len(values) for values in grid.values())
    assert [s for s in summaries if s["status"] != "ok"] == []
    table = pd.read_csv(sweep / "report.csv")
    assert sorted(zip(table.scenario, table.method)) == sorted({(s["scenario"], s["method"]) for s in summaries})
    assert (table.status == "ok").all() and (sweep / "comparison.png").exists()
    if experiment in RANDOM_ORDERS:
        orders = {tuple(s["tasks"]) for s in summaries}
        assert len(orders) == 1 and list(orders.pop()) != sorted(summaries[0]["tasks"])


def test_the_sweeps_script_runs_every_experiment():
    script = CONFIG_DIR.parent / "scripts" / "sweeps.sh"
    assert set(re.findall(r"experiment=(\w+) ;;", script.read_text())) == set(EXPERIMENTS)
    done = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "TABLE" in done.stderr  # no table named: the list of tables
