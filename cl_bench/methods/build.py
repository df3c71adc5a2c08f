"""Building a method from its `conf/method/*.yaml` node."""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cl_bench.core import checks
from cl_bench.core.errors import ConfigError
from cl_bench.core.experiment import RUN_KEYS
from cl_bench.methods.base import Method, check_ownership
from cl_bench.methods.compose import Combined
from cl_bench.methods.params import under


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


def build_method(node: DictConfig, scenario: str, prefix: str = "method") -> Method:
    """Instantiate `node._target_` with the node's keys but RUN_KEYS (`lambda` passed as `lambda_`). A key
    the method does not take is a ConfigError naming it, as is a value its constructor refuses (methods/params.py),
    and a `scenario` the method is not defined in."""
    params = OmegaConf.to_container(node, resolve=True)
    cls = get_class(params.pop("_target_"))
    for key in RUN_KEYS:
        params.pop(key, None)
    checks.known_parameters(prefix, dict(sorted(params.items())), cls)
    try:
        method = cls(**{checks.parameter_of(key, cls): value for key, value in params.items()})
    except ConfigError as error:
        raise under(prefix, error) from None
    if not isinstance(method, Method):
        raise TypeError(f"{prefix}._target_={cls.__name__} is not a cl_bench Method")
    check_ownership(method)
    if scenario not in method.scenarios:
        raise ConfigError(
            f"scenario={scenario}: {cls.__name__} is defined only in {' and '.join(method.scenarios)}-IL "
            f"(choose scenario={method.scenarios[0]} or another method)"
        )
    return method
