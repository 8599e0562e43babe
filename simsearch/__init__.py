"""simsearch: offline image similarity search with encoders trained on your own images.

Importing this package is cheap: torch and faiss are imported by the modules that need them, so that
``simsearch --help`` stays fast.
"""

__version__ = "0.1.0"
