"""Every method of conf/method/ as a run's overrides, each in a scenario it is defined in (the three scenarios
spread over them), and a few combinations (`plus=`): what the tests that go over every method run."""

from __future__ import annotations

from cl_bench.core.layout import CONFIG_DIR

# method (or combination) → its overrides. Class-IL grows the head, task-IL masks it, domain-IL shares it.
EVERY_METHOD: dict[str, list[str]] = {
    "baseline": ["method=baseline", "scenario=task"],
    "lowlr": ["method=lowlr", "scenario=domain"],
    "ewc": ["method=ewc", "scenario=class"],
    "kd": ["method=kd", "scenario=task"],
    "l2": ["method=l2", "scenario=domain"],
    "joint": ["method=joint", "scenario=class"],
    "replay": ["method=replay", "scenario=task"],
    "si": ["method=si", "scenario=class"],
    "mas": ["method=mas", "scenario=domain"],
    "agem": ["method=agem", "scenario=task"],
    "der": ["method=der", "scenario=class"],
    "derpp": ["method=derpp", "scenario=domain"],
    "icarl": ["method=icarl", "scenario=class"],
    "e2e": ["method=e2e", "scenario=class"],
    "gem": ["method=gem", "scenario=task"],
    "dgr": ["method=dgr", "scenario=domain"],
    "rtf": ["method=rtf", "model=vae", "scenario=class"],
    "er_ace": ["method=er_ace", "scenario=class"],
    "xder": ["method=xder", "scenario=class"],
    "gdumb": ["method=gdumb", "scenario=task"],
    "lwf_mc": ["method=lwf_mc", "scenario=class"],
    "bic": ["method=bic", "scenario=class"],
    "lucir": ["method=lucir", "scenario=class"],
    "kd+replay": ["method=kd", "plus=[replay]", "scenario=class"],
    "ewc+agem": ["method=ewc", "plus=[agem]", "scenario=task"],
    "kd+replay+si": ["method=kd", "plus=[replay,si]", "scenario=domain"],
    "ewc+dgr": ["method=ewc", "plus=[dgr]", "scenario=class"],
}
COMBINATIONS = [name for name in EVERY_METHOD if "+" in name]


def method_names() -> list[str]:
    """The methods conf/method/ holds: a new one is a new file there, which EVERY_METHOD must then name
    (tests/gpu_ready/test_device_audit.py checks)."""
    return sorted(path.stem for path in (CONFIG_DIR / "method").glob("*.yaml"))
