"""The low layer: what every other part of cl_bench shares and that imports nothing of cl_bench's."""
