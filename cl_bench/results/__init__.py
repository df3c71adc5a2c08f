"""What a run produces and how it is read: the metrics file, the Score and the accuracy matrices
(metrics), the run's summary, the figures, the experiment identity that groups runs, the provenance,
and the report (`cl-bench-report`). May import the engine's records (run folders, the safety check of
saved configs, result types); not the command line."""
