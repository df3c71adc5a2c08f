"""GPU tier: what a run writes besides its metrics, as `cl-bench` runs it on the device: the curve figure drawn by its
helper process (started before torch is imported, so never a child of a process holding a CUDA context), and the
W&B run, offline, holding the run's rows, summary and figure."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import cl_bench
from tests.helpers.devices import DEVICES

# wandb_env, an autouse fixture, applies here too: W&B offline, its files under tmp_path
from tests.loggers.test_wandb import final_summary, offline_runs, read_records, wandb_env  # noqa: F401


@pytest.mark.parametrize("device", DEVICES)
def test_the_figure_helper_and_w_and_b_offline_on_the_device(tmp_path, device):
    done = cl_bench(tmp_path, "logger=wandb", f"device={device}", "hydra.job_logging.root.level=INFO")
    assert done.returncode == 0, done.stderr
    (run_dir,) = (p.parent for p in (tmp_path / "out" / "runs").glob("*/*/summary.json"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["device"].startswith(device)
    assert (run_dir / "curves.png").stat().st_size > 0
    assert "figure helper" not in (run_dir / "app.log").read_text()  # drawn by the helper, not in the run's process
    (run,) = offline_runs(run_dir)
    found = read_records(run)
    logged = final_summary(found)
    assert logged["status"] == "ok" and logged["score"] == pytest.approx(summary["score"])
    assert logged["curves._type"] == "image-file" and (run / "files" / logged["curves.path"]).exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["item"]["step"] for h in found["history"] if "step" in h["item"]] == [row["step"] for row in rows]
