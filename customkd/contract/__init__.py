"""The contract both processes share: what a feature store holds and how to read it.

``featcache`` (extract) writes stores and ``trainer`` (distill) reads them; each imports from here, never from the
other. :mod:`contract.schema` says what a store holds (arrays, layout, manifest, data-spec grammar) and
:mod:`contract.fingerprint` what it was made from; :mod:`contract.listing` says which image each row is and holds
the one staleness check; :mod:`contract.store` opens, validates and reads a store, on the storage of
:mod:`contract.storage` at the places of :mod:`contract.location`; :mod:`contract.views` draws and replays the
augmented views; :mod:`contract.datasets` lists a dataset and :mod:`contract.images` reads its images. Nothing here
knows teachers or students, and nothing is imported here so that ``import contract.store`` stays light.
"""
