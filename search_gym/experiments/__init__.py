"""Experiments: pipelines on top of everything below them.

- :mod:`.demo`: play an agent over a vector env and summarise task, safety and timing (``search-gym demo``);
- :mod:`.evaluation`: the safety evaluation grid, agents x prompt sets x attacks (``search-gym eval``);
- :mod:`.misalignment_eval`: the general misalignment evaluation (``search-gym eval --suite misalignment``);
- :mod:`.study`: the reference study end to end (``search-gym study``).

All of them play episodes through :mod:`search_gym.rollout`.
"""
