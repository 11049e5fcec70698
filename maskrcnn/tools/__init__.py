"""Command-line tools: ``python -m maskrcnn.tools.check_dataset`` (decode and check a dataset)."""
