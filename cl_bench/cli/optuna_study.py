"""An Optuna search's study belongs to one experiment (`hydra/sweeper=optuna_score`).

The study's default name is the method's choice and a hash of the search's identity: the run identity that
the report and `resume=` use (the experiment's identity and the seed), less the keys being searched. Two
searches share a study, its trials and its best value, only when they search the same experiment at the
same fixed values; running the same command again continues its study. The study records that identity
(a user attribute), so a study named explicitly (`hydra.sweeper.study_name=NAME`) that holds another
experiment's search is refused before any trial, naming the keys that differ. Its SQLite file is
`<output_root>/optuna/<study name>.db` (conf/hydra/sweeper/optuna_score.yaml).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from cl_bench.core.experiment import differing_keys, experiment_identity

IDENTITY_ATTR = "cl_bench_search"  # the study's user attribute holding the search's identity (JSON)
HASH_LENGTH = 10


class OtherExperiment(ValueError):
    """A study named for a search that holds the trials of another experiment's."""


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of the SQLite file `path`, its parent folder created."""
    file = Path(path).expanduser().absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def searched_keys(config: DictConfig) -> list[str]:
    """The keys a search varies: those of `hydra.sweeper.params` and of the command line's sweep overrides
    (`method.kappa=interval(0.01, 100)`, `lr=choice(1e-3,1e-4)`)."""
    params = config.hydra.sweeper.get("params") or {}
    given = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(given) if o.is_sweep_override()]
    return sorted({*params, *swept})


def search_identity(config: DictConfig) -> dict[str, Any]:
    """What the study of the search `config` (a multirun's whole config) is the search of: the experiment's
    identity and the seed, less the searched keys, and which keys are searched."""
    searched = searched_keys(config)
    identity = experiment_identity(config, ignore=searched)
    if "seed" not in searched:
        identity["seed"] = OmegaConf.select(config, "seed")
    return {"experiment": identity, "searched": searched}


def default_study_name(*, _root_: DictConfig) -> str:
    """The `cl_bench_study` resolver: the method's choice, and its combined parts, then a hash of the search's
    identity (`kd+replay-3fa9c1d2e4`)."""
    choices = _root_.hydra.runtime.choices
    plus = OmegaConf.select(_root_, "plus") or {}
    label = "+".join([str(choices.get("method", "method")), *plus])
    text = json.dumps(search_identity(_root_), sort_keys=True, default=str)
    return f"{label}-{hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]}"


def claim_study(config: DictConfig) -> None:
    """Before the search starts: open (or create) its study and check that it is this experiment's search,
    recording the identity in a new study; OtherExperiment, naming the differing keys, otherwise."""
    import optuna
    from hydra.utils import instantiate

    sweeper = config.hydra.sweeper
    name, storage = str(sweeper.study_name), instantiate(sweeper.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction=sweeper.direction, load_if_exists=True)
    ours = search_identity(config)
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is None:
        if study.trials:
            raise OtherExperiment(
                f"hydra.sweeper.study_name={name}: the study holds {len(study.trials)} trials of a search that did "
                f"not record its experiment (an earlier cl_bench); give this search another study_name"
            )
        study.set_user_attr(IDENTITY_ATTR, json.dumps(ours, sort_keys=True, default=str))
        return
    theirs = json.loads(recorded)
    keys = differing_keys({**theirs["experiment"], "searched": theirs["searched"]},
                          {**json.loads(json.dumps(ours["experiment"], default=str)), "searched": ours["searched"]})
    if keys:
        listed = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        raise OtherExperiment(
            f"hydra.sweeper.study_name={name}: the study is the search of another experiment (it differs in "
            f"{listed}); give this search another study_name, or leave it out for the search's own study"
        )
