"""The engine: one run from a composed config (run), the training loop over tasks, parts and steps (trainer,
step) with its evaluation (evaluator, evaluation), saved state (trainer_state) and task-A cache, optimisers,
devices, threads and config validation. Imports the low layer, data, models, methods and records; not the
report, the loggers or the command line."""
