"""Judge evaluation: how well the query-harm judges measure harm, and the ``search-gym judges`` command.

This floor sits above :mod:`search_gym.directions` (a latent guard is a direction read as a judge) and below the
trainers. The runtime judges, and the training of the bundled classifier that an env triggers on first use, stay
in :mod:`search_gym.safety`; the judges' data, mixture and evaluation rows in :mod:`search_gym.corpora.judge_data`.

- :mod:`.evaluation`: metrics per judge and data source (AUROC, TPR / FPR, pair accuracy, Brier / ECE),
  agreement between judges, the independent check, the markdown / JSON report, the first version's classifier
  and latent guards scored as judges.
- :mod:`.cli`: ``search-gym judges {data,train,evaluate}``.

Importing this package loads nothing else.
"""
