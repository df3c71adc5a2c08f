"""cl_bench's Hydra configs, installed as the package `cl_bench.conf` (pyproject.toml maps it onto this
folder): `cl-bench` reads them through the package, so an installed wheel needs no checkout."""
