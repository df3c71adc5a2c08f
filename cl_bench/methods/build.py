"""Building a method from its `conf/method/*.yaml` node."""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cl_bench.methods.base import Method

# Keys of a method node that describe the run rather than the method's constructor.
RUN_KEYS = ("label", "lr")


def build_method(node: DictConfig) -> Method:
    """Instantiate `node._target_` with the node's other keys; `lambda` becomes `lambda_`."""
    params = OmegaConf.to_container(node, resolve=True)
    cls = get_class(params.pop("_target_"))
    for key in RUN_KEYS:
        params.pop(key, None)
    if "lambda" in params:
        params["lambda_"] = params.pop("lambda")
    method = cls(**params)
    if not isinstance(method, Method):
        raise TypeError(f"method._target_={cls.__name__} is not a cl_bench Method")
    return method
