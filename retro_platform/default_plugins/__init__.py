"""Built-in plugins: loaded through the same path as third-party ones (see ``plugins.py``)."""
