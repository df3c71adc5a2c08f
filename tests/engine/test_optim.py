"""The optimiser across tasks: carried as one optimiser in a plain loop (Keras's compiled model, van de
Ven's code), or new per task; a grown head's added units start with zero state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cl_bench.data.sequences import build_task_sequence
from cl_bench.engine.optim import build_optimizer, carried_optimizer
from cl_bench.engine.run import run_experiment
from cl_bench.engine.trainer import index_batches
from cl_bench.models.head import grow_head
from cl_bench.models.mlp import MLP
from tests.helpers.config import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def plain_loop(cfg, carry: bool) -> dict[str, torch.Tensor]:
    """Two tasks trained by hand as the runner's config says: the same seed, model, batches and lr."""
    torch.manual_seed(cfg.seed)
    tasks = build_task_sequence(cfg.dataset)
    model = instantiate(cfg.model, input_shape=tasks[0].input_shape, n_outputs=5)
    sampler = torch.Generator().manual_seed(cfg.seed)
    optimizer = None
    for k, (task, lr, steps) in enumerate(zip(tasks, (cfg.first_task.lr, cfg.lr), (cfg.first_task.steps, cfg.steps))):
        if optimizer is None or not carry:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for index in index_batches(len(task.train), cfg.batch_size, steps, sampler):
            x, y = task.train.gather(index)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("state", ["carry", "fresh"])
def test_the_runner_trains_as_a_plain_loop_with_one_optimiser_or_one_per_task(make_config, tmp_path, state):
    cfg = make_config(TINY, f"optimizer_state={state}", "first_task.cache=false", "lr=0.003")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert run_experiment(cfg, run_dir)["status"] == "ok"
    trained = torch.load(run_dir / "checkpoints" / "ckpt-000000060-002.pt", weights_only=True)["model"]
    same, other = plain_loop(cfg, carry=state == "carry"), plain_loop(cfg, carry=state != "carry")
    assert all(torch.equal(trained[k], same[k]) for k in same)
    assert not all(torch.equal(trained[k], other[k]) for k in other)  # the setting makes a difference


def test_a_grown_head_keeps_its_rows_state_and_gives_new_units_zero_state():
    torch.manual_seed(0)
    model = MLP((4,), 2, [3])
    cfg = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "betas": [0.9, 0.999]})
    optimizer = build_optimizer(cfg, model.parameters(), 0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    before = {k: v.clone() for k, v in optimizer.state[model.head.weight].items()}
    grow_head(model, 5)
    carried = carried_optimizer(optimizer, cfg, model, 0.01)
    after = carried.state[model.head.weight]
    assert carried.param_groups[0]["lr"] == 0.01 and torch.equal(after["step"], before["step"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert after[key].shape == (5, 3)
        assert torch.equal(after[key][:2], before[key]) and after[key][2:].abs().max() == 0

