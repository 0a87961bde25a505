"""``make bench``: does the two-process design pay? Ratios measured side by side in one run.

Every number the suite reports is a ratio of two timings (or memory peaks) taken in the same run
on the same machine, because absolute times on a shared machine are noise. The modules:

- :mod:`bench.config` — sizes and models of the CPU, CUDA and quick (smoke-test) profiles;
- :mod:`bench.extraction` — the full extract pipeline vs the teacher forward alone;
- :mod:`bench.training` — the student alone vs cached CustomKD vs KD with the teacher online
  (:mod:`bench.online`), and the customization epoch;
- :mod:`bench.memory` / :mod:`bench.worker` — peak memory per configuration and the allocator
  effect of ``GLIBC_TUNABLES``, each in a fresh subprocess;
- :mod:`bench.store_io` — feature read throughput and bytes on disk per view;
- :mod:`bench.contention` — how much CPU other processes took while something was timed;
- :mod:`bench.tables` — metrics, the printed table, ``bench/results/*.json`` and ``docs/benchmarks.md``.

Entry point: ``python -m bench.run`` (``make bench``; ``DEVICE=cuda`` on a GPU machine).
"""
