"""Run loggers: where a run's rows and summary go besides its metrics file (which is always written)."""
