"""The documented import path of ``Collection`` (the code lives in ``simsearch.store.collection``)."""

from simsearch.store.collection import (
    SKIPPED_SCHEMA,
    Collection,
    Snapshot,
    embeddings_of,
    int64_column,
    meta_schema,
    meta_table,
    resolve_path,
)

__all__ = [
    "SKIPPED_SCHEMA",
    "Collection",
    "Snapshot",
    "embeddings_of",
    "int64_column",
    "meta_schema",
    "meta_table",
    "resolve_path",
]
