"""Multi-round training (paper-notes §6): score the training set with the frozen model, draw a
harder-than-average subset, train again on it.

    config.py     the `multi_round:` config section (MultiRoundConfig)
    sampling.py   the sampling math: softmax probabilities, Gumbel top-k, unit -> sample indices (pure numpy)
    scoring.py    `pangu-pro score`: per-batch and per-sample losses, data parallel, resumable
    selection.py  `pangu-pro select`: scores file -> next round's index file (.npy)
    driver.py     `pangu-pro rounds`: train -> score -> select -> train ..., each stage recorded in a state file
    commands.py   the CLI of the three commands

docs/multi_round.md describes the files and the choices made.
"""
