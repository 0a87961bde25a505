"""The extract process: datasets, teachers, view sampling, and the Zarr feature store.

Only :mod:`featcache.store`, :mod:`featcache.views`, :mod:`featcache.datasets` and
:mod:`common.errors` are shared with the trainer; teacher code stays on this side.
Nothing is imported here so that ``import featcache.store`` stays light.
"""

__version__ = "0.1.0"
