"""``simsearch index``: bring a collection in line with a folder of images (``sync``)."""

from simsearch.indexing.sync import IndexConfig, IndexReport, choose_encoder, index_folder, load_model_arg

__all__ = ["IndexConfig", "IndexReport", "choose_encoder", "index_folder", "load_model_arg"]
