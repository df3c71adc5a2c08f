"""`logger=wandb` for real, offline: what W&B's own files hold, read back with W&B's own reader."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import cl_bench


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, its settings and caches in tmp_path (inherited by the CLI's subprocess)."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))


def read_records(run_folder: Path) -> dict[str, list[dict]]:
    """A W&B run's records by type (run, history, metric, summary, exit, ...), as W&B's own reader of
    .wandb files (`wandb leet inspect --json`) prints them."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, list[dict]] = {}
    for line in filter(str.strip, done.stdout.splitlines()):
        record = json.loads(line)
        found.setdefault(record["type"], []).append(record[record["type"]])
    return found


def final_summary(found: dict[str, list[dict]]) -> dict:
    """The run summary: its updates merged in order (a logged image's keys come flattened, e.g. curves.path)."""
    summary: dict = {}
    for record in found["summary"]:
        summary.update(record.get("update", {}))
    return summary


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def test_each_job_is_a_finished_offline_run_holding_rows_summary_and_figure(tmp_path):
    done = cl_bench(tmp_path, "logger=wandb", "logger.tags=[test]", "lr=0.001,0.0001", multirun=True)
    assert done.returncode == 0, done.stderr
    sweep = next((tmp_path / "out" / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(jobs) == 2
    for job in jobs:
        (run,) = offline_runs(job)
        found = read_records(run)
        (header,) = found["run"]
        assert header["project"] == "cl_bench" and header["job_type"] == "train" and header["tags"] == ["test"]
        assert header["run_group"] == f"{sweep.parent.name}_{sweep.name}"
        assert found["exit"][0].get("exit_code", 0) == 0  # finished, and finished as a success
        expected = json.loads((job / "summary.json").read_text())
        config = header["config"]["update"]
        assert config["lr"] == expected["lr"] and config["method"]["label"] == "Baseline"
        summary = final_summary(found)
        assert summary["status"] == "ok"
        assert summary["score"] == pytest.approx(expected["score"])
        assert summary["score_k"] == pytest.approx(expected["score_k"])
        assert summary["score_test"] == pytest.approx(expected["score_test"])
        assert summary["accuracy_matrix"] == expected["accuracy_matrix"]
        assert summary["curves._type"] == "image-file" and (run / "files" / summary["curves.path"]).exists()
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        history = [h["item"] for h in found["history"] if "step" in h["item"]]
        assert [h["step"] for h in history] == [row["step"] for row in rows]
        val_last = [k for k in rows[-1] if k.startswith("val/")][-1]
        assert history[-1][val_last] == pytest.approx(rows[-1][val_last])
        assert {m.get("glob_name") for m in found["metric"]} >= {"val/*", "loss/*"}

    (report,) = offline_runs(sweep)  # the multirun's callback logged its table in a run of its own
    found = read_records(report)
    (header,) = found["run"]
    assert header["job_type"] == "report" and header["run_group"] == f"{sweep.parent.name}_{sweep.name}"
    summary = final_summary(found)
    assert summary["score_table._type"] == "table-file" and summary["comparison._type"] == "image-file"
    table = json.loads((report / "files" / summary["score_table.path"]).read_text())
    techniques = {row[table["columns"].index("Technique")] for row in table["data"]}
    assert techniques == {"Baseline", "Baseline (low lr)"}
    scores = {row[table["columns"].index("Technique")]: row[table["columns"].index("score")] for row in table["data"]}
    by_lr = {json.loads((job / "summary.json").read_text())["lr"]: job for job in jobs}
    expected = json.loads((by_lr[0.001] / "summary.json").read_text())["score"]
    assert scores["Baseline"] == pytest.approx(expected)


LOGGER_RUN = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from cl_bench.loggers.wandb import WandbLogger
logger = WandbLogger(mode="online", init_timeout=20)
started = time.perf_counter()
logger.start(OmegaConf.create({"lr": 0.1}), Path(sys.argv[1]))
logger.log_row({"step": 0, "val/A": 0.5})
logger.finish({"status": "ok", "score": 0.5}, Path(sys.argv[1]))
print(f"took {time.perf_counter() - started:.1f} s")
"""


def start_online(run_dir: Path) -> subprocess.CompletedProcess:
    """An online-mode logger in a fresh process: start, one row, finish."""
    command = [sys.executable, "-c", LOGGER_RUN, str(run_dir)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_an_unreachable_server_means_offline_with_a_warning_not_a_hang(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a loopback port with nothing listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    done = start_online(tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 60
    assert "unreachable; logging offline" in done.stderr
    (run,) = offline_runs(tmp_path / "run")
    assert final_summary(read_records(run))["score"] == 0.5


def test_no_credentials_means_offline_never_a_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    done = start_online(tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "no W&B credentials" in done.stderr
    assert offline_runs(tmp_path / "run")
