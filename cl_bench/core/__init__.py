"""The low layer, importing nothing of cl_bench's: errors, the names of the files runs write, files written
atomically and read back as data, job statuses, the experiment identity, the Score and accuracy kinds,
scenarios, per-sample gradients and the op-saving helpers, the saved state's format, the version."""
