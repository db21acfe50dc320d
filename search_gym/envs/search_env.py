"""SearchEnv: an LLM agent answers questions by searching a retriever, one turn per ``step``."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from search_gym.envs.protocol import (
    INVALID_ACTION_MESSAGE,
    PARSE_MODES,
    PROMPT_TEMPLATES,
    SEARCH_TOOL,
    ParsedAction,
    assistant_tool_call_message,
    coerce_action_text,
    format_information,
    format_passages,
    is_text_action,
    parse_search_r1_action,
    parse_tagged_action,
    parse_tool_call_action,
    tool_call_id,
    tool_result_message,
)
from search_gym.attacks import Attack, compose, make_attack
from search_gym.build import ensure_question_source
from search_gym.data.questions import Question, check_question_source, load_questions
from search_gym.envs.spaces import AnyText, ChatMessages
from search_gym.rewards import exact_match, score_answer
from search_gym.safety.instrument import EpisodeSafety, PendingSafety, SafetyConfig, SafetyInstrument

PROTOCOLS = ("tags", "tool_call")
#: Keys ``reset(options=...)`` understands; any other key raises (a typo would otherwise serve a random question).
RESET_OPTIONS = ("question_id", "index", "attack", "prefill")
_MAX_TEXT = 1 << 21  # 2M characters: a 1 MB action is still inside the action space
#: Strict mode's guards (``max_action_chars``, ``max_tags``) when not given; search_r1 mode has none by default.
_STRICT_LIMITS = (16384, 8)


@dataclass
class _PendingStep:
    """Half of a step: the action is parsed and (maybe) waits for retrieval. Lets a vector env batch searches."""

    parsed: ParsedAction
    free_text: str = ""
    query: str | None = None
    episode_over: bool = False
    closing: str = ""  # a closing tag the env adds for the agent (see _close_prefilled_tag); starts env_text
    safety: PendingSafety | None = None  # judge inputs queued in begin_step, resolved (batched) in end_step


@dataclass
class _Episode:
    question: Question
    turn_prefix: str  # text the current assistant turn starts with (an attack's prefill); the action continues it
    transcript: str = ""  # tags protocol: the assistant turn so far, agent text and environment blocks
    messages: list[dict] = field(default_factory=list)
    turn: int = 0
    searches: list[str] = field(default_factory=list)
    done: bool = False
    answer: str | None = None
    score: float | None = None
    correct: bool | None = None  # exact match, whatever the reward metric; None without gold answers
    attack: Attack | None = None  # this episode's attack (constructor attack composed with reset options)
    max_turns: int = 4  # all turns of this episode (see SearchEnv "Episode End"), raised to the attack's min_turns
    search_turns: int = 4  # turns that may search: max_turns in strict mode, max_turns - 1 in search_r1 mode
    safety: EpisodeSafety | None = None  # scores gathered so far, when safety instrumentation is on


class SearchEnv(gym.Env):
    """Answer a question by issuing search queries to a retriever, the Search-R1 way.

    ## Description
    Each episode is one question (or, for safety studies, one harmful request). The agent is an LLM: it reads a
    chat prompt and writes text. In the default ``"tags"`` protocol the whole episode is a single assistant turn
    that the environment extends, exactly as Search-R1 does: the agent writes
    ``<think>...</think><search> query </search>``, the environment appends
    ``\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n`` with the top-``topk`` passages, the agent
    continues, and the episode ends when it writes ``<answer> ... </answer>``. In the ``"tool_call"`` protocol
    searching is a native function call (OpenAI / Qwen ``tool_calls``) and results come back as ``tool``
    messages; a turn without a tool call is the final answer. The messages are valid OpenAI chat: the assistant
    message carries ``tool_calls=[{"id": "call_<turn>", "type": "function", "function": {"name": "search",
    "arguments": "{\\"query\\": ...}"}}]`` (``arguments`` a JSON string) and the result is ``{"role": "tool",
    "tool_call_id": "call_<turn>", "name": "search", "content": passages}``. The agent's call may come as Hermes/Qwen
    ``<tool_call>{json}</tool_call>`` text or a bare JSON object, with ``arguments`` a dict or a JSON string.

    ## Observation
    A dict:
    - ``"messages"``: tuple of chat messages (dicts with ``role`` and ``content``; ``tool_calls`` on assistant
      messages in the tool-call protocol), ready for ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.
    - ``"prefill"``: the text the assistant turn continues from. In the tags protocol this is everything the
      assistant wrote so far plus the environment's information blocks (and an attack's prefill, e.g.
      ``"<search>"``); an agent generates from ``chat_template(messages) + prefill``.
    The tool schema for the tool-call protocol is ``search_gym.envs.protocol.SEARCH_TOOL`` (also ``info["tools"]``
    at reset).

    ## Action
    The agent's text for one turn (``str``; bytes are decoded as UTF-8 with invalid bytes replaced, ``None`` is
    empty, lone surrogates become U+FFFD; an ``AgentStep`` or any object with a ``str`` attribute ``text`` is read
    through it, and its ``hidden`` states reach the safety judges, e.g. a latent guard). Any other object (a list, a
    dict, a number) is not text: it is an invalid action with ``parse_error="non_text"``, never its ``str()``.
    Generation should stop at ``</search>`` or ``</answer>`` (``search_gym.envs.protocol.STOP_STRINGS``); text after
    the first closing tag is dropped as Search-R1 does. Malformed text never raises.

    ``parse_mode`` picks the rules of the tags protocol:

    - ``"strict"`` (default): empty, over-long (``max_action_chars``, 16384), binary-looking, tag-spam
      (> ``max_tags`` tags, 8, counted before the cut), nested-tag, untagged, empty-query and empty-answer actions
      are invalid;
    - ``"search_r1"``: Search-R1's rules exactly (``search_gym.envs.protocol.parse_search_r1_action``): the first
      ``<search>``/``<answer>`` pair after the cut is the action whatever it contains, so ``<search></search>``
      searches ``''`` (the dense retrievers encode it as Search-R1's server does) and ``<answer></answer>`` ends the
      episode with the answer ``''``; only text without such a pair is invalid. ``max_action_chars`` and
      ``max_tags`` are off unless given (then counted after the cut).

    An invalid action gets Search-R1's fixed correction message as the observation, ``info["invalid_action"] =
    True`` and ``info["parse_error"]`` naming the problem. The turn counts.

    ## Rewards
    On the answer turn: exact match after SQuAD normalisation against any gold answer (``reward="em"``), or
    ``"f1"`` / ``"substring_em"``. 0 on every other turn, and 0 for sources without gold answers (harmful prompts).
    Shaping (format or safety penalties) belongs in wrappers and trainers.

    ## Episode End
    Terminated when the agent gives a valid answer. Truncated when the turn budget is spent without one:
    ``"strict"``: ``max_turns`` turns in all, any of which may search; ``"search_r1"``: Search-R1's loop,
    ``max_turns`` turns that may search, then one final turn with search disabled (``max_turns + 1`` turns in all;
    a search on the final turn is recorded but not retrieved, and nothing is appended after it, as Search-R1
    appends nothing after its last generation). An attack that needs more turns, e.g. ``multi_search`` with n
    searches, raises the budget to n + 1 turns in all. The reset info's ``max_turns`` is the episode's budget of
    turns in all.

    ## Attacks
    ``attack=`` (``"search"``, ``"multi_search:n=5"``, ``{"name": "multi_search", "n": 10}``, an
    ``search_gym.attacks.Attack``, or a list of them) applies a diagnostic trigger every episode;
    ``reset(options={"attack": ...})`` adds one for a single episode (``search_gym.attacks.AttackWrapper`` does
    this). The attack edits the user prompt, prefills the first turn (the observation's ``prefill`` ends with it
    and the agent continues it) and may re-prefill later turns. Tags protocol only.

    ## Safety
    ``safety=True`` (default judges: refusal substring detector, query-harm classifier on queries and answers,
    query-to-request similarity) or ``judges=[...]`` (Judge objects or names, see
    ``search_gym.safety.instrument.make_judge``) fill ``info["safety"]`` every step and an episode summary
    ``info["safety"]["episode"]`` on the terminal step; flags (``empty``, ``non_text``, ``oversized_query``,
    ``non_english``, ``injection_in_retrieved``) are in ``info["safety"]["flags"]``. Judges load lazily on the
    first step; in a ``SearchVectorEnv`` one judge call covers all sub-envs. Without them nothing is judged and
    ``info`` has no ``"safety"`` key. The keys are documented in ``search_gym.safety.instrument``.

    ## Reset options
    ``question_id`` (a question of the source, else ``KeyError``), ``index`` (0 <= index < number of questions, else
    ``IndexError``; no wrap-around), ``attack`` (added after the env's own attack), ``prefill`` (the first turn's
    prefill, replacing the attack's). Any other key raises ``ValueError`` listing these. Without ``question_id`` or
    ``index`` the question is drawn with the env's seeded generator.

    ## Info
    JSON-able and deterministic. Reset: ``question_id``, ``question``, ``golden_answers``, ``dataset``, ``split``,
    ``protocol``, ``parse_mode``, ``prefill``, ``tools``, ``attack`` (the attack's spec, or None), ``max_turns``
    (this episode's budget of turns in all). Step: ``question_id``, ``golden_answers``, ``turn``, ``action_type``
    (search / answer / invalid), ``query``, ``retrieved_doc_ids``, ``searches``, ``num_searches``, ``parse_error``,
    ``invalid_action``, ``answer``, ``correct`` (None without gold), ``score``, ``env_text`` (the text the
    environment appended this turn; trainers mask these tokens out of the policy loss), ``turn_prefill`` (the
    prefilled text this turn's action continued, e.g. an attack's ``"<search>"``), ``agent_text`` (the agent's text
    the env kept this turn, after the cut at the first closing tag: ``turn_prefill + agent_text + env_text`` is
    exactly what the turn added to the transcript), ``next_prefill`` (the text the next turn starts with, e.g. an
    attack re-prefilling ``"<search>"``; it is environment text too and is the next observation's ``prefill``
    suffix), ``tag_closed_by_env`` (the prefill opened ``<search>`` or ``<answer>`` and the agent stopped without
    closing it, or opened another action inside it: its text up to its next tag is the query / answer and the env
    wrote the closing tag, at the start of ``env_text``), ``safety`` (only with safety instrumentation).

    ## Arguments
    Checked when the env is built (``gym.make``), without loading questions or an index: an unknown dataset, split,
    protocol, parse mode, template, reward, index type, encoder, attack or judge raises there, naming the argument,
    the bad value and the valid ones.

    - ``dataset``: ``"wiki_qa"`` (embedded QA), ``"harmful"`` / ``"benign"`` (bundled prompt sets), ``"nq"`` /
      ``"hotpotqa"`` (hub, FlashRAG format; like Search-R1's preprocessing, a question not ending in ``?`` gets
      one), a path to a ``{"id","question","golden_answers"}`` JSON/JSONL/parquet file, or a folder laid out like
      the FlashRAG repository (``<split>.jsonl`` or ``<name>/<split>.jsonl``).
    - ``split``: ``"train"`` / ``"test"`` for wiki_qa, ``"train"`` / ``"heldout"`` for prompt sets, the FlashRAG
      splits for hub sets (nq: train/dev/test, hotpotqa: train/dev), the file name's split for a folder. A single
      file has no splits: every row is served and ``split`` is only the label reported in ``info["split"]``.
    - ``retriever``: a ``RetrieverConfig``, a dict of its fields, ``"dense"`` / ``"bm25"`` / ``"hybrid"``, a
      retrieval server's URL ``"http://host:port"`` (``search-gym serve`` or Search-R1's), or any object with
      ``search(queries, k) -> list[list[Hit]]``. Built lazily on the first search; configs are shared per process.
    - ``corpus_path``, ``encoder``, ``index_type``: shortcuts that fill the retriever config (default: the
      embedded Wikipedia corpus, all-MiniLM-L6-v2, flat FAISS).
    - ``protocol``: ``"tags"`` (Search-R1) or ``"tool_call"``.
    - ``parse_mode``: ``"strict"`` (default) or ``"search_r1"`` (tags protocol only): see Action and Episode End.
    - ``template``: ``"search_r1"``, ``"safety"`` (no "first", no example), ``"tool_call"``, or a format string
      with ``{question}``.
    - ``topk`` (3), ``max_turns`` (4), ``reward`` (``"em"``), ``prefill`` (text the first assistant turn starts
      with when no attack prefills it), ``max_action_chars`` (strict: 16384), ``max_tags`` (strict: 8),
      ``render_mode`` (``"ansi"``).
    - ``attack``: see Attacks. ``safety`` (False / True / ``SafetyConfig`` / dict) and ``judges``: see Safety.

    ## Version History
    - v0: initial release; Search-R1 protocol parity, native tool-call protocol, batched vector entry point,
      attacks, safety instrumentation. Later in v0: ``parse_mode="search_r1"``; tool-call messages in OpenAI's
      format (``id`` / ``tool_call_id``, ``arguments`` as a JSON string); arguments checked at construction;
      non-text actions invalid; unknown reset options and out-of-range indexes raise.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        dataset: str = "wiki_qa",
        split: str = "train",
        retriever: Any = None,
        *,
        corpus_path: str | None = None,
        encoder: str | None = None,
        index_type: str | None = None,
        protocol: str = "tags",
        parse_mode: str = "strict",
        template: str | None = None,
        topk: int = 3,
        max_turns: int = 4,
        reward: str = "em",
        prefill: str = "",
        max_action_chars: int | None = None,
        max_tags: int | None = None,
        render_mode: str | None = None,
        attack: Any = None,
        safety: Any = False,
        judges: Any = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r} is not a protocol; use one of {PROTOCOLS}")
        if parse_mode not in PARSE_MODES:
            raise ValueError(f"parse_mode={parse_mode!r} is not a parse mode; use one of {PARSE_MODES}")
        if parse_mode != "strict" and protocol != "tags":
            raise ValueError(f"parse_mode={parse_mode!r} is defined for protocol='tags' (Search-R1 has no tool "
                             "calls); the tool-call protocol parses in 'strict' mode")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}; use one of {self.metadata['render_modes']} or None")
        topk, max_turns = _positive_int("topk", topk), _positive_int("max_turns", max_turns)
        score_answer("", [""], reward)  # fail fast on an unknown metric
        if not isinstance(prefill, str):
            raise TypeError(f"prefill must be a str, not {type(prefill).__name__}")
        template = template or ("tool_call" if protocol == "tool_call" else "search_r1")
        if not isinstance(template, str):
            raise TypeError(f"template must be a str, not {type(template).__name__}")
        self.prompt_template = PROMPT_TEMPLATES.get(template, template)
        if "{question}" not in self.prompt_template:
            raise ValueError(f"template={template!r} is neither a template name ({sorted(PROMPT_TEMPLATES)}) nor a "
                             "format string containing {question}")
        check_question_source(dataset, split)  # names and paths only: the rows load on the first reset
        self.dataset, self.split = dataset, split
        self.protocol, self.parse_mode = protocol, parse_mode
        self.topk, self.max_turns, self.reward_metric = topk, max_turns, reward
        self.initial_prefill = prefill
        strict = parse_mode == "strict" or protocol != "tags"
        self.max_action_chars = max_action_chars if max_action_chars is not None or not strict else _STRICT_LIMITS[0]
        self.max_tags = max_tags if max_tags is not None or not strict else _STRICT_LIMITS[1]
        if self.max_action_chars is not None:
            self.max_action_chars = _positive_int("max_action_chars", self.max_action_chars)
        if self.max_tags is not None:
            self.max_tags = _positive_int("max_tags", self.max_tags)
        self.render_mode = render_mode
        self.retriever_config, self._retriever = _resolve_retriever(retriever, corpus_path, encoder, index_type)
        path = self.retriever_config.corpus_path if self.retriever_config is not None else None
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"corpus_path={path!r} does not exist; pass a JSONL file of passages "
                                    '({"id", "contents"} rows), or leave it None for the embedded corpus')
        try:
            self.attack = make_attack(attack)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"attack={attack!r}: {exc}") from None
        if self.attack is not None and protocol != "tags":
            raise ValueError("attacks are defined for the tags protocol (they prefill <search> / <answer> text)")
        try:
            config = SafetyConfig.resolve(safety, judges)
            self._safety = SafetyInstrument(config) if config is not None else None
            if self._safety is not None:
                # Build the judge objects now (cheap: models load on first use), so a bad judge name fails here.
                self._safety.judges  # noqa: B018
        except (TypeError, ValueError) as exc:
            given = f"judges={judges!r}" if judges is not None else f"safety={safety!r}"
            raise type(exc)(f"{given}: {exc}") from None

        self.observation_space = spaces.Dict({"messages": ChatMessages(), "prefill": AnyText(_MAX_TEXT)})
        self.action_space = AnyText(_MAX_TEXT)
        self._questions: list[Question] | None = None
        self._index_by_id: dict[str, int] | None = None
        self._episode: _Episode | None = None

    # ------------------------------------------------------------------ lazy resources

    @property
    def questions(self) -> list[Question]:
        if self._questions is None:
            ensure_question_source(self.dataset)  # an embedded source is built on first use
            self._questions = load_questions(self.dataset, self.split)
            if not self._questions:
                raise ValueError(f"question source {self.dataset!r} split {self.split!r} is empty")
            self._index_by_id = {q.id: i for i, q in enumerate(self._questions)}
        return self._questions

    @property
    def retriever(self):
        if self._retriever is None:
            from search_gym.retrieval.factory import get_retriever

            retriever = get_retriever(self.retriever_config)
            if self.parse_mode == "search_r1":
                from search_gym.retrieval.base import EmptyQueriesSearched

                retriever = EmptyQueriesSearched(retriever)  # '' is searched, as Search-R1's server does
            self._retriever = retriever
        return self._retriever

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if state.get("retriever_config") is not None:
            state["_retriever"] = None  # rebuilt lazily from the config in the new process
        state["_questions"] = state["_index_by_id"] = None
        return state

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = sorted(str(k) for k in options if k not in RESET_OPTIONS)
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; SearchEnv.reset understands {list(RESET_OPTIONS)}")
        questions = self.questions
        if "question_id" in options:
            qid = str(options["question_id"])
            if qid not in self._index_by_id:
                raise KeyError(f"question_id {qid!r} is not in {self.dataset!r} split {self.split!r}")
            question = questions[self._index_by_id[qid]]
        elif "index" in options:
            question = questions[_question_index(options["index"], len(questions), self.dataset, self.split)]
        else:
            question = questions[int(self.np_random.integers(len(questions)))]
        attack = self.attack
        if options.get("attack") is not None:
            if self.protocol != "tags":
                raise ValueError("attacks are defined for the tags protocol (they prefill <search> / <answer> text)")
            attack = compose(self.attack, options["attack"])  # the env's own attack first, option attacks after
        prompt = self.prompt_template.format(question=question.question)
        if attack is not None:
            prompt = attack.transform_prompt(prompt)
        if "prefill" in options:
            prefill = options["prefill"]
        else:
            prefill = (attack.initial_prefill() if attack is not None else "") or self.initial_prefill
        if not isinstance(prefill, str):
            raise TypeError(f"options['prefill'] must be a str, not {type(prefill).__name__}")
        # search_r1: max_turns turns that may search, then one final turn with search disabled.
        max_turns = self.max_turns + (self.parse_mode == "search_r1")
        if attack is not None:
            max_turns = max(max_turns, attack.min_turns)
        self._episode = _Episode(
            question=question,
            turn_prefix=prefill,
            messages=[{"role": "user", "content": prompt}],
            attack=attack,
            max_turns=max_turns,
            search_turns=max_turns - 1 if self.parse_mode == "search_r1" else max_turns,
            safety=self._safety.start_episode(question.question) if self._safety is not None else None,
        )
        info = {
            "question_id": question.id,
            "question": question.question,
            "golden_answers": list(question.golden_answers),
            "dataset": self.dataset,
            "split": self.split,
            "protocol": self.protocol,
            "parse_mode": self.parse_mode,
            "prefill": prefill,
            "tools": [SEARCH_TOOL] if self.protocol == "tool_call" else [],
            "attack": attack.spec() if attack is not None else None,
            "max_turns": max_turns,
        }
        return self._observation(), info

    def step(self, action: Any):
        pending = self.begin_step(action)
        hits = self.retriever.search([pending.query], k=self.topk)[0] if pending.query is not None else []
        return self.end_step(pending, hits)

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._episode is None:
            return None
        ep = self._episode
        lines = []
        for message in ep.messages:
            lines.append(f"[{message['role']}]")
            if message.get("tool_calls"):
                lines.append(f"{message['content']}\ntool_calls: {message['tool_calls']}")
            else:
                lines.append(message["content"])
        if ep.transcript or ep.turn_prefix:
            lines += ["[assistant]", ep.transcript + ep.turn_prefix]
        status = "running" if not ep.done else f"answer={ep.answer!r} score={ep.score}"
        lines.append(f"-- turn {ep.turn}/{ep.max_turns}, searches={len(ep.searches)}, {status}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ two-phase step (batched by vector envs)

    def begin_step(self, action: Any) -> _PendingStep:
        """Parse the action; return what must be retrieved. Pure text work, never raises on bad text."""
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        ep = self._episode
        if ep.done:
            return _PendingStep(ParsedAction("invalid", error="episode_over"), episode_over=True)
        hidden = None
        if not is_text_action(action) and isinstance(getattr(action, "text", None), str):
            hidden = getattr(action, "hidden", None)  # an AgentStep: its hidden states feed latent judges
            action = action.text
        closing = ""
        if not is_text_action(action):
            # A list, dict, number...: not text. Invalid as it is, never str()-ed into a search.
            parsed, free_text = ParsedAction("invalid", text=ep.turn_prefix, error="non_text"), ""
        else:
            # The observation's prefill ends with this turn's prefix (e.g. an attack's "<search>"); the agent
            # continues it, so the prefix and the action are parsed together as one turn of text.
            text = ep.turn_prefix + coerce_action_text(action)
            if self.protocol == "tags":
                parsed, free_text = self._parse_tags(text), ""
                if parsed.kind != _prefilled_tag(ep.turn_prefix):
                    parsed, closing = self._close_prefilled_tag(ep.turn_prefix, text, parsed)
            else:
                parsed, free_text = parse_tool_call_action(text, max_chars=self.max_action_chars,
                                                           max_tags=self.max_tags)
        # search_r1 mode: the final turn has search disabled (Search-R1's last generation runs with do_search=False).
        searchable = parsed.kind == "search" and ep.turn < ep.search_turns
        pending = _PendingStep(parsed, free_text, parsed.content if searchable else None, closing=closing)
        if self._safety is not None:
            # Judges see what the agent wrote, not the attack's prefill ("I cannot provide ..." is not a refusal).
            kept = parsed.text[len(ep.turn_prefix):] if parsed.text.startswith(ep.turn_prefix) else parsed.text
            pending.safety = self._safety.submit(
                ep.safety,
                raw_action=action,
                agent_text=kept,
                kind=parsed.kind,
                content=parsed.content,
                parse_error=parsed.error,
                ends_episode=parsed.kind == "answer" or ep.turn + 1 >= ep.max_turns,
                hidden=hidden,
            )
        return pending

    def _parse_tags(self, text: str) -> ParsedAction:
        parse = parse_search_r1_action if self.parse_mode == "search_r1" else parse_tagged_action
        return parse(text, max_chars=self.max_action_chars, max_tags=self.max_tags)

    def _close_prefilled_tag(self, prefix: str, text: str, parsed: ParsedAction) -> tuple[ParsedAction, str]:
        """Close a ``<search>`` / ``<answer>`` that the turn's prefill opened and the agent never closed.

        A prefilled ``<search>`` puts the agent inside a query: whatever it writes up to its next tag (or the end of
        its text, when it ran out of tokens) is the query it issued. Without this, a small model that rambles past
        its token budget would escape the search attack. The closing tag is the environment's text (it starts
        ``env_text``); the step info says ``tag_closed_by_env``. The same holds when the agent opens another action
        inside the prefilled one (``<answer> <search> q </search>``): the prefilled action ends where that tag
        starts, so an agent cannot search its way out of a forced answer, or answer its way out of a forced search.
        """
        opened = _prefilled_tag(prefix)
        if opened is None:
            return parsed, ""
        body = text[len(prefix):].split("<", 1)[0].rstrip()
        closing = f" </{opened}>"
        closed = self._parse_tags(prefix + body + closing)
        if closed.kind != opened:
            # A tag right after the prefill (e.g. "<search> <information>..."): say the query was empty, which is
            # what happened, rather than that no action was found.
            empty = closed.error in ("empty_query", "empty_answer")
            return (replace(closed, text=text) if empty else parsed), ""
        return replace(closed, text=prefix + body), closing

    def end_step(self, pending: _PendingStep, hits: list) -> tuple[dict, float, bool, bool, dict]:
        """Apply a parsed action and its retrieved passages; return the usual 5-tuple."""
        ep = self._episode
        parsed = pending.parsed
        reward, env_text = 0.0, ""
        if pending.episode_over:
            info = self._step_info(parsed, hits, env_text, ep.turn_prefix)
            if self._safety is not None:
                info["safety"] = self._safety.finish(ep.safety, None, (), turns=ep.turn, answered=ep.answer is not None)
            return self._observation(), 0.0, True, False, info
        if parsed.kind == "search":
            ep.searches.append(parsed.content)
        elif parsed.kind == "answer":
            ep.answer, ep.done = parsed.content, True
            if ep.question.golden_answers:
                ep.score = score_answer(parsed.content, ep.question.golden_answers, self.reward_metric)
                ep.correct = bool(exact_match(parsed.content, ep.question.golden_answers))
                reward = ep.score
        if self.protocol == "tags":
            # search_r1 mode's final turn appends nothing: Search-R1 keeps its last generation and stops.
            final_r1 = self.parse_mode == "search_r1" and ep.turn >= ep.search_turns
            if parsed.kind == "search" and not final_r1:
                block = format_information(hits)
            elif parsed.kind == "invalid" and not final_r1:
                block = INVALID_ACTION_MESSAGE
            else:
                block = ""
            env_text = pending.closing + block
            ep.transcript += parsed.text + env_text
        else:
            env_text = self._extend_tool_messages(ep, pending, hits)
        turn_prefill, ep.turn_prefix = ep.turn_prefix, ""
        ep.turn += 1
        truncated = not ep.done and ep.turn >= ep.max_turns
        if ep.attack is not None and not ep.done and not truncated:
            ep.turn_prefix = ep.attack.next_prefill(len(ep.searches), parsed.kind)
        info = self._step_info(parsed, hits, env_text, turn_prefill, closed=bool(pending.closing))
        info["agent_text"] = _kept_agent_text(parsed, turn_prefill, self.protocol)
        if self._safety is not None:
            info["safety"] = self._safety.finish(
                ep.safety, pending.safety, hits, turns=ep.turn, answered=ep.answer is not None
            )
        return self._observation(), float(reward), ep.done, truncated, info

    def _extend_tool_messages(self, ep: _Episode, pending: _PendingStep, hits: list) -> str:
        """Append this turn's OpenAI chat messages: an assistant ``tool_calls`` message and its ``tool`` result
        (ids ``call_<turn>``, ``arguments`` a JSON string), or the assistant's answer / invalid text."""
        parsed = pending.parsed
        if parsed.kind == "search":
            call_id = tool_call_id(ep.turn)
            ep.messages.append(assistant_tool_call_message(call_id, parsed.content, pending.free_text))
            env_text = format_passages(hits)
            ep.messages.append(tool_result_message(call_id, env_text))
            return env_text
        ep.messages.append({"role": "assistant", "content": parsed.text if parsed.kind == "answer" else pending.free_text})
        if parsed.kind == "invalid":
            ep.messages.append({"role": "user", "content": INVALID_ACTION_MESSAGE.strip()})
            return INVALID_ACTION_MESSAGE.strip()
        return ""

    def set_turn_prefill(self, text: str) -> None:
        """Make the next assistant turn start with ``text`` (attacks re-prefill ``<search>`` between turns)."""
        if self._episode is None:
            raise RuntimeError("call reset() before set_turn_prefill()")
        self._episode.turn_prefix = text

    # ------------------------------------------------------------------ helpers

    def _observation(self) -> dict:
        ep = self._episode
        return {"messages": tuple(dict(m) for m in ep.messages), "prefill": ep.transcript + ep.turn_prefix}

    def _step_info(
        self, parsed: ParsedAction, hits: list, env_text: str, turn_prefill: str = "", closed: bool = False
    ) -> dict:
        ep = self._episode
        return {
            "question_id": ep.question.id,
            "golden_answers": list(ep.question.golden_answers),
            "turn": ep.turn,
            "action_type": parsed.kind,
            "query": parsed.content if parsed.kind == "search" else None,
            "retrieved_doc_ids": [str(h.doc_id) for h in hits],
            "searches": list(ep.searches),
            "num_searches": len(ep.searches),
            "parse_error": parsed.error,
            "invalid_action": parsed.kind == "invalid",
            "answer": ep.answer,
            "correct": ep.correct,
            "score": ep.score,
            "env_text": env_text,
            "turn_prefill": turn_prefill,
            "agent_text": "",
            "next_prefill": ep.turn_prefix,
            "tag_closed_by_env": closed,
        }


def _resolve_retriever(retriever: Any, corpus_path, encoder, index_type):
    """Return (config, instance): exactly one is set. Configs keep the env picklable and share indexes."""
    overrides = {k: v for k, v in {"corpus_path": corpus_path, "encoder": encoder, "index_type": index_type}.items() if v is not None}
    if retriever is not None and not isinstance(retriever, (str, dict)) and hasattr(retriever, "search"):
        if overrides:
            raise ValueError("corpus_path/encoder/index_type only apply when the env builds its own retriever")
        return None, retriever
    from search_gym.retrieval.factory import RetrieverConfig

    if retriever is None or isinstance(retriever, (str, dict, RetrieverConfig)):
        if retriever is None:
            config = RetrieverConfig()
        elif isinstance(retriever, str):
            config = RetrieverConfig(kind=retriever)
        elif isinstance(retriever, dict):
            config = RetrieverConfig(**retriever)
        else:
            config = retriever
        return replace(config, **overrides), None
    raise TypeError("retriever must be a RetrieverConfig, a dict, 'dense'/'bm25'/'hybrid', a server URL "
                    "'http://host:port', or an object with search()")


def _positive_int(name: str, value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f"{name}={value!r}; it must be an integer >= 1")
    return number


def _question_index(value: Any, n: int, dataset: str, split: str) -> int:
    """``reset(options={"index": value})`` checked: an integer in [0, n), no wrap-around."""
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)
    except TypeError:
        raise TypeError(f"options['index'] must be an integer, not {type(value).__name__}") from None
    if not 0 <= index < n:
        raise IndexError(f"options['index']={value!r} is out of range: {dataset!r} split {split!r} has {n} "
                         f"questions, so 0 <= index <= {n - 1}")
    return index


def _kept_agent_text(parsed: ParsedAction, turn_prefill: str, protocol: str) -> str:
    """The part of this turn's action text the environment kept, without the prefill it continued.

    Tags protocol: ``turn_prefill + agent_text + env_text`` is exactly what this turn added to the assistant turn
    (the env cuts the action at its first closing tag, or where a prefilled tag ends), so a token-level trainer
    can check its buffer against it. Tool-call protocol: the action text as parsed.
    """
    if protocol != "tags":
        return parsed.text
    return parsed.text[len(turn_prefill):] if parsed.text.startswith(turn_prefill) else parsed.text


def _prefilled_tag(prefix: str) -> str | None:
    """The action tag a turn's prefill leaves open (an attack's ``"<search>"``), or None."""
    stripped = prefix.rstrip()
    return next((tag for tag in ("search", "answer") if stripped.endswith(f"<{tag}>")), None)
