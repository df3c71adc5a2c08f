"""The command line and the Hydra glue: `cl-bench` (app), the sweep callbacks (the check before a
sweep, the report and exit code after it), `cl-bench-report`'s argument parsing, Optuna's storage.
May import everything else; nothing else imports it (conf/ names its callbacks)."""
