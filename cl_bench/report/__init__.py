"""The report of a set of runs (`cl-bench-report`, and every sweep's end): reading run folders into entries, the
table (grouping, selection, labels), its Markdown, CSV and figure, and the notes on its Scores (make.py puts them
together). Above the engine; below the command line."""
