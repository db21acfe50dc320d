"""Bridges from search-gym to other training engines; each sits on top of ``search_gym.trainers``.

- :mod:`search_gym.integrations.trl`: TRL's ``GRPOTrainer`` trains on SearchGym environments (a ``rollout_func`` for
  multi-turn tag-protocol episodes, reward functions, an ``environment_factory`` for the tool-call protocol).

Nothing is imported here, so ``import search_gym.integrations`` never loads an engine that is not installed.
"""
