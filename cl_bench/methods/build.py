"""Building a method from its `conf/method/*.yaml` node."""

from __future__ import annotations

import inspect

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cl_bench.errors import ConfigError
from cl_bench.methods.base import Method
from cl_bench.methods.compose import Combined
from cl_bench.methods.params import under
from cl_bench.results.experiment_keys import RUN_KEYS


def build_methods(cfg: DictConfig) -> Method:
    """The run's method: `cfg.method`, combined (methods/compose.py) with those of `cfg.plus` if it lists any."""
    method = build_method(cfg.method, cfg.scenario)
    plus = cfg.get("plus") or {}
    if not plus:
        return method
    parts = {"method": method}
    for name, node in plus.items():
        parts[f"plus.{name}"] = build_method(node, cfg.scenario, f"plus.{name}")
    return Combined(parts)


def method_label(cfg: DictConfig) -> str:
    """The run's method as tables name it: each part's `label` (else its class name), joined by " + "."""
    nodes = [cfg.method, *(cfg.get("plus") or {}).values()]
    return " + ".join(node.get("label") or node._target_.rsplit(".", 1)[-1] for node in nodes)


def build_method(node: DictConfig, scenario: str, prefix: str = "method") -> Method:
    """Instantiate `node._target_` with the node's keys but RUN_KEYS; `lambda` becomes `lambda_`. A key
    the method does not take is a ConfigError naming it, as is a value its constructor refuses (methods/params.py),
    and a `scenario` the method is not defined in."""
    params = OmegaConf.to_container(node, resolve=True)
    cls = get_class(params.pop("_target_"))
    for key in RUN_KEYS:
        params.pop(key, None)
    if "lambda" in params:
        params["lambda_"] = params.pop("lambda")
    accepted = [name for name in inspect.signature(cls).parameters if name != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        names = ", ".join(name.rstrip("_") for name in accepted)
        allowed = f"it takes: {names}" if accepted else "it takes no parameters"
        raise ConfigError(f"{prefix}.{unknown[0]}: {cls.__name__} takes no such parameter ({allowed})")
    try:
        method = cls(**params)
    except ConfigError as error:
        raise under(prefix, error) from None
    if not isinstance(method, Method):
        raise TypeError(f"{prefix}._target_={cls.__name__} is not a cl_bench Method")
    if scenario not in method.scenarios:
        raise ConfigError(
            f"scenario={scenario}: {cls.__name__} is defined only in {' and '.join(method.scenarios)}-IL "
            f"(choose scenario={method.scenarios[0]} or another method)"
        )
    return method
