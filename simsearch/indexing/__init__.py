"""``simsearch index``: bring a collection in line with a folder of images.

``plan`` diffs the folder against the collection (data: what to load, what to remove, the ids); ``sync`` runs
it: an engine (``simsearch.engines``) embeds, the run applies the results, commits checkpoints and re-types the
index at the end.
"""

from simsearch.indexing.plan import Plan, ToLoad, plan_sync
from simsearch.indexing.sync import IndexConfig, IndexReport, choose_encoder, index_folder, load_model_arg

__all__ = [
    "IndexConfig",
    "IndexReport",
    "Plan",
    "ToLoad",
    "choose_encoder",
    "index_folder",
    "load_model_arg",
    "plan_sync",
]
