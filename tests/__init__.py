"""cl_bench's tests, laid out as the package: tests/<subpackage>/test_<module>.py tests
cl_bench/<subpackage>/<module>.py (test_reliability.py, test_run_folder.py, test_launchers.py: a
subpackage's behaviour across its modules); at the top, what spans the whole package: the experiment
configs, the two-cities run, the docs, packaging, the fast paths. What the tests share is in
tests/helpers/ (its __init__ lists it), the fixtures in tests/conftest.py."""
