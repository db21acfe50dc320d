"""The trainers' names for the episode loop of :mod:`search_gym.rollout` (the floor below): ``TokenEpisode`` is its
:class:`~search_gym.rollout.episode.Episode`, ``episode_metrics`` the batch means the trainers log
(:func:`~search_gym.rollout.metrics.batch_metrics`)."""

from search_gym.rollout import ENV, POLICY, PREFILL, AgentGenerator, ChatRolloutCollector, EpisodeDriver  # noqa: F401
from search_gym.rollout import Generation, GenerationRequest, Generator, HFGenerator, RolloutCollector  # noqa: F401
from search_gym.rollout import decode, encode, is_search_env, make_chat_env, make_collector  # noqa: F401
from search_gym.rollout import make_rollout_env  # noqa: F401
from search_gym.rollout import Episode as TokenEpisode  # noqa: F401
from search_gym.rollout import batch_metrics as episode_metrics  # noqa: F401
from search_gym.rollout.generators import search_tag_ends  # noqa: F401
