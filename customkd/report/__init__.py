"""``customkd report`` (``make report``): every regime × method × seed on the embedded default, run through
the CLI as a user would, aggregated into docs/results.md, figures and the README's headline table.

- :mod:`report.config`: what the report runs (one frozen dataclass; the CLI's defaults).
- :mod:`report.compare`: plan, extract once per teacher, run, collect.
- :mod:`report.alignment`: how far each CustomKD student got toward its customized target.
- :mod:`report.results_page`: paired intervals and the markdown page.
- :mod:`report.figures`: learning curves and the feature-space figure.
"""
