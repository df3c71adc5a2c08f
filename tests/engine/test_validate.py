"""Every refusable config value is refused with a one-line message naming the key, before any data is read."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cl_bench.core.errors import ConfigError
from cl_bench.core.experiment import RUN_KEYS
from cl_bench.core.layout import CONFIG_DIR
from cl_bench.data.sequences import build_task_sequence
from cl_bench.engine.run import run_experiment
from cl_bench.engine.validate import check_against_tasks, validate_config
from cl_bench.methods.build import build_method
from tests.helpers.config import TINY

# The reproduced findings of issue 13, each with the start of the message that must name its key.
FINDINGS = [
    (["lr=nan"], "lr=nan: must be a finite number"),
    (["method=kd", "method.kappa=nan"], "method.kappa=nan: must be a finite number ≥ 0"),
    (["method=kd", "method.T=inf"], "method.T=inf: must be a finite number > 0"),
    (["method=ewc", "method.lambda=nan"], "method.lambda=nan: must be a finite number ≥ 0"),
    (["seed=abc"], "seed='abc': must be an integer ≥ 0"),
    (["device=bogus"], "device='bogus': choose auto, cpu, cuda, cuda:N"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum=-1: must be a number in [0, 1]"),
    (["model.hidden=[-1]"], "model.hidden=[-1]: must be a list of integers ≥ 1"),
    (["model.hidden=[0]"], "model.hidden=[0]: must be a list of integers ≥ 1"),
]


@pytest.mark.parametrize(
    "overrides, message",
    [
        *[(overrides, message) for overrides, message in FINDINGS if not overrides[0].startswith("method=")],
        (["first_task.lr=inf"], "first_task.lr=inf: must be a finite number"),
        (["steps=null", "epochs=nan"], "epochs=nan: must be a finite number"),
        (["dataset.split_sklearn_digits.val_fraction=nan"], "dataset.split_sklearn_digits.val_fraction=nan"),
        (["optimizer.betas=[0.9,inf]"], "optimizer.betas=[0.9, inf]: must be a finite number"),
        (["seed=-1"], "seed=-1: must be an integer ≥ 0"),
        (["seed=1.5"], "seed=1.5: must be an integer ≥ 0"),
        (["device=cuda:x"], "device='cuda:x'"),
        (["first_task.cache=maybe"], "first_task.cache='maybe': must be true or false"),
        (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5: must be a number in [0, 1]"),
        (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1: must be a number ≥ 0"),
        (["optimizer.eps=0"], "optimizer.eps=0: must be a number > 0"),
        (["optimizer.betas=[0.9,1.0]"], "optimizer.betas=[0.9, 1.0]: must be two numbers, each in [0, 1)"),
        (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be two numbers"),
        (["optimizer=sgd", "+optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.nesterov=true: needs"),
        (["+optimizer.lr=0.1"], "optimizer.lr=0.1: set by lr and first_task.lr, not in the optimizer node"),
        (["+optimizer.momentum=0.9"], "optimizer.momentum: Adam takes no such parameter (it takes: betas,"),
        (["model.dropout=1.0"], "model.dropout=1.0: must be a number in [0, 1)"),
        (["model.hidden=64"], "model.hidden=64: must be a list of integers ≥ 1"),
        (["+model.width=3"], "model.width: MLP takes no such parameter (it takes: hidden, dropout, init)"),
        (["+model.init=he"], "model.init='he': choose one of default, xavier"),
        (["model=cnn", "model.hidden=[64]"], "model.hidden=[64]: must be an integer ≥ 1"),
        (["model=cnn", "model.channels=0"], "model.channels=0: must be an integer ≥ 1"),
        (["model=cnn", "model.input_dropout=-0.1"], "model.input_dropout=-0.1: must be a number in [0, 1)"),
        (["score.window=all"], "score.window='all': choose one of training, with_start"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(make_config, overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_config(make_config(*overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [["device=cpu"], ["device=cuda:1"], ["device=mps"], ["seed=12"], ["model=cnn"], ["model=resnet18"],
     ["model=mlp400", "model.dropout=0.5"], ["model.hidden=[]"], ["optimizer=sgd", "+optimizer.nesterov=true"],
     ["experiment=ewc_tutorial_split_mnist"], ["experiment=sorberg_permuted_mnist"], ["score.window=with_start"]],
)
def test_good_values_pass(make_config, overrides):
    validate_config(make_config(*overrides))


@pytest.mark.parametrize("overrides, message", FINDINGS)
def test_a_finding_fails_before_any_data_is_read(make_config, tmp_path, overrides, message):
    """split_mnist from a data_dir holding nothing: the config's error comes first."""
    cfg = make_config(TINY, "dataset=[split_mnist]", *overrides)
    summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "failed" and summary["error"].startswith(f"ConfigError: {message}"), summary["error"]
    assert "tasks" not in summary and not (tmp_path / "checkpoints").exists()


def method_parameters() -> list[tuple[str, str, str]]:
    """(method, key, a value it must refuse) for every parameter of every conf/method/*.yaml."""
    bad = {bool: "yes", str: "bogus"}
    found = []
    for path in sorted((CONFIG_DIR / "method").glob("*.yaml")):
        node = OmegaConf.load(path)
        if "_target_" in node:
            found += [(path.stem, key, bad.get(type(value), "nan")) for key, value in node.items()
                      if key != "_target_" and key not in RUN_KEYS]
    return found


@pytest.mark.parametrize("method, key, value", method_parameters())
def test_every_method_parameter_refuses_a_bad_value(make_config, method, key, value):
    with pytest.raises(ConfigError, match=f"^method.{key}=.*{value}"):
        build_method(make_config(f"method={method}", f"method.{key}={value}").method, "domain")


def test_a_method_without_parameters_says_so(make_config):
    with pytest.raises(ConfigError) as error:
        build_method(make_config("+method.lamda=1").method, "domain")
    assert str(error.value) == "method.lamda: Baseline takes no such parameter (it takes no parameters)"


def test_a_batch_larger_than_a_task_is_refused_before_training(make_config, tmp_path):
    summary = run_experiment(make_config(TINY, "batch_size=100000"), tmp_path)
    assert summary["error"] == (
        "ConfigError: batch_size=100000: task 'split_sklearn_digits.0' has only 606 training examples; "
        "choose at most 606"
    )
    assert "train_steps" not in summary and not (tmp_path / "checkpoints").exists()


def test_a_batch_of_a_whole_training_split_is_allowed(make_config):
    cfg = make_config()
    tasks = build_task_sequence(cfg.dataset)
    smallest = min(len(task.train) for task in tasks)
    check_against_tasks(make_config(f"batch_size={smallest}"), tasks)
    with pytest.raises(ConfigError, match=f"^batch_size={smallest + 1}: task "):
        check_against_tasks(make_config(f"batch_size={smallest + 1}"), tasks)
