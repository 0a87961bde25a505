"""``customkd report`` (``make report``): every regime × method × seed on the embedded default, and ``customkd compare``:
chosen methods × seeds on any store. Both run ``customkd distill`` as a user would and write pages generated from
the numbers.

- :mod:`report.config`: what each runs (frozen dataclasses; the CLI's defaults).
- :mod:`report.jobs`: variants, regimes and jobs (one distill command line and its run folder each).
- :mod:`report.runner`: runs the jobs, reusing finished runs and resuming interrupted ones.
- :mod:`report.collect`: per-row numbers over seeds and each regime's shared setup, from the run folders.
- :mod:`report.compare`: the report's regimes, its extractions, docs/results.md and the README block.
- :mod:`report.store_compare`: ``customkd compare`` (``customkd.compare``), everything under ``--out``.
- :mod:`report.alignment`: how far each CustomKD student got toward its customized target.
- :mod:`report.results_page`: paired intervals and the report's page; :mod:`report.store_page`: compare's page.
- :mod:`report.figures`: learning curves and the feature-space figure.
"""
