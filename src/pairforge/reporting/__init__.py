"""The report (`pairforge report`, and the last unit of `pairforge run`): sections.py finds what the stages
wrote and reads it through their typed results, plots.py draws the figures, page.py writes HTML + Markdown."""
