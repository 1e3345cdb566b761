"""Data coming in: CSV imports, the usage ingest and its group commit, and the demo portfolio."""
