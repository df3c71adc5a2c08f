"""Building a method from its `conf/method/*.yaml` node."""

from __future__ import annotations

import inspect

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cl_bench.errors import ConfigError
from cl_bench.methods.base import Method

# Keys of a method node that describe the run rather than the method's constructor.
RUN_KEYS = ("label", "lr")


def build_method(node: DictConfig) -> Method:
    """Instantiate `node._target_` with the node's other keys; `lambda` becomes `lambda_`. A key the
    method does not take or a value it refuses is a ConfigError naming it."""
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
        raise ConfigError(f"method.{unknown[0]}: {cls.__name__} takes no such parameter ({allowed})")
    try:
        method = cls(**params)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if not isinstance(method, Method):
        raise TypeError(f"method._target_={cls.__name__} is not a cl_bench Method")
    return method
