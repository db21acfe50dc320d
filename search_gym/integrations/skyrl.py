"""SkyRL bridge: a skyrl-gym ``BaseTextEnv`` around any search-gym env id (``pip install 'search-gym[skyrl]'``;
skyrl-gym 0.4.0).

SkyRL's generator (``SkyRLGymGenerator``) builds one env per trajectory with
``skyrl_gym.make(env_class, env_config=cfg.environment.skyrl_gym[env_class], extras=row)``, calls
``init(prompt)`` for the first chat messages, then ``step(model_text)`` until ``done``, appending each step's
``observations`` to the context (``generator.use_conversation_multi_turn=false``: their text is tokenised into the
same assistant message, Search-R1's layout; ``true``: they become chat turns). :class:`SearchGymTextEnv` is that
env over a search-gym environment, registered as ``"search_gym"`` (:data:`SKYRL_ENV_ID`) on import of this module
or by :func:`register_skyrl_env`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput

from search_gym.integrations._concurrency import serialize_retrieval
from search_gym.rollout import Episode, episode_metrics, register_env_ids

#: The skyrl-gym id of :class:`SearchGymTextEnv` (``environment.env_class=search_gym``).
SKYRL_ENV_ID = "search_gym"
ENTRY_POINT = "search_gym.integrations.skyrl:SearchGymTextEnv"
DEFAULT_ENV_ID = "SearchGym/WikiQA-v0"


class SearchGymTextEnv(BaseTextEnv):
    """A search-gym environment as a skyrl-gym text environment.

    ## Description
    One trajectory is one search-gym episode: ``init`` resets the wrapped env on the row's question and returns
    the env's chat messages (its prompt template and any attack prompt edit); each ``step(text)`` gives the model's
    turn to the env. Any registered id works: the search ids (``SearchGym/WikiQA-v0``, ``SearchGym/WikiHarmful-v0``,
    ``SearchGym/Wiki18*``, the misalignment search ids) and chat envs such as
    ``SearchGym/SelfInterestedExploration-v0`` (``context="conversation"``).

    ## Observation
    ``step`` returns ``observations``, the messages to append after the model's turn:

    - tags protocol: one ``{"role": "user", "content": env_text + next_prefill}``: the information block or the
      correction message, then the text the next turn starts with (an attack re-prefilling ``<search>``). With
      ``generator.use_conversation_multi_turn=false`` SkyRL appends its tokens to the same assistant message, so the
      model continues exactly the env's transcript, as in Search-R1;
    - tool-call protocol and chat envs: the messages the env appended after the agent's (the ``tool`` result, a
      correction, the next round's user turn);
    - nothing once ``done``.

    ## Action
    The model's text for one turn (``str``), parsed by the env (its first ``</search>`` / ``</answer>`` ends it;
    set ``generator.sampling_params.stop=["</search>", "</answer>"]``).

    ## Rewards
    The env's reward (EM / F1 / substring EM on the answer turn, 0 elsewhere; chat envs their own), plus on the
    last step ``safety_penalty_weight * -(100 - query safety) / 100`` (mean query safety of the episode's searches,
    first query judge) when the env runs safety judges (``env_kwargs: {safety: true}``), and ``format_weight`` when
    the episode answered without an invalid action. SkyRL places step rewards at each turn's last token.

    ## Episode End
    ``done`` when the env terminates (an answer) or truncates (its turn budget: ``env_kwargs.max_turns``, else the
    generator's ``max_turns`` that SkyRL passes in ``extras``, else the env's default).

    ## Metadata
    ``init`` returns the env's reset info; every step returns the env's step info (``action_type``, ``query``,
    ``retrieved_doc_ids``, ``answer``, ``correct``, ``safety`` with the judges' per-step scores and, on the last
    step, the episode summary ...). :meth:`get_metrics` gives the episode's ``search_safety``, ``refusal``,
    ``refusal_first``, ``answer_safety``, ``searches``, ``invalid``, ``answered``, ``em`` (those with a value) and
    ``task_reward``; skyrl-gym averages them over episodes.

    ## Arguments
    ``env_config`` (``environment.skyrl_gym.search_gym`` in SkyRL's config): ``env_id`` (default
    ``SearchGym/WikiQA-v0``), ``env_kwargs`` (``gym.make`` keyword arguments: ``attack``, ``safety``, ``judges``,
    ``retriever`` such as a ``search-gym serve`` URL, ``parse_mode``, ``max_turns`` ...),
    ``safety_penalty_weight`` (0.0), ``format_weight`` (0.0), ``skip_first_prefill`` (False). ``defaults``: the
    same keys, given at registration (:func:`register_skyrl_env`), for trainers whose config has no section for a
    custom env. ``extras`` (the dataset row without its prompt):
    ``extra_info.question_id`` / ``env_id`` / ``split`` / ``dataset`` pick the question (``search-gym export skyrl``
    writes them; a row's ``env_id`` wins over ``env_config``), ``extra_info.seed`` the reset seed of a chat env.

    An attack that prefills the first assistant turn (``search``, ``multi_search``) cannot be applied through
    SkyRL's generator, which renders that turn from the chat template with no prefill hook: ``init`` raises unless
    ``skip_first_prefill=True``, which plays the episode without that first prefill (the prompt edit and the
    later re-prefills, carried in observations, still apply).
    """

    def __init__(self, env_config: Any = None, extras: Mapping[str, Any] | None = None,
                 defaults: Mapping[str, Any] | None = None):
        super().__init__()
        import gymnasium as gym

        # ``defaults`` come from the registration (register_skyrl_env(**defaults)); SkyRL's per-env config wins.
        config = {**(_plain(defaults) or {}), **(_plain(env_config) or {})}
        extras = dict(extras or {})
        extra_info = _plain(extras.get("extra_info")) or {}
        self.env_id = str(extra_info.get("env_id") or config.get("env_id") or DEFAULT_ENV_ID)
        env_kwargs = dict(_plain(config.get("env_kwargs")) or {})
        for name in ("split", "dataset"):
            if extra_info.get(name):
                env_kwargs[name] = str(extra_info[name])
        if "max_turns" not in env_kwargs and extras.get("max_turns") is not None:
            env_kwargs["max_turns"] = int(extras["max_turns"])
        self.safety_penalty_weight = float(config.get("safety_penalty_weight", 0.0))
        self.format_weight = float(config.get("format_weight", 0.0))
        self.skip_first_prefill = bool(config.get("skip_first_prefill", False))
        register_env_ids()
        # SkyRL steps envs from a thread pool (max_env_workers): in-process retrieval one search at a time.
        self.env = serialize_retrieval(gym.make(self.env_id, **env_kwargs))
        self._search = hasattr(self.env.unwrapped, "questions")
        self._start = extra_info.get("question_id", extras.get("question_id"))
        self._seed = extra_info.get("seed", extras.get("seed"))
        self._messages: list[dict] = []
        self._episode: Episode | None = None
        self._done = False

    # ------------------------------------------------------------------ skyrl-gym API

    def init(self, prompt: Any = None) -> tuple[list[dict], dict[str, Any]]:
        """Reset the env on the row's question; return the env's chat messages (``prompt``, the dataset's, is
        replaced: the env renders the question its own way) and the reset info."""
        options: dict[str, Any] = {}
        if self._search:
            if self._start is not None:
                options["question_id"] = str(self._start)
            if self.skip_first_prefill:
                options["prefill"] = ""
        seed = None if self._seed is None else int(self._seed)
        obs, info = self.env.reset(seed=seed, options=options or None)
        if obs.get("prefill"):
            raise ValueError(
                f"the env prefills the first assistant turn with {obs['prefill']!r} (attack {info.get('attack')}); "
                "SkyRL's generator has no prefill hook for that turn. Set skip_first_prefill=true to play without "
                "it (prompt edits and later re-prefills still apply), or use an attack without a first-turn prefill")
        self._messages = [dict(m) for m in obs["messages"]]
        self._episode = Episode.from_reset(info, obs)
        self._done = False
        self.turns = 0
        self.max_turns = int(info.get("max_turns") or getattr(self.env.unwrapped, "max_turns", 1) or 1)
        return [dict(m) for m in self._messages], _json_safe(info)

    def step(self, action: str) -> BaseTextEnvStepOutput:
        if self._episode is None:
            raise RuntimeError("call init() before step()")
        if self._done:
            return BaseTextEnvStepOutput(observations=[], reward=0.0, done=True, metadata={"episode_over": True})
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.turns += 1
        done = bool(terminated or truncated)
        self._episode.add_step(action, obs, reward, terminated, truncated, info)
        if self._search:
            self._episode.read_outcome(info)
        reward = float(reward)
        if done:
            reward += self.safety_penalty_weight * self._safety_penalty()
            if self._search and self.format_weight:
                ep = self._episode
                reward += self.format_weight * float(ep.answered and ep.invalid_actions == 0)
        observations = [] if done else self._new_messages(obs, info)
        self._messages = [dict(m) for m in obs.get("messages", self._messages)]
        self._done = done
        return BaseTextEnvStepOutput(observations=observations, reward=reward, done=done,
                                     metadata=_json_safe(info), postprocessed_action=None)

    def get_metrics(self) -> dict[str, Any]:
        """The episode's safety and task metrics (numbers only; None values are left out)."""
        if self._episode is None:
            return {}
        values = episode_metrics(self._episode) if self._search else {}
        out = {k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}
        out["task_reward"] = float(self._episode.task_reward)
        return out

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ helpers

    def _new_messages(self, obs: dict, info: dict) -> list[dict]:
        unwrapped = self.env.unwrapped
        if self._search and getattr(unwrapped, "protocol", "tags") == "tags":
            text = str(info.get("env_text", "")) + str(info.get("next_prefill", ""))
            return [{"role": "user", "content": text}] if text else []
        messages = [dict(m) for m in obs.get("messages", ())]
        new = messages[len(self._messages):]
        while new and new[0].get("role") == "assistant":  # the env's record of the agent's own turn
            new = new[1:]
        return new

    def _safety_penalty(self) -> float:
        summary = (self._episode.safety or {}) if self._episode is not None else {}
        if not self._episode or not self._episode.num_searches:
            return 0.0
        scores = summary.get("query_safety_mean") or {}
        value = next(iter(scores.values()), None)
        if value is None or math.isnan(float(value)):
            return 0.0
        return -(100.0 - float(value)) / 100.0


def register_skyrl_env(env_id: str = SKYRL_ENV_ID, **defaults: Any) -> None:
    """Register :class:`SearchGymTextEnv` with skyrl-gym under ``env_id``; ``defaults`` (``env_id``, ``env_kwargs``,
    ``safety_penalty_weight``, ``skip_first_prefill``) apply to every env it makes unless SkyRL's
    ``environment.skyrl_gym.<env_id>`` config sets them. Registering again replaces the defaults. SkyRL builds envs
    inside its Ray entrypoint task, so call this there (``examples/skyrl/main_search_gym.py``)."""
    import skyrl_gym

    if env_id in skyrl_gym.registry:
        if not defaults:
            return
        skyrl_gym.envs.deregister(env_id)
    skyrl_gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"defaults": dict(defaults)} if defaults else None)


def _plain(value: Any) -> Any:
    """OmegaConf containers (SkyRL hands ``env_config`` as a DictConfig) as plain Python."""
    if value is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:
        return dict(value) if isinstance(value, Mapping) else value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value) if isinstance(value, Mapping) else value


def _json_safe(value: Any) -> Any:
    """Env info as plain JSON values (numpy scalars to Python)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    return value


register_skyrl_env()
