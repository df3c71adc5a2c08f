"""What the tests share, one module per kind (import from the module, e.g. `from tests.helpers.cli import cl_bench`):

- config:  `compose_config`, the one way the tests compose conf/config.yaml; TINY (`+debug=tiny`)
- runs:    `tiny_run`, a tiny run in-process into a run folder; COMPARED, the summary keys of a result
- cli:     `cl_bench`, the command line in a subprocess as a user runs it
- data:    data on disk: a small MNIST in IDX files, image folders, a JPEG that fails to decode
- harness: tiny tensor tasks, a seeded MLP, a method's TrainContext, for unit tests of methods
- devices: DEVICES, the CPU and (the GPU tier) CUDA, to parametrize a test with; a run's overrides on one
- methods: EVERY_METHOD, every method of conf/method/ (and a few combinations) with a scenario it is defined in
- plugins: test-only plug-ins reached through the config's `_target_`s (re-exported here, so that
  `logger._target_=tests.helpers.SignalAtRow` and `method._target_=tests.helpers.NaNAtStep` name them)

tests/conftest.py holds the fixtures built on these.
"""

from tests.helpers.plugins import HostReadInStep, NaNAtStep, SignalAtRow, TermNamed

__all__ = ["HostReadInStep", "NaNAtStep", "SignalAtRow", "TermNamed"]
