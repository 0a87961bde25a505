"""The extract process: datasets, teachers, view sampling, and the Zarr feature store.

The trainer uses only the contract — :mod:`featcache.schema` (what a store holds) and
:mod:`featcache.fingerprint` (what it was made from), :mod:`featcache.listing`
(which image each row is), :mod:`featcache.store`
and :mod:`featcache.location` (reading it), :mod:`featcache.views` (view replay) and
:mod:`featcache.datasets` (the images) — and :mod:`common`; teacher code stays on this side.
Nothing is imported here so that ``import featcache.store`` stays light.
"""

__version__ = "0.1.0"
