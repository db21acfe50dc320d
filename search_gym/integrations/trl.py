"""TRL bridge: TRL's ``GRPOTrainer`` (trl 1.16) trains on SearchGym environments.

Two ways in, one per protocol of :class:`~search_gym.envs.SearchEnv`:

- **Tags protocol, multi-turn, token in / token out** — :class:`SearchRollout` is a ``rollout_func``. TRL calls
  ``rollout_func(prompts, trainer)`` with this process's slice of the batch (each prompt already repeated
  ``num_generations`` times by TRL's sampler); the bridge plays one episode per prompt with
  :class:`~search_gym.rollout.RolloutCollector`, the one episode loop (the same token buffers, masks and budgets as
  our own trainers) and returns ``prompt_ids``, ``completion_ids`` (the whole multi-turn response: policy tokens verbatim,
  information blocks, correction messages and prefills tokenised once), ``logprobs`` (the sampler's, 0 on
  environment tokens) and ``env_mask`` (1 = policy token, 0 = environment token; TRL 1.16 reads this key as its
  ``tool_mask`` and multiplies it into the loss mask). Every other key is an extra field TRL forwards to the reward
  functions, one value per completion: ``episode`` (the :class:`~search_gym.rollout.Episode`),
  ``task_reward``, ``correct``, ``answered``, ``invalid_actions``, ``num_searches``, ``searches``, ``safety``.
  Generation uses the model TRL trains (:class:`~search_gym.rollout.HFGenerator` over the unwrapped
  ``trainer.model_wrapped``), or any :class:`~search_gym.rollout.Generator` passed as ``generator=``.
- **Tool-call protocol** — :class:`SearchToolEnvironment` is an ``environment_factory`` class: TRL runs its own
  tool loop (parse the chat template's tool calls, call the method, append the result as a ``tool`` message, mask
  it). Its one tool, ``search(query)``, steps a ``SearchEnv(protocol="tool_call")``; the final assistant message is
  given to the same env as the answer when a reward function asks for the outcome, so EM, the turn budget and the
  safety judges are the env's own. The outcome is the same :class:`~search_gym.rollout.Episode` record (text view:
  every step's info, the rewards, the transcript).

Reward functions with TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]`` read the episode
from either path (the ``episode`` field, or TRL's ``environments`` kwarg): :func:`em_reward`,
:func:`task_reward`, :func:`format_reward`, :class:`SafetyPenalty` (:data:`safety_penalty`) and
:class:`RepresentationPenaltyReward` (token episodes only: it re-encodes the episode's tokens). TRL sums them with
``GRPOConfig.reward_weights``; penalties are returned as negative numbers, so weights stay positive.

Datasets: TRL hands ``rollout_func`` the prompts only, not the other columns, so the bridge finds each prompt's
question by the prompt text it rendered in :meth:`SearchRollout.dataset` (a prompt may also be a question id);
:func:`question_dataset` builds the same rows for the tool-call path, where ``reset`` reads ``question_id``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from search_gym.rollout import (
    Episode,
    Generator,
    HFGenerator,
    RolloutCollector,
    batch_metrics,
    make_rollout_env,
    register_env_ids,
)
from search_gym.trainers.shaping import RepresentationPenalty

#: Extra fields :class:`SearchRollout` returns next to TRL's required keys (forwarded to reward functions).
EXTRA_FIELDS = ("episode", "task_reward", "correct", "answered", "invalid_actions", "num_searches", "searches",
                "safety")

#: The tool result once the env's turn budget is spent (the env is not stepped again).
NO_MORE_SEARCHES = "No more searches: the turn budget is spent. Give the final answer inside <answer> and </answer>."


# ---------------------------------------------------------------------------------------------- datasets


def question_dataset(env: Any, *, question_ids: Sequence[str] | None = None, limit: int | None = None):
    """A ``datasets.Dataset`` of the env's questions in TRL's conversational format.

    Columns: ``prompt`` (the chat messages the env shows at reset, attack prompt edits included: exactly what the
    policy is asked), ``question_id`` and ``golden_answers``. ``env``: a ``SearchEnv`` (or a ``gym.make`` wrapper of
    one), a ``SearchVectorEnv`` (its first sub-env) or a :class:`SearchToolEnvironment`. The env is reset once per
    row (no retrieval), so its current episode is replaced.
    """
    import datasets

    env = _search_env(env)
    questions = env.questions
    if question_ids is not None:
        by_id = {q.id: q for q in questions}
        missing = [str(q) for q in question_ids if str(q) not in by_id]
        if missing:
            raise KeyError(f"question ids not in {env.dataset!r} split {env.split!r}: {missing[:5]}")
        questions = [by_id[str(q)] for q in question_ids]
    if limit is not None:
        questions = questions[: int(limit)]
    rows: dict[str, list] = {"prompt": [], "question_id": [], "golden_answers": []}
    for question in questions:
        obs, _ = env.reset(options={"question_id": question.id})
        rows["prompt"].append([dict(m) for m in obs["messages"]])
        rows["question_id"].append(question.id)
        rows["golden_answers"].append(list(question.golden_answers))
    return datasets.Dataset.from_dict(rows)


def _search_env(env: Any):
    """The ``SearchEnv`` behind any of the objects :func:`question_dataset` accepts."""
    if isinstance(env, SearchToolEnvironment):
        return env.env
    if hasattr(env, "envs"):  # a SearchVectorEnv
        return env.envs[0]
    return getattr(env, "unwrapped", env)


def prompt_key(prompt: Any) -> str:
    """The text that identifies a prompt: a string as it is, or the content of a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("a conversational prompt needs a user message")
    return _text(users[-1].get("content"))


def _text(content: Any) -> str:
    """Message content as text (typed content blocks joined)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


# ---------------------------------------------------------------------------------------------- rollout_func


def rollout_fields(episodes: Sequence[Episode], *, end_token_id: int | None = None,
                   fill_token_id: int | None = None) -> dict[str, list]:
    """TRL's ``rollout_func`` output for token episodes, one row per episode, in order.

    ``completion_ids`` is the episode's response (policy and environment tokens in order), ``env_mask`` its loss
    mask and ``logprobs`` its sampler log-probabilities (0 on environment tokens). With ``end_token_id`` (the
    tokenizer's EOS), an episode the environment ended (answered, or out of turns) gets that token appended as an
    environment token (mask 0): TRL treats a completion whose last id is not EOS / pad as cut by the length limit
    (``completions/clipped_ratio``, ``mask_truncated_completions``), which is then true exactly for episodes cut by
    the context budget (``budget_truncated``). A response with no token at all gets one ``fill_token_id`` (masked),
    as TRL reads each completion's last id.
    """
    out: dict[str, list] = {key: [] for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                                *EXTRA_FIELDS)}
    for ep in episodes:
        ids, logprobs, mask = list(ep.response_ids), list(ep.logprobs), list(ep.loss_mask)
        if end_token_id is not None and not ep.budget_truncated:
            ids, logprobs, mask = ids + [int(end_token_id)], logprobs + [0.0], mask + [0]
        if not ids:
            fill = fill_token_id if fill_token_id is not None else end_token_id
            if fill is None:
                raise ValueError("an episode has no response token: pass end_token_id or fill_token_id")
            ids, logprobs, mask = [int(fill)], [0.0], [0]
        out["prompt_ids"].append(list(ep.prompt_ids))
        out["completion_ids"].append(ids)
        out["logprobs"].append(logprobs)
        out["env_mask"].append(mask)
        out["episode"].append(ep)
        out["task_reward"].append(float(ep.task_reward))
        out["correct"].append(bool(ep.correct))
        out["answered"].append(bool(ep.answered))
        out["invalid_actions"].append(int(ep.invalid_actions))
        out["num_searches"].append(int(ep.num_searches))
        out["searches"].append(list(ep.searches))
        out["safety"].append(ep.safety)
    return out


class SearchRollout:
    """A ``rollout_func`` for ``trl.GRPOTrainer``: multi-turn SearchEnv episodes, token in / token out.

    Args:
        venv: a ``SearchVectorEnv`` in the tags protocol; default ``make_rollout_env(env_id, num_envs, **env_kwargs)``.
        env_id / num_envs / env_kwargs: the env built when ``venv`` is not given (``num_envs`` sub-envs play at
            once; more prompts are played in chunks).
        generator: None (default: :class:`HFGenerator` over the model TRL trains, sampling at the trainer's
            ``temperature`` / ``top_p``, inside TRL's ``unwrap_model_for_generation`` so DeepSpeed ZeRO-3 weights
            are gathered), a :class:`Generator`, or ``callable(trainer) -> Generator`` called once, e.g.
            ``lambda t: VLLMGenerator(t.model, tokenizer, model_path=...)``. Its ``sync_weights`` is called
            before the first rollout and after every optimiser step.
        few_shot, max_turn_tokens, max_prompt_tokens, max_obs_tokens: as :class:`RolloutCollector`.
        max_response_tokens: the response budget; default the trainer's ``max_completion_length`` (minus the end
            token), so TRL's ``dr_grpo`` normaliser and our budget agree.
        end_with_eos: append EOS to episodes the env ended (see :func:`rollout_fields`).
        seed: base seed (default the trainer's ``seed``); call ``k`` on process ``p`` of ``n`` samples with
            ``seed + k * n + p``, so no two processes draw the same samples for the copies of a prompt they share.
        log_metrics: log :func:`~search_gym.rollout.batch_metrics` of every batch into TRL's metrics
            (``search/em``, ``search/format_valid``, ``search/searches_per_episode``, ``safety/search_safety``...).

    ``last_episodes`` holds the latest batch's episodes.
    """

    def __init__(self, venv: Any = None, *, env_id: str = "SearchGym/WikiQA-v0", num_envs: int = 8,
                 generator: Generator | Callable[[Any], Generator] | None = None, few_shot: int = 0,
                 max_turn_tokens: int = 128, max_prompt_tokens: int = 1024, max_response_tokens: int | None = None,
                 max_obs_tokens: int = 512, end_with_eos: bool = True, seed: int | None = None,
                 log_metrics: bool = True, **env_kwargs: Any):
        if venv is None:
            venv = make_rollout_env(env_id, num_envs, **env_kwargs)
        elif env_kwargs:
            raise ValueError(f"env keyword arguments {sorted(env_kwargs)} only apply when the bridge builds the env")
        if venv.envs[0].protocol != "tags":
            raise ValueError("SearchRollout plays the tags protocol; for protocol='tool_call' pass "
                             "environment_factory=SearchToolEnvironment.factory(...) to GRPOTrainer instead")
        self.venv = venv
        self.generator = generator
        self.few_shot, self.max_turn_tokens, self.max_prompt_tokens = few_shot, max_turn_tokens, max_prompt_tokens
        self.max_response_tokens, self.max_obs_tokens = max_response_tokens, max_obs_tokens
        self.end_with_eos, self.seed, self.log_metrics = end_with_eos, seed, log_metrics
        self.last_episodes: list[Episode] = []
        self._collector: RolloutCollector | None = None
        self._ids_by_prompt: dict[str, str] = {}
        self._known_ids: set[str] | None = None
        self._calls = 0
        self._synced_step: int | None = None  # the trainer step whose weights the generator has

    # ------------------------------------------------------------------ data

    def dataset(self, *, question_ids: Sequence[str] | None = None, limit: int | None = None):
        """The training set for ``GRPOTrainer(train_dataset=...)`` (:func:`question_dataset` of this env); its
        prompts are remembered so that :meth:`__call__` knows each prompt's question."""
        data = question_dataset(self.venv, question_ids=question_ids, limit=limit)
        for prompt, qid in zip(data["prompt"], data["question_id"]):
            self._ids_by_prompt[prompt_key(prompt)] = qid
        return data

    def question_ids(self, prompts: Sequence[Any]) -> list[str]:
        """The question of each prompt: a prompt of :meth:`dataset`, or a question id of the env's source."""
        env = self.venv.envs[0]
        out = []
        for prompt in prompts:
            key = prompt_key(prompt)
            qid = self._ids_by_prompt.get(key)
            if qid is None:
                if self._known_ids is None:
                    self._known_ids = {q.id for q in env.questions}
                if key not in self._known_ids:
                    raise KeyError(f"prompt {key[:80]!r} is neither a prompt of SearchRollout.dataset() nor a question "
                                   f"id of {env.dataset!r} split {env.split!r}; build the train dataset with "
                                   "rollout.dataset()")
                qid = key
            out.append(qid)
        return out

    # ------------------------------------------------------------------ TRL entry point

    def __call__(self, prompts: list, trainer: Any) -> dict[str, list]:
        """Play one episode per prompt (in order) and return TRL's rollout dict (see the module docstring)."""
        args, accelerator = trainer.args, trainer.accelerator
        question_ids = self.question_ids(prompts)
        base = args.seed if self.seed is None else self.seed
        seed = base + self._calls * accelerator.num_processes + accelerator.process_index
        self._calls += 1
        if self.generator is None:
            from trl.models import unwrap_model_for_generation

            _check_hf_sampling(args)
            with unwrap_model_for_generation(trainer.model_wrapped, accelerator,
                                             gather_deepspeed3_params=args.ds3_gather_for_generation,
                                             gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model:
                episodes = self._play(trainer, self._collector_for(trainer, model), question_ids, seed)
        else:
            episodes = self._play(trainer, self._collector_for(trainer, None), question_ids, seed)
        self.last_episodes = episodes
        if self.log_metrics:
            _log_episode_metrics(trainer, episodes)
        tokenizer = self._collector.tokenizer
        return rollout_fields(episodes, end_token_id=tokenizer.eos_token_id if self.end_with_eos else None,
                              fill_token_id=tokenizer.pad_token_id)

    def _play(self, trainer: Any, collector: RolloutCollector, question_ids: list[str], seed: int) -> list:
        # TRL never calls our generator's sync_weights: push the policy's weights once per optimiser step (and on the
        # first call, which may follow a resume), as TRL does for its own vLLM engine. HFGenerator's is a no-op.
        step = trainer.state.global_step
        if self._synced_step != step:
            collector.generator.sync_weights()
            self._synced_step = step
        return collector.collect(question_ids, 1, seed=seed)

    def _collector_for(self, trainer: Any, model: Any) -> RolloutCollector:
        """The collector, built on the first call (and again if TRL hands over another model object)."""
        current = self._collector
        if current is not None and (model is None or current.generator.model is model):
            return current
        if model is not None:
            tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
            was_training = model.training
            generator: Generator = HFGenerator(model, tokenizer, temperature=trainer.args.temperature,
                                               top_p=trainer.args.top_p)
            # HFAgent puts the model in eval mode when built; TRL's step runs in train mode (its loss and metrics
            # read model.training), so give the mode back.
            model.train(was_training)
        elif callable(self.generator) and not hasattr(self.generator, "generate"):
            generator = self.generator(trainer)
        else:
            generator = self.generator  # type: ignore[assignment]
        budget = self.max_response_tokens
        if budget is None:
            limit = trainer.args.max_completion_length or 1024
            budget = max(1, int(limit) - int(self.end_with_eos))  # room for the end token TRL will see
        self._collector = RolloutCollector(
            self.venv, generator, few_shot=self.few_shot, max_turn_tokens=self.max_turn_tokens,
            max_prompt_tokens=self.max_prompt_tokens, max_response_tokens=budget, max_obs_tokens=self.max_obs_tokens)
        return self._collector


def _check_hf_sampling(args: Any) -> None:
    """The default generator samples with temperature and top_p only: refuse settings it would silently ignore."""
    if getattr(args, "use_vllm", False):
        raise ValueError("use_vllm=True with SearchRollout's default HF generator: TRL's vLLM engine would load and "
                         "sit idle. Set use_vllm=False, or pass generator= a Generator over trainer.vllm_generation")
    ignored = []
    if getattr(args, "top_k", 0) not in (None, 0, -1):
        ignored.append(f"top_k={args.top_k}")
    if getattr(args, "min_p", None) not in (None, 0.0):
        ignored.append(f"min_p={args.min_p}")
    if getattr(args, "repetition_penalty", 1.0) not in (None, 1.0):
        ignored.append(f"repetition_penalty={args.repetition_penalty}")
    if getattr(args, "generation_kwargs", None):
        ignored.append(f"generation_kwargs={args.generation_kwargs}")
    if ignored:
        raise ValueError(f"SearchRollout's HF generator samples with temperature and top_p only; it cannot honour "
                         f"{', '.join(ignored)} (the recorded log-probabilities would not be the sampler's). Unset "
                         "them or pass generator=")


def _log_episode_metrics(trainer: Any, episodes: Sequence[Episode]) -> None:
    """Task and safety means into TRL's logged metrics (averaged over processes and logging steps by TRL)."""
    log = getattr(trainer, "_log_metric", None)  # the hook TRL hands reward functions as ``log_metric``
    if log is None:
        return
    for key, value in batch_metrics(episodes).items():
        group, name = key.split("/", 1)
        log(f"search/{name}" if group == "charts" else key, float(value))


# ---------------------------------------------------------------------------------------------- environment_factory


class SearchToolEnvironment:
    """TRL ``environment_factory`` class over ``SearchEnv(protocol="tool_call")``: one instance per rollout.

    TRL exposes every public method but ``reset`` as a tool, so the class has exactly one, :meth:`search`; the rest
    is private or a property. There is no ``get_reward``: TRL calls it without the completion, and the final answer
    lives only in the completion's last assistant message. The reward functions of this module give that message to
    the env instead (``environments`` kwarg), once per episode.

    Pass ``environment_factory=SearchToolEnvironment.factory(**env_kwargs)`` (or ``env_id=...``) and a
    :func:`question_dataset` train set: ``reset`` reads the row's ``question_id``, so the ``num_generations`` copies
    of a prompt are the same question. The tokenizer's chat template must render tool calls and be one TRL knows how
    to parse (Qwen2.5/3, Llama 3.1/3.2, ...); set ``max_tool_calling_iterations`` below the env's ``max_turns`` to
    leave the policy a turn for its answer.
    """

    def __init__(self, env: Any = None, **env_kwargs: Any):
        from search_gym.envs import SearchEnv

        if env is None:
            env = SearchEnv(protocol="tool_call", **env_kwargs)
        elif env_kwargs:
            raise ValueError("pass either an env or keyword arguments to build one")
        env = getattr(env, "unwrapped", env)
        if env.protocol != "tool_call":
            raise ValueError("SearchToolEnvironment needs protocol='tool_call'; the tags protocol trains through "
                             "SearchRollout (rollout_func)")
        self.env = env
        self._episode: Episode | None = None  # the episode being played (its text view)
        self._outcome: Episode | None = None
        self._over = True

    @classmethod
    def factory(cls, env_id: str | None = None, **env_kwargs: Any) -> Callable[[], SearchToolEnvironment]:
        """A zero-argument factory for ``GRPOTrainer(environment_factory=...)``: ``SearchEnv(protocol="tool_call",
        **env_kwargs)``, or ``gym.make(env_id, protocol="tool_call", **env_kwargs)`` for a registered id."""
        if env_id is None:
            return lambda: cls(**env_kwargs)
        import gymnasium as gym

        register_env_ids()
        return lambda: cls(gym.make(env_id, protocol="tool_call", **env_kwargs))

    def reset(self, **row: Any) -> str | None:
        """Start the episode of the row's ``question_id``. Returns None when the row's prompt is already the env's
        prompt (a :func:`question_dataset` row), else the env's prompt, which TRL appends to the last user message."""
        qid = row.get("question_id")
        if qid is None:
            raise ValueError("SearchToolEnvironment.reset needs a question_id column: build the train dataset with "
                             "question_dataset(...) so every generation of a prompt plays the same question")
        obs, info = self.env.reset(options={"question_id": str(qid)})
        self._episode, self._outcome, self._over = Episode.from_reset(info, obs), None, False
        text = _text(obs["messages"][-1]["content"])
        prompt = row.get("prompt")
        return None if prompt is not None and prompt_key(prompt) == text else text

    def search(self, query: str) -> str:
        """Search Wikipedia and return the top passages for the query.

        Args:
            query: The search query.

        Returns:
            The top passages, one per line, as "Doc i(Title: title) text".
        """
        if self._over:
            return NO_MORE_SEARCHES
        call = json.dumps({"name": "search", "arguments": {"query": query}}, ensure_ascii=False)
        self._step(f"<tool_call>{call}</tool_call>")
        return str(self._episode.infos[-1].get("env_text", ""))

    @property
    def outcome(self) -> Episode | None:
        """The episode's outcome once a reward function has finished it (None before)."""
        return self._outcome

    def _step(self, action: str) -> None:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._episode.add_step(action, obs, reward, terminated, truncated, info)
        self._over = bool(terminated or truncated)

    def _finish(self, completion: Any) -> Episode:
        """Give the completion's final assistant message to the env as the answer (once) and return the outcome.

        A completion that ends on a tool call (TRL's tool loop stopped: iteration limit or length) has no answer:
        the episode is unanswered (reward 0).
        """
        if self._outcome is not None:
            return self._outcome
        final = _final_text(completion)
        if final is not None and not self._over:
            self._step(final)
        episode = self._episode
        if episode.infos:  # none when the policy never called a tool nor answered
            episode.read_outcome(episode.infos[-1])
        episode.truncated = not episode.terminated  # an episode the env did not end is cut short
        self._outcome = episode
        return self._outcome


def _final_text(completion: Any) -> str | None:
    """The text a completion ends on: a plain-string completion, or a last assistant message without tool calls."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return None
    last = completion[-1]
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return None
    return _text(last.get("content"))


# ---------------------------------------------------------------------------------------------- reward functions


def episodes_of(completions: Sequence[Any] | None, kwargs: dict) -> list:
    """The episodes a reward function scores: the ``episode`` field of :class:`SearchRollout`, or TRL's
    ``environments`` (:class:`SearchToolEnvironment` instances, finished here with their completions)."""
    episodes = kwargs.get("episode")
    if episodes is not None:
        return list(episodes)
    environments = kwargs.get("environments")
    if environments is not None:
        if completions is None or len(completions) != len(environments):
            raise ValueError("one completion per environment expected")
        return [env._finish(c) for env, c in zip(environments, completions)]
    raise ValueError("these reward functions score search-gym episodes: train with rollout_func=SearchRollout(...) "
                     "or environment_factory=SearchToolEnvironment.factory(...)")


def em_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """1.0 when the episode's answer exactly matches a gold answer (SQuAD normalisation, the env's EM), else 0.0;
    unanswered and truncated episodes score 0."""
    return [float(bool(ep.correct)) for ep in episodes_of(completions, kwargs)]


def task_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """The env's own reward for the episode (its ``reward`` metric: em, f1 or substring_em); 0 when unanswered."""
    return [float(ep.task_reward) for ep in episodes_of(completions, kwargs)]


def format_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
    """1.0 when the episode followed the protocol throughout (answered, no invalid action), else 0.0: the
    ``charts/format_valid`` rule of :func:`~search_gym.rollout.batch_metrics`.

    In the tool-call protocol a final message without a tool call is the answer (its ``<answer>`` tags, else the
    whole text), so there this reward only separates empty or malformed turns and episodes that never answer."""
    return [float(ep.answered and ep.invalid_actions == 0) for ep in episodes_of(completions, kwargs)]


_SAFETY_AGGREGATES = {"mean": "query_safety_mean", "min": "query_safety_min", "first": "query_safety_first"}


class SafetyPenalty:
    """``-(100 - s) / 100`` in [-1, 0], ``s`` the query safety (0-100, 100 = safe) of the episode's searches, from the
    env's safety summary (``info["safety"]["episode"]``; build the env with ``safety=True`` or ``judges=[...]``).

    ``aggregate``: ``"mean"`` over the episode's queries, ``"min"`` (the worst query) or ``"first"``. ``judge``: the
    query judge to read (default the env's first one). An episode without a search scores 0 (nothing was sent to
    the search engine); one whose summary or score is missing (a judge error, an episode cut by the context budget
    before the env summarised it) scores None, which TRL leaves out of the sum for that completion.
    """

    def __init__(self, aggregate: str = "mean", judge: str | None = None, name: str = "safety_penalty"):
        if aggregate not in _SAFETY_AGGREGATES:
            raise ValueError(f"aggregate must be one of {sorted(_SAFETY_AGGREGATES)}, not {aggregate!r}")
        self.aggregate, self.judge, self.__name__ = aggregate, judge, name
        self._warned = False

    def __call__(self, prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for ep in episodes_of(completions, kwargs):
            if not ep.num_searches:
                out.append(0.0)
                continue
            scores = (ep.safety or {}).get(_SAFETY_AGGREGATES[self.aggregate])
            if not isinstance(scores, dict) or not scores:
                self._warn_missing(ep)
                out.append(None)
                continue
            value = scores.get(self.judge) if self.judge is not None else next(iter(scores.values()))
            out.append(None if value is None or math.isnan(float(value)) else -(100.0 - float(value)) / 100.0)
        return out

    def _warn_missing(self, ep: Any) -> None:
        if not self._warned and not getattr(ep, "budget_truncated", False):
            warnings.warn("safety_penalty: an episode with searches has no safety summary; build the env with "
                          "safety=True (or judges=[...])", RuntimeWarning, stacklevel=3)
            self._warned = True


#: The default :class:`SafetyPenalty` (mean query safety of the first query judge).
safety_penalty = SafetyPenalty()


class RepresentationPenaltyReward:
    """``-lambda * p(h)`` per episode: the representation-guided penalty of
    :class:`~search_gym.trainers.shaping.RepresentationPenalty` (``lambda`` = its ``coef``; ``p`` at the first
    ``<search>`` or the mean over searches, read by its ``reader``, the frozen instruction-tuned model by default).
    With the task reward at weight 1 next to it, TRL's sum is the paper's ``r_task - lambda * p``.

    Token episodes only (``rollout_func=SearchRollout(...)``): the penalty re-encodes the episode's own tokens. The
    episodes get ``projection`` / ``penalty`` set as in our trainers; ``safety/projection`` is logged.
    """

    def __init__(self, penalty: RepresentationPenalty, name: str = "representation_penalty"):
        self.penalty, self.__name__ = penalty, name

    def __call__(self, prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
        episodes = kwargs.get("episode")
        if episodes is None:
            raise ValueError("the representation penalty reads token episodes: train with rollout_func=SearchRollout()")
        values = self.penalty.apply(list(episodes))
        log = kwargs.get("log_metric")
        measured = [v for v in values if v is not None]
        if log is not None and measured:
            log("safety/projection", float(sum(measured) / len(measured)))
        return [-float(ep.penalty) for ep in episodes]
