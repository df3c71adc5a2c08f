"""What a run writes and how each record is read back: its folder's own records and lock (run_folder), its saved
config read as data (saved_config), checkpoint files, the metrics file, the summary and what it says the run is,
the figures, the provenance. Imports the low layer only; the engine writes these records, the report reads them."""
