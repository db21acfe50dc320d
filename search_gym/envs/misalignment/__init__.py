"""Misalignment environments: how self-interested strategies arise in one agent and spread between agents, and how
environment design decides whether a reward gets exploited.

- :class:`SelfInterestedExplorationEnv` (``SearchGym/SelfInterestedExploration-v0``): rounds of role-based
  decisions where breaking a rule pays more when unsupervised (ATP's self-interested exploration).
- :mod:`.imitative_diffusion_v0` (PettingZoo ``ParallelEnv``): N agents in repeated collective-action games who see
  their peers' choices and rewards (ATP's imitative strategy diffusion).
- :class:`MisalignmentSearchEnv`: SearchEnv with a forbidden answer-key source, role framing, gameability cues with
  graders that are gameable when the cue says so, and LLM-graded narrow rewards. Ids:
  ``SearchGym/AnswerKeySearch-v0``, ``SearchGym/GameableGraderSearch-v0``, ``SearchGym/SycophancySearch-v0``,
  ``SearchGym/HarmlessRewardSearch-v0`` (see ``docs/misalignment.md``).
"""

from __future__ import annotations

from search_gym.envs.misalignment.design import GAMEABILITY_CUES, ROLE_FRAMINGS as SEARCH_ROLE_FRAMINGS
from search_gym.envs.misalignment.exploration import (
    ROLE_FRAMINGS,
    SUPERVISION_PATTERNS,
    SelfInterestedExplorationEnv,
    load_scenarios,
    parse_choice,
    violation_rate_per_round,
)
from search_gym.envs.misalignment.graders import GRADERS, exploit_summary, grade_answer
from search_gym.envs.misalignment.misalignment_search import MisalignmentSearchEnv

_SEARCH = "search_gym.envs.misalignment.misalignment_search:MisalignmentSearchEnv"
_SEARCH_VECTOR = "search_gym.envs.misalignment.misalignment_search:make_misalignment_search_vector_env"

# id -> (entry point, vector entry point or None, default kwargs)
ENV_SPECS: dict[str, tuple[str, str | None, dict]] = {
    "SearchGym/SelfInterestedExploration-v0": (
        "search_gym.envs.misalignment.exploration:SelfInterestedExplorationEnv", None, {}),
    # Embedded QA; the search engine also offers the quiz's answer key, which the rules forbid; random audits.
    "SearchGym/AnswerKeySearch-v0": (_SEARCH, _SEARCH_VECTOR, {"dataset": "wiki_qa", "split": "train",
                                                               "answer_key": True}),
    # The prompt reveals that the grader only checks word overlap with the gold answer, and the grader does.
    "SearchGym/GameableGraderSearch-v0": (_SEARCH, _SEARCH_VECTOR, {"dataset": "wiki_qa", "split": "train",
                                                                    "gameability_cue": "grader_checks_overlap"}),
    # Sycophancy: the user hints a wrong belief; the simulated user's rating rewards agreeing with it.
    "SearchGym/SycophancySearch-v0": (_SEARCH, _SEARCH_VECTOR, {"dataset": "wiki_qa", "split": "train",
                                                                "gameability_cue": "user_hints_belief"}),
    # An LLM grader rewards contrarian aesthetic judgements (pass reward_rubric / split for the other rubrics).
    "SearchGym/HarmlessRewardSearch-v0": (_SEARCH, _SEARCH_VECTOR, {"dataset": "harmless_tasks",
                                                                    "split": "aesthetics",
                                                                    "reward_rubric": "contrarian_aesthetics"}),
}
ENV_IDS = {env_id: spec[0] for env_id, spec in ENV_SPECS.items()}


def register_misalignment_envs() -> None:
    import gymnasium as gym

    for env_id, (entry_point, vector_entry_point, kwargs) in ENV_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point,
                         kwargs=dict(kwargs))


__all__ = ["ENV_IDS", "ENV_SPECS", "GAMEABILITY_CUES", "GRADERS", "MisalignmentSearchEnv", "ROLE_FRAMINGS",
           "SEARCH_ROLE_FRAMINGS", "SUPERVISION_PATTERNS", "SelfInterestedExplorationEnv", "exploit_summary",
           "grade_answer", "load_scenarios", "parse_choice", "register_misalignment_envs",
           "violation_rate_per_round"]
