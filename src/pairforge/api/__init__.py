"""pairforge's Python API, exported by the package itself (`pairforge.build_pairs`, ...): the functions the
`pairforge` command calls, on files or on data in memory. pairs.py (build_pairs, Pairs), data.py (generate,
revise, judge, rank), post_training.py (train, evaluate, report), recipes.py (run, RunResult), folders.py (the run
folder held while a call writes it). Nothing is imported here, so the command imports only what it uses."""
