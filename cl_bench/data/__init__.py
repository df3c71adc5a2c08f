"""Task sequences: sources of labelled images and the builders that cut them into tasks."""
