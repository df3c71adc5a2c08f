"""The command line and the Hydra glue: `cl-bench` (app), the callbacks (the folders checked before a run or a
sweep, the sweep's report and exit code after it: sweep_end), `cl-bench-report`'s argument parsing, Optuna's
study, the SLURM launcher. May import everything else; nothing else imports it (conf/ names its callbacks)."""
