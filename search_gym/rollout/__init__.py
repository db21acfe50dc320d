"""The one episode loop, its record and its metrics (the floor between the agents and everything that plays them).

- :mod:`.driver`: :class:`EpisodeDriver` (``RolloutCollector`` for ``SearchVectorEnv``, ``ChatRolloutCollector``
  for chat-message text envs, :func:`make_collector`): token in, token out, one loss mask; text-only actors go
  through the same loop with the token bookkeeping off. The demo, the eval grid, the trainers and the TRL bridge
  play their episodes here.
- :mod:`.episode`: :class:`Episode`, the one record (token view and text view).
- :mod:`.generators`: the :class:`Generator` protocol, :class:`HFGenerator`, :class:`AgentGenerator`.
- :mod:`.metrics`: :func:`episode_metrics` (one episode's EM, safety and refusal values) and
  :func:`batch_metrics` (the means the trainers log).
- :mod:`.recorder`: trajectory JSONL lines (:func:`trajectory_record`) and the :class:`TrajectoryRecorder` wrapper.

Importing this package loads no model library (torch loads with :class:`HFGenerator`).
"""

from search_gym.rollout.driver import (
    ChatRolloutCollector,
    EpisodeDriver,
    RolloutCollector,
    RolloutStats,
    is_search_env,
    make_chat_env,
    make_collector,
    make_rollout_env,
    register_env_ids,
)
from search_gym.rollout.episode import ENV, POLICY, PREFILL, Episode
from search_gym.rollout.generators import (
    AgentGenerator,
    Generation,
    GenerationRequest,
    Generator,
    HFGenerator,
    decode,
    encode,
)
from search_gym.rollout.metrics import METRICS, batch_metrics, episode_metrics
from search_gym.rollout.recorder import TrajectoryRecorder, dumps_record, trajectory_record

__all__ = [
    "ENV", "METRICS", "POLICY", "PREFILL", "AgentGenerator", "ChatRolloutCollector", "Episode", "EpisodeDriver",
    "Generation", "GenerationRequest", "Generator", "HFGenerator", "RolloutCollector", "RolloutStats",
    "TrajectoryRecorder", "batch_metrics", "decode", "dumps_record", "encode", "episode_metrics", "is_search_env",
    "make_chat_env", "make_collector", "make_rollout_env", "register_env_ids", "trajectory_record",
]
