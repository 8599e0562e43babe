"""Where a collection lives: ``collection`` (the folder: load, commit, lock, the rebuild beside it) and ``formats``
(the manifest's fields and the Parquet schemas)."""
