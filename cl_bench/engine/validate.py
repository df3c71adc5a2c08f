"""Checks of a composed config before anything is built or trained: one clear message per bad key.

The one place the config's keys are checked, each in the style `key=value: must be …` or `key=value:
choose …`. A rule whose values another module defines is written there once and called from here:
`scenario` (engine.scenario.check_scenario), `task_order` and `class_order` (data.sequences.check_order),
`model.channels_last` (models.options.check_channels_last). The method node's parameters are its
constructor's (methods/params.py, run by build_method right after this check); what depends on the
data is checked once the tasks are built (`check_against_tasks`, and the method's `check(tasks)`).
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_bench.core import checks
from cl_bench.core.accuracy import ACCURACIES, TASK_AWARE
from cl_bench.core.errors import ConfigError
from cl_bench.core.scenario import CLASS_HEADS, check_scenario
from cl_bench.core.score import SCORE_WINDOWS, TRAINING
from cl_bench.data.sequences import check_order
from cl_bench.data.task import Task
from cl_bench.engine.device import PRECISIONS
from cl_bench.engine.optim import OPTIMIZER_STATES
from cl_bench.models.mlp import INITS
from cl_bench.models.options import check_channels_last

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Rules of the optimiser node's numeric keys (torch.optim's names), checked when present.
OPTIMIZER_NUMBERS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "weight_decay": ("≥ 0", lambda v: v >= 0),
    "lr_decay": ("≥ 0", lambda v: v >= 0),
    "momentum": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "dampening": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "eps": ("> 0", lambda v: v > 0),
}
OPTIMIZER_FLAGS = ("nesterov", "amsgrad", "maximize")


def _positive(cfg: DictConfig, key: str, kind: type = float) -> None:
    checks.positive(key, OmegaConf.select(cfg, key), kind)


def _budget(cfg: DictConfig, prefix: str) -> None:
    steps, epochs = OmegaConf.select(cfg, f"{prefix}steps"), OmegaConf.select(cfg, f"{prefix}epochs")
    if (steps is None) == (epochs is None):
        raise ConfigError(
            f"{prefix}steps={steps}, {prefix}epochs={epochs}: set exactly one of them (the other to null)"
        )
    if prefix == "first_task." and steps == 0:
        return  # a first task taken as trained (init_from)
    _positive(cfg, f"{prefix}steps" if steps is not None else f"{prefix}epochs", int if steps is not None else float)


def _orders(cfg: DictConfig) -> None:
    """`task_order` and every split dataset's `class_order` are fixed or random."""
    splits = [name for name, node in cfg.dataset.items() if "class_order" in node]
    keys = ["task_order"] + [f"dataset.{name}.class_order" for name in splits]
    for key in keys:
        check_order(key, OmegaConf.select(cfg, key, default="fixed"))


def _missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Keys left at `???`, found without resolving interpolations (OmegaConf.missing_keys resolves
    them, and raises on one that points at a `???`: the key it points at is reported instead)."""
    found = []
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], (DictConfig, ListConfig)):
            found += _missing_keys(node[key], f"{prefix}{key}.")
    return found


def _is_nonfinite(value: Any) -> bool:
    """A NaN or infinite float, or a list holding one."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, list) and any(_is_nonfinite(item) for item in value)


def _nonfinite_keys(node: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every non-finite value of the resolved `node`, a list as a whole."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _nonfinite_keys(value, f"{prefix}{key}.")
        elif _is_nonfinite(value):
            yield f"{prefix}{key}", value


def _finite(cfg: DictConfig) -> None:
    """No NaN or infinity anywhere; the method's parameters are left to its constructor, which
    names each with its own rule (build_method, right after this check)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("method", None)
    resolved.pop("plus", None)
    found = next(_nonfinite_keys(resolved), None)
    if found:
        raise ConfigError(f"{found[0]}={found[1]}: must be a finite number")


def _target(prefix: str, node: DictConfig) -> Callable:
    """The class or function `<prefix>._target_` names."""
    try:
        return get_object(node._target_)
    except ImportError as error:
        raise ConfigError(f"{prefix}._target_={node._target_!r}: cannot be imported") from error


def _betas(value: Any) -> bool:
    """Adam's two decay rates, each in [0, 1)."""
    return isinstance(value, ListConfig) and len(value) == 2 and all(
        checks.is_number(b, lambda v: 0 <= v < 1) for b in value
    )


def _optimizer(node: DictConfig) -> None:
    """The optimiser node's keys are the class's, each (when present) within torch.optim's range."""
    set_by_run = {"params": "the model", "lr": "lr and first_task.lr"}
    checks.known_parameters("optimizer", node, _target("optimizer", node), set_by_run)
    for key, (rule, ok) in OPTIMIZER_NUMBERS.items():
        if key in node:
            checks.number(f"optimizer.{key}", node[key], rule, ok, finite=False)
    for key in OPTIMIZER_FLAGS:
        if key in node:
            checks.flag(f"optimizer.{key}", node[key])
    if "betas" in node and not _betas(node.betas):
        raise ConfigError(f"optimizer.betas={node.betas!r}: must be two numbers, each in [0, 1)")
    if node.get("nesterov") and (node.get("momentum", 0) <= 0 or node.get("dampening", 0) != 0):
        raise ConfigError("optimizer.nesterov=true: needs optimizer.momentum > 0 and optimizer.dampening=0")


def _hidden(node: DictConfig, model: Callable) -> None:
    """`model.hidden`: a list of widths ≥ 1 for a model that takes a list (MLP), else one width ≥ 1."""
    hint = typing.get_type_hints(model.__init__ if inspect.isclass(model) else model).get("hidden")
    if typing.get_origin(hint) is not list:
        checks.integer("model.hidden", node.hidden, 1)
    elif not isinstance(node.hidden, ListConfig) or not all(checks.is_integer(width, 1) for width in node.hidden):
        raise ConfigError(f"model.hidden={node.hidden!r}: must be a list of integers ≥ 1 (the hidden layers' widths)")


def _model(node: DictConfig) -> None:
    """The model node's keys are the model's; sizes are integers ≥ 1, dropout rates in [0, 1)."""
    model = _target("model", node)
    checks.known_parameters("model", node, model, {"input_shape": "the data", "n_outputs": "the scenario"})
    if "hidden" in node:
        _hidden(node, model)
    if "channels" in node:
        checks.integer("model.channels", node.channels, 1)
    for key in ("dropout", "input_dropout"):
        if key in node:
            checks.number(f"model.{key}", node[key], "in [0, 1)", lambda v: 0 <= v < 1, finite=False)
    if "channels_last" in node:
        check_channels_last(node.channels_last)
    if "init" in node:
        checks.choice("model.init", node.init, INITS)


def _run_keys(cfg: DictConfig) -> None:
    """The seed, the device and the first task's cache switch."""
    checks.integer("seed", cfg.seed, 0)
    if not isinstance(cfg.device, str) or not DEVICE.fullmatch(cfg.device):
        raise ConfigError(f"device={cfg.device!r}: choose auto, cpu, cuda, cuda:N (N a GPU index) or mps")
    checks.flag("first_task.cache", cfg.first_task.cache)


def _resolvable(cfg: DictConfig) -> None:
    """Every interpolation resolves (`lr=${nope}` names `lr`)."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(f"{error.full_key}: cannot be resolved ({reason})") from None


def _plus_parts(cfg: DictConfig) -> None:
    """Every node under `plus` is a selected method (`plus=[replay]`): an override of `plus.<name>.<key>` alone
    makes a node without one."""
    for name, node in (cfg.get("plus") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            keys = [key for key in node if key != "label"] if isinstance(node, DictConfig) else []
            given = f"plus.{name}.{keys[0]}" if keys else f"plus.{name}"
            raise ConfigError(f"{given} is set, but {name} is not in plus: add plus=[{name}] (or leave the override out)")


def check_listed_once(overrides: Sequence[str]) -> None:
    """A method is listed in `plus=[...]` once (Hydra would compose a repeated one into one part): ConfigError
    naming it. `overrides`: the command line's, as Hydra keeps them (`hydra.overrides.task`)."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group != "plus" or override.is_sweep_override():
            continue
        names = override.value() if isinstance(override.value(), list) else [override.value()]
        repeated = next((name for name in names if names.count(name) > 1), None)
        if repeated is not None:
            raise ConfigError(f"plus=[{','.join(map(str, names))}]: {repeated} is listed twice; combine a method once")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that cannot work."""
    if not cfg.get("dataset"):
        raise ConfigError("dataset=[]: select at least one dataset, e.g. dataset=[split_sklearn_digits]")
    if HydraConfig.initialized():
        check_listed_once(OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))
    _plus_parts(cfg)
    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"mandatory value(s) not set: {', '.join(missing)} (give them on the command line, key=value)"
        )
    _resolvable(cfg)
    _finite(cfg)
    for key in ("lr", "first_task.lr"):
        _positive(cfg, key)
    for key in ("batch_size", "eval_batch_size", "eval_every", "checkpoint.keep"):
        _positive(cfg, key, int)
    if cfg.checkpoint.every is not None:
        _positive(cfg, "checkpoint.every", int)
    _budget(cfg, "first_task.")
    _budget(cfg, "")
    _run_keys(cfg)
    check_scenario(cfg.scenario)
    _orders(cfg)
    checks.choice("optimizer_state", cfg.optimizer_state, OPTIMIZER_STATES)
    checks.choice("accuracy", cfg.accuracy, ACCURACIES)
    checks.choice("score.window", OmegaConf.select(cfg, "score.window"), SCORE_WINDOWS)
    checks.choice("class_head", cfg.class_head, CLASS_HEADS)
    if cfg.class_head == "full" and cfg.scenario != "class":
        raise ConfigError(f"class_head=full: only class-IL's head can hold every class from the start (scenario={cfg.scenario})")
    if cfg.accuracy == TASK_AWARE and cfg.scenario == "domain":
        raise ConfigError("accuracy=task_aware: domain-IL has one shared label space; use accuracy=scenario")
    if cfg.threads is not None and cfg.threads != "auto" and not checks.is_integer(cfg.threads, 1):
        raise ConfigError(f"threads={cfg.threads!r}: use auto (the cores this job may use) or a positive integer")
    checks.choice("precision", cfg.precision, PRECISIONS)
    _optimizer(cfg.optimizer)
    _model(cfg.model)


def check_against_tasks(cfg: DictConfig, tasks: list[Task]) -> None:
    """What depends on the data, checked once the tasks are built and before training: a batch
    holds at most a task's training split, so a larger `batch_size` is refused (not clamped); the Score's
    window holds a point (a single task taken as trained, `first_task.steps=0`, has only its step 0)."""
    if len(tasks) == 1 and cfg.first_task.steps == 0 and cfg.score.window == TRAINING:
        raise ConfigError(
            "score.window=training: the only task has no training step (first_task.steps=0), so no point is in "
            "the Score's window; set score.window=with_start to score the model as it starts"
        )
    for task in tasks:
        if cfg.batch_size > len(task.train):
            raise ConfigError(
                f"batch_size={cfg.batch_size}: task {task.name!r} has only {len(task.train)} training examples; "
                f"choose at most {len(task.train)}"
            )
