"""The engine: one run from a composed config (run), its folder's records and lock (run_folder), the
training loop over tasks and steps (trainer) with its evaluation, state and task-A cache parts,
scenarios, optimisers, devices, checkpoints, config validation and the safety check of saved configs.
May import data, models, methods and results; not the command line."""
