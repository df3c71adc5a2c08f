"""cl_bench as a package: a wheel built from the sources, installed into a fresh venv outside the
repository, runs from any folder with the configs it ships, and with a user's own config folder.

The venv gets the wheel alone (`--no-deps`); its dependencies (torch and the rest) are the ones already
installed in this test's environment, reached through a .pth file added after the install, so nothing is
downloaded. The wheel is built with a version of its own in pyproject.toml, the one place it is written:
`cl-bench --help` and every run's summary must show it.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = "9.8.7"  # the test wheel's version, written into the copied pyproject.toml only
RUN = ["first_task.steps=20", "steps=20", "eval_every=10", "threads=1"]

MINE = """\
# @package dataset.mine
# My data set: the embedded digits as two tasks of permuted pixels, my own permutation seed.
_target_: cl_bench.data.sequences.permuted_tasks
source:
  _target_: cl_bench.data.sources.sklearn_digits
  test_fraction: 0.2
  split_seed: 0
n_tasks: 2
permutation_seed: 7
val_fraction: 0.15
split_seed: 0
"""
WIDE = """\
# My model: a wider MLP.
_target_: cl_bench.models.mlp.MLP
hidden: [256]
dropout: 0.0
"""
MY_EXPERIMENT = """\
# @package _global_
# My experiment: my data set, my model, EWC, class-incremental.
defaults:
  - override /dataset: [mine]
  - override /model: wide
  - override /method: ewc
scenario: class
"""


def run(command: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(the venv's bin folder, an environment that knows nothing of the repository) after the wheel is
    built from a copy of the sources and installed into a fresh venv."""
    top = tmp_path_factory.mktemp("wheel")
    source = top / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("cl_bench", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    shutil.copy(ROOT / "README.md", source / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pyproject.count('\nversion = "') == 1
    start = pyproject.index('\nversion = "') + len('\nversion = "')
    end = pyproject.index('"', start)
    (source / "pyproject.toml").write_text(pyproject[:start] + VERSION + pyproject[end:])

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(top / "dist"),
                 str(source)], top, env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (top / "dist").glob("cl_bench-*.whl")
    assert wheel.name.startswith(f"cl_bench-{VERSION}-")

    venv = top / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], top, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    done = run([*pip, "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)], top, env)
    assert done.returncode == 0, done.stdout + done.stderr
    # The dependencies already installed here (torch, hydra, ...), after the venv's own packages on sys.path.
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], top, env)
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (Path(purelib.stdout.strip()) / "dependencies_of_the_test_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", env


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A user's folder outside the repository, with a config folder of their own (myconf/)."""
    files = (("dataset", "mine", MINE), ("model", "wide", WIDE), ("experiment", "mine", MY_EXPERIMENT))
    for group, name, text in files:
        (tmp_path / "myconf" / group).mkdir(parents=True, exist_ok=True)
        (tmp_path / "myconf" / group / f"{name}.yaml").write_text(text)
    return tmp_path


def only_run(folder: Path) -> Path:
    (run_dir,) = (folder / "outputs" / "runs").glob("*/*")
    return run_dir


def test_the_installed_wheel_runs_the_main_job_with_the_configs_it_ships(installed, user_folder):
    bin_dir, env = installed
    where = run([str(bin_dir / "python"), "-c", "import cl_bench; from cl_bench.core.layout import CONFIG_DIR; print(cl_bench.__file__, CONFIG_DIR)"],
                user_folder, env)
    assert where.returncode == 0, where.stderr
    module, configs = where.stdout.split()
    assert Path(module).is_relative_to(bin_dir.parent) and Path(configs).is_relative_to(bin_dir.parent)  # not ROOT
    assert (Path(configs) / "config.yaml").exists() and (Path(configs) / "hydra" / "launcher" / "slurm.yaml").exists()

    done = run([str(bin_dir / "cl-bench"), *RUN], user_folder, env)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run(user_folder)
    started, ended = done.stdout.splitlines()  # a line when the job starts, one when it ends
    assert started == f"cl-bench: started · {run_dir}"
    assert ended.startswith("cl-bench: Baseline: Score ") and ended.endswith(f" · {run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["versions"]["cl_bench"] == VERSION
    assert summary["datasets"] == ["split_sklearn_digits"]


def test_help_shows_our_usage_and_the_version_above_hydras(installed, user_folder):
    bin_dir, env = installed
    done = run([str(bin_dir / "cl-bench"), "--help"], user_folder, env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"cl-bench {VERSION}: ")
    ours = text[: text.index("== Configuration groups ==")]
    assert "cl-bench +debug=tiny" in ours and "hydra/launcher=slurm" in ours and "resume=" in ours
    assert "docs/" in ours and "--config-dir" in ours
    method_line = next(line for line in text.splitlines() if line.startswith("method: "))
    assert {"baseline", "ewc", "kd", "icarl"} <= set(method_line.removeprefix("method: ").split(", "))
    assert "Powered by Hydra" in text

    done = run([str(bin_dir / "cl-bench"), "--config-dir", "myconf", "--help"], user_folder, env)
    assert "permuted_sklearn_digits" in done.stdout and ", mine," in done.stdout.replace("mine\n", "mine,")


def test_a_user_config_folder_adds_a_data_set_a_model_and_an_experiment(installed, user_folder):
    bin_dir, env = installed
    done = run([str(bin_dir / "cl-bench"), "--config-dir", "./myconf", "dataset=mine", *RUN], user_folder, env)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run(user_folder)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["datasets"] == ["mine"] and len(summary["tasks"]) == 2
    shutil.rmtree(user_folder / "outputs")

    done = run([str(bin_dir / "cl-bench"), "--config-dir", "./myconf", "experiment=mine", *RUN], user_folder, env)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((only_run(user_folder) / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["datasets"] == ["mine"] and summary["method"] == "EWC"
    assert summary["model"] == "MLP" and summary["scenario"] == "class"
    assert summary["versions"]["cl_bench"] == VERSION
