"""The extract process: teachers, extraction into a feature store, and the ``cache`` commands.

What a store holds and how it is read, written, listed and replayed is the contract both processes share
(:mod:`contract`); the trainer imports only that and :mod:`common`, so teacher code stays on this side.
"""

__version__ = "0.1.0"
