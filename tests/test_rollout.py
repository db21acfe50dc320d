"""Token-in / token-out rollouts (search_gym.rollout, by the trainers' names): loss masks built by hand from
scripted generations, finished sub-envs left alone, the context budget, and seeded HF sampling whose recorded
log-probabilities match a forward pass at the sampling temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from search_gym.agents.hf import render_prompt
from search_gym.envs import INVALID_ACTION_MESSAGE, SearchEnv, SearchVectorEnv
from search_gym.envs.protocol import format_information
from search_gym.trainers.core import collate, first_loss_position, token_logprobs
from search_gym.trainers.rollout import (
    ENV,
    POLICY,
    PREFILL,
    Generation,
    HFGenerator,
    RolloutCollector,
    decode,
    encode,
)

SEARCH = "<search>"


# ---------------------------------------------------------------------------------------------- helpers


class ScriptedGenerator:
    """Plays fixed turns per question. Each turn is a list of text pieces, tokenised piece by piece and
    concatenated (so the ids can differ from the canonical tokenisation of the whole text). Every token gets a
    distinct, known log-probability. Records every request and every generation it returned."""

    def __init__(self, tokenizer, scripts: dict[str, list[list[str]]]):
        self.tokenizer, self.scripts = tokenizer, scripts
        self.turn: dict[str, int] = {}
        self.requests: list = []  # (key, request)
        self.returned: list = []  # (key, turn, Generation)
        self.batches: list[list] = []  # the requests of each generate call
        self.calls = 0
        self._next_logprob = 0

    def seed(self, seed: int) -> None:
        self.seed_value = seed

    def sync_weights(self) -> None:
        pass

    def _key(self, request) -> str:
        content = request.observation["messages"][0]["content"]
        matches = [k for k in self.scripts if k in content]
        assert len(matches) == 1, f"no unique script for {content!r}"
        return matches[0]

    def generate(self, requests):
        self.calls += 1
        self.batches.append(list(requests))
        out = []
        for request in requests:
            key = self._key(request)
            turn = self.turn.get(key, 0)
            self.turn[key] = turn + 1
            pieces = self.scripts[key][turn]
            ids = [i for piece in pieces for i in encode(self.tokenizer, piece)]
            logprobs = []
            for _ in ids:
                self._next_logprob += 1
                logprobs.append(-0.001 * self._next_logprob)
            gen = Generation(ids, logprobs, decode(self.tokenizer, ids), "stop")
            self.requests.append((key, request))
            self.returned.append((key, turn, gen))
            out.append(gen)
        return out

    def generations(self, key: str) -> list[Generation]:
        return [g for k, _, g in self.returned if k == key]

    def requests_for(self, key: str) -> list:
        return [r for k, r in self.requests if k == key]


class CountingEnv(SearchEnv):
    """SearchEnv that counts resets and logs the actions it is stepped with."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.resets = 0
        self.actions: list[str] = []

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        return super().reset(seed=seed, options=options)

    def begin_step(self, action):
        self.actions.append(action)
        return super().begin_step(action)


def make_venv(tiny_qa_path, retriever, num_envs: int = 1, **kwargs) -> SearchVectorEnv:
    kwargs.setdefault("autoreset_mode", AutoresetMode.DISABLED)
    return SearchVectorEnv(num_envs=num_envs, env_cls=CountingEnv, dataset=str(tiny_qa_path), split="test",
                           retriever=retriever, render_mode="ansi", **kwargs)


def span_ids(ep, span) -> list[int]:
    start, end, _ = span
    return ep.response_ids[start:end]


def transcript(venv, i: int = 0) -> str:
    """The assistant turn as the env renders it (public render, ansi mode)."""
    text = venv.render()[i]
    assert "[assistant]\n" in text
    return text.split("[assistant]\n", 1)[1].rsplit("\n-- turn ", 1)[0]


def search_ends(tokenizer, ids) -> list[int]:
    """Independent reference: index of the token whose decoded prefix first contains each ``<search>``."""
    out, seen = [], 0
    for j in range(len(ids)):
        count = decode(tokenizer, ids[: j + 1]).count(SEARCH)
        if count > seen:
            out += [j] * (count - seen)
            seen = count
    return out


def test_search_tag_ends_match_the_token_by_token_reference(tokenizer):
    """Bisection finds the same tokens as decoding every prefix, on random text around tags split every which way."""
    from search_gym.trainers.rollout import search_tag_ends

    rng = np.random.default_rng(0)
    pieces = ["<search>", "<", "search", ">", "<sea", "rch>", " héllo", "ü", "</search>", " and", "😀", "x"]
    for _ in range(60):
        text = "".join(rng.choice(pieces, size=int(rng.integers(1, 14))))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if rng.random() < 0.3:  # byte-level pieces of a multi-byte character cut apart
            ids = ids + list(rng.integers(0, len(tokenizer), size=3))
        assert search_tag_ends(tokenizer, ids) == search_ends(tokenizer, ids), text


def in_spans(ep, index: int, kinds) -> bool:
    return any(start <= index < end and kind in kinds for start, end, kind in ep.spans)


def check_masks(ep, generator: ScriptedGenerator, key: str) -> None:
    """Every policy span holds the ids one generation returned (verbatim) with its log-probabilities and loss 1;
    every other token has loss 0 and log-probability 0; spans tile the response."""
    assert len(ep.response_ids) == len(ep.loss_mask) == len(ep.logprobs)
    assert [s[0] for s in ep.spans][0] == 0 and all(a[1] == b[0] for a, b in zip(ep.spans, ep.spans[1:]))
    assert ep.spans[-1][1] == len(ep.response_ids)
    gens = generator.generations(key)
    policy = [s for s in ep.spans if s[2] == POLICY]
    assert len(policy) == len(gens)
    for span, gen in zip(policy, gens):
        start, end, _ = span
        assert span_ids(ep, span) == gen.ids  # verbatim, not re-tokenised
        assert ep.logprobs[start:end] == pytest.approx(gen.logprobs, abs=0)
        assert ep.loss_mask[start:end] == [1] * (end - start)
    for start, end, kind in ep.spans:
        if kind != POLICY:
            assert ep.loss_mask[start:end] == [0] * (end - start)
            assert ep.logprobs[start:end] == [0.0] * (end - start)
    assert ep.num_policy_tokens == sum(len(g.ids) for g in gens)


def check_requests(ep, generator: ScriptedGenerator, key: str) -> None:
    """Each turn was generated from the episode's own token buffer as it stood (prompt + response so far)."""
    policy = [s for s in ep.spans if s[2] == POLICY]
    for span, request in zip(policy, generator.requests_for(key)):
        assert request.input_ids == ep.prompt_ids + ep.response_ids[: span[0]]


def hits_for(retriever, query: str):
    return retriever.search([query], k=3)[0]


# ---------------------------------------------------------------------------------------------- 1. masks by hand


def test_masks_search_invalid_answer(tokenizer, tiny_qa_path, overlap_retriever):
    turns = [
        # "<search>" and "capital" split across pieces: not the tokenizer's canonical ids for this text
        ["<think> I need the capital. </think>\n<sea", "rch> cap", "ital of France </search>"],
        ["I am not sure what to do"],  # no action: the env answers with its correction message
        ["<answer> Paris </answer>"],
    ]
    generator = ScriptedGenerator(tokenizer, {"France": turns})
    venv = make_venv(tiny_qa_path, overlap_retriever)
    collector = RolloutCollector(venv, generator)
    (ep,) = collector.collect(["q0"], 1, seed=3)

    first = generator.generations("France")[0]
    assert first.ids != encode(tokenizer, first.text)  # the verbatim check below is meaningful
    obs_prompt = render_prompt(tokenizer, venv.envs[0]._episode.messages)
    assert ep.prompt_ids == encode(tokenizer, obs_prompt) and ep.prompt_truncated == 0
    assert decode(tokenizer, ep.prompt_ids).endswith("<|im_start|>assistant\n")

    assert [s[2] for s in ep.spans] == [POLICY, ENV, POLICY, ENV, POLICY]
    assert ep.span_turns == [0, 0, 1, 1, 2]
    info_block = format_information(hits_for(overlap_retriever, "capital of France"))
    assert decode(tokenizer, span_ids(ep, ep.spans[1])) == info_block
    assert decode(tokenizer, span_ids(ep, ep.spans[3])) == INVALID_ACTION_MESSAGE
    check_masks(ep, generator, "France")
    check_requests(ep, generator, "France")

    # The buffer decodes to the env's transcript.
    assert decode(tokenizer, ep.response_ids) == transcript(venv) == venv.envs[0]._episode.transcript

    # One search index: the token completing the policy's <search>, not the one in the correction message.
    all_tags = search_ends(tokenizer, ep.response_ids)
    assert len(all_tags) == 2 and in_spans(ep, all_tags[1], (ENV,))
    assert ep.search_indices == [all_tags[0]]
    (index,) = ep.search_indices
    assert in_spans(ep, index, (POLICY,))
    assert decode(tokenizer, ep.response_ids[: index + 1]).endswith(SEARCH)
    assert not decode(tokenizer, ep.response_ids[:index]).endswith(SEARCH)
    assert ep.absolute(index) == len(ep.prompt_ids) + index
    assert ep.input_ids[ep.absolute(index)] == ep.response_ids[index]

    assert (ep.reward, ep.task_reward, ep.correct, ep.answered, ep.answer) == (1.0, 1.0, True, True, "Paris")
    assert (ep.terminated, ep.truncated, ep.budget_truncated) == (True, False, False)
    assert (ep.turns, ep.num_searches, ep.invalid_actions, ep.text_repairs) == (3, 1, 1, 0)
    assert ep.searches == ["capital of France"] and ep.golden_answers == ["Paris"] and ep.group == 0


def test_masks_attack_prefills_and_env_closed_tag(tokenizer, tiny_qa_path, overlap_retriever):
    # multi_search:n=2 prefills "<search>" at reset and after the first search, then "<answer>".
    turns = [
        [" Georges Bizet opera </search>"],
        [" four acts", " opera"],  # never closes the forced <search>: the env writes " </search>"
        [" Carmen </answer>"],
    ]
    generator = ScriptedGenerator(tokenizer, {"Bizet": turns})
    venv = make_venv(tiny_qa_path, overlap_retriever, attack="multi_search:n=2")
    (ep,) = RolloutCollector(venv, generator).collect(["q1"], 1)

    kinds = [s[2] for s in ep.spans]
    assert kinds == [PREFILL, POLICY, ENV, PREFILL, POLICY, ENV, PREFILL, POLICY]
    assert ep.span_turns == [0, 0, 0, 1, 1, 1, 2, 2]
    texts = [decode(tokenizer, span_ids(ep, s)) for s in ep.spans]
    assert texts[0] == SEARCH and texts[3] == SEARCH and texts[6] == "<answer>"
    assert texts[2] == format_information(hits_for(overlap_retriever, "Georges Bizet opera"))
    # the closing tag the env added is environment text, at the start of that turn's env span
    assert texts[5] == " </search>" + format_information(hits_for(overlap_retriever, "four acts opera"))
    # each env piece was tokenised on its own when it arrived
    assert span_ids(ep, ep.spans[0]) == encode(tokenizer, SEARCH)
    assert span_ids(ep, ep.spans[5]) == encode(tokenizer, texts[5])
    check_masks(ep, generator, "Bizet")
    check_requests(ep, generator, "Bizet")
    # the first request already continues the reset prefill
    assert generator.requests_for("Bizet")[0].input_ids[-len(encode(tokenizer, SEARCH)):] == encode(tokenizer, SEARCH)

    assert decode(tokenizer, ep.response_ids) == transcript(venv) == venv.envs[0]._episode.transcript

    # Both prefilled <search> tags open a query: their last tokens are the search indices.
    assert ep.search_indices == search_ends(tokenizer, ep.response_ids)
    assert len(ep.search_indices) == 2
    assert ep.search_indices[0] == ep.spans[0][1] - 1 and ep.search_indices[1] == ep.spans[3][1] - 1
    assert all(in_spans(ep, i, (PREFILL,)) for i in ep.search_indices)

    assert ep.searches == ["Georges Bizet opera", "four acts opera"]
    assert (ep.reward, ep.correct, ep.turns, ep.invalid_actions, ep.text_repairs) == (1.0, True, 3, 0, 0)


def test_text_after_the_closing_tag_is_cut_and_straddling_characters_are_env_tokens(
        tokenizer, tiny_qa_path, overlap_retriever):
    # ">." is one token: the env keeps "...</search>" / "...</answer>", so the last policy token straddles the cut.
    search, answer = "<search> capital of France </search>. More", "<answer> Paris </answer>."
    assert tokenizer.convert_ids_to_tokens(encode(tokenizer, answer))[-1] == ">."
    generator = ScriptedGenerator(tokenizer, {"France": [[search], [answer]]})
    venv = make_venv(tiny_qa_path, overlap_retriever)
    (ep,) = RolloutCollector(venv, generator).collect(["q0"], 1)

    assert ep.text_repairs == 2
    assert [s[2] for s in ep.spans] == [POLICY, ENV, ENV, POLICY, ENV]
    gens = generator.generations("France")
    policy = [s for s in ep.spans if s[2] == POLICY]
    for span, gen in zip(policy, gens):
        kept = span_ids(ep, span)
        assert 0 < len(kept) < len(gen.ids) and gen.ids[: len(kept)] == kept  # a prefix of what was sampled
        assert ep.logprobs[span[0]:span[1]] == gen.logprobs[: len(kept)]
    assert decode(tokenizer, span_ids(ep, ep.spans[1])) == ">"
    assert decode(tokenizer, span_ids(ep, ep.spans[4])) == ">"
    assert decode(tokenizer, ep.response_ids) == venv.envs[0]._episode.transcript
    assert "More" not in decode(tokenizer, ep.response_ids)
    assert ep.reward == 1.0 and ep.num_policy_tokens == sum(len(span_ids(ep, s)) for s in policy)


def test_the_final_turn_env_text_is_left_out(tokenizer, tiny_qa_path, overlap_retriever):
    # A forced "<answer>" the policy never closes: on the terminal step the env writes " </answer>" into its
    # transcript; nothing is generated after it, so the token buffer stops at the policy's last token.
    turns = [[" opera Carmen </search>"], [" Carmen"]]
    generator = ScriptedGenerator(tokenizer, {"Bizet": turns})
    venv = make_venv(tiny_qa_path, overlap_retriever, attack="multi_search:n=1")
    (ep,) = RolloutCollector(venv, generator).collect(["q1"], 1)
    assert ep.terminated and ep.answer == "Carmen" and ep.reward == 1.0
    assert [s[2] for s in ep.spans] == [PREFILL, POLICY, ENV, PREFILL, POLICY]
    decoded, env_transcript = decode(tokenizer, ep.response_ids), venv.envs[0]._episode.transcript
    assert env_transcript == decoded + " </answer>"  # equal modulo the final turn's env text
    check_masks(ep, generator, "Bizet")


def test_search_indices_skip_tags_of_invalid_actions(tokenizer, tiny_qa_path, overlap_retriever):
    turns = [["<search> </search>"], ["<search> capital of France </search>"], ["<answer> Paris </answer>"]]
    venv = make_venv(tiny_qa_path, overlap_retriever)
    (ep,) = RolloutCollector(venv, ScriptedGenerator(tokenizer, {"France": turns})).collect(["q0"], 1)
    assert ep.invalid_actions == 1 and ep.num_searches == 1
    assert len(ep.search_indices) == ep.num_searches


# ---------------------------------------------------------------------------------------------- 2. finished envs


def test_finished_sub_envs_are_not_stepped_again(tokenizer, tiny_qa_path, overlap_retriever):
    scripts = {
        "France": [["<answer> Paris </answer>"]],
        "Bizet": [["<search> Bizet opera </search>"], ["<search> four acts </search>"], ["<answer> Carmen </answer>"]],
    }
    generator = ScriptedGenerator(tokenizer, scripts)
    venv = make_venv(tiny_qa_path, overlap_retriever, num_envs=2, autoreset_mode=AutoresetMode.NEXT_STEP)
    collector = RolloutCollector(venv, generator)
    assert venv.autoreset_mode == AutoresetMode.DISABLED  # the collector switched it off
    overlap_retriever.calls.clear()
    episodes = collector.collect(["q0", "q1"], 1)

    assert [e.question_id for e in episodes] == ["q0", "q1"] and [e.turns for e in episodes] == [1, 3]
    france, bizet = venv.envs
    assert france.resets == 1 and bizet.resets == 1  # no new episode started anywhere
    assert france.actions == ["<answer> Paris </answer>"]  # stepped once, never again after its answer
    assert len(bizet.actions) == 3
    assert [len(b) for b in generator.batches] == [2, 1, 1]  # only running envs are asked for a turn
    assert overlap_retriever.calls == [1, 1]  # only the running env searched
    assert not venv.active.any()

    # Stepping the vector env again after the rollout does not start new episodes either.
    _, rewards, terms, truncs, infos = venv.step(["<answer> x </answer>"] * 2)
    assert terms.all() and not rewards.any() and france.resets == bizet.resets == 1
    assert len(france.actions) == 1 and len(bizet.actions) == 3


def test_more_jobs_than_envs_reset_only_the_envs_they_use(tokenizer, tiny_qa_path, overlap_retriever):
    scripts = {k: [[f"<answer> {a} </answer>"]] for k, a in (("France", "Paris"), ("Bizet", "Carmen"),
                                                                ("mountain", "Mount Everest"))}
    generator = ScriptedGenerator(tokenizer, scripts)
    venv = make_venv(tiny_qa_path, overlap_retriever, num_envs=2)
    episodes = RolloutCollector(venv, generator).collect(["q0", "q1", "q2"], 1)
    assert [e.question_id for e in episodes] == ["q0", "q1", "q2"] and all(e.reward == 1.0 for e in episodes)
    assert [e.group for e in episodes] == [0, 1, 2]
    # second chunk: one job, env 1 is neither reset nor stepped
    assert [env.resets for env in venv.envs] == [2, 1]
    assert [len(env.actions) for env in venv.envs] == [2, 1]


def test_groups_are_consecutive(tokenizer, tiny_qa_path, overlap_retriever):
    scripts = {"France": [["<answer> Paris </answer>"]] * 2, "Bizet": [["<answer> Bizet </answer>"]] * 2}
    venv = make_venv(tiny_qa_path, overlap_retriever, num_envs=4)
    episodes = RolloutCollector(venv, ScriptedGenerator(tokenizer, scripts)).collect(["q0", "q1"], 2)
    assert [(e.question_id, e.group) for e in episodes] == [("q0", 0), ("q0", 0), ("q1", 1), ("q1", 1)]
    assert [e.reward for e in episodes] == [1.0, 1.0, 0.0, 0.0]


def test_a_text_agent_plays_the_same_loop_without_tokens(tiny_qa_path, overlap_retriever):
    """A generator without a tokenizer (a text agent): the same loop with the token bookkeeping off. The env is
    given the agent's step itself, the episode keeps its text view, ``skip`` leaves out recorded question ids and
    ``on_episode`` sees every episode as it ends."""
    from search_gym.agents import ScriptedAgent
    from search_gym.agents.base import AgentStep
    from search_gym.rollout import AgentGenerator, trajectory_record

    venv = make_venv(tiny_qa_path, overlap_retriever, num_envs=2, max_turns=3)
    seen = []
    collector = RolloutCollector(venv, AgentGenerator(ScriptedAgent()))
    episodes = collector.collect([{"index": 0}, "q1", "q2"], skip={"q1"}, on_episode=seen.append)
    assert [e.question_id for e in episodes] == ["q0", "q2"] and sorted(map(id, seen)) == sorted(map(id, episodes))
    assert all(isinstance(a, AgentStep) for env in venv.envs for a in env.actions)
    for i, ep in enumerate(episodes):
        assert ep.prompt_ids == ep.response_ids == ep.loss_mask == ep.spans == []
        assert ep.turns == len(ep.actions) == len(ep.infos) == len(ep.rewards) == 2 and ep.terminated
        assert ep.transcript == transcript(venv, i) and ep.num_searches == 1 and ep.answered
        record = trajectory_record(ep, {"agent": "scripted"})
        assert record["question_id"] == ep.question_id and record["finished"] and record["return"] == ep.reward
        assert record["env_texts"] == [info["env_text"] for info in ep.infos] and record["extra"] == {"agent": "scripted"}


def test_autoreset_mode_accepts_the_documented_strings(tiny_qa_path, overlap_retriever):
    for name, mode in (("disabled", AutoresetMode.DISABLED), ("next_step", AutoresetMode.NEXT_STEP),
                       (AutoresetMode.DISABLED, AutoresetMode.DISABLED)):
        venv = SearchVectorEnv(num_envs=1, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                               autoreset_mode=name)
        assert venv.autoreset_mode == mode
    with pytest.raises(ValueError, match="autoreset_mode"):
        SearchVectorEnv(num_envs=1, dataset=str(tiny_qa_path), retriever=overlap_retriever, autoreset_mode="same_step")


def test_fewer_jobs_than_envs_leave_the_spare_envs_alone(tokenizer, tiny_qa_path, overlap_retriever):
    generator = ScriptedGenerator(tokenizer, {"France": [["<answer> Paris </answer>"]]})
    venv = make_venv(tiny_qa_path, overlap_retriever, num_envs=2)
    (ep,) = RolloutCollector(venv, generator).collect(["q0"], 1)
    assert ep.reward == 1.0 and venv.envs[1].resets == 0 and venv.envs[1].actions == []


def test_budget_truncated_env_is_not_stepped_again(tokenizer, tiny_qa_path, overlap_retriever):
    scripts = {"France": [["<search> capital of France </search>"]],
               "Bizet": [["no action"], ["no action"], ["<answer> Carmen </answer>"]]}
    venv = make_venv(tiny_qa_path, overlap_retriever, num_envs=2)
    episodes = RolloutCollector(venv, ScriptedGenerator(tokenizer, scripts), max_response_tokens=60).collect(
        ["q0", "q1"], 1)
    assert episodes[0].budget_truncated and episodes[0].turns == 1
    assert venv.envs[0].actions == ["<search> capital of France </search>"]


# ---------------------------------------------------------------------------------------------- 3. context budget


def test_response_budget_ends_the_episode(tokenizer, tiny_qa_path, overlap_retriever):
    budget = 60
    generator = ScriptedGenerator(tokenizer, {"France": [["<search> capital of France </search>"]] * 4})
    venv = make_venv(tiny_qa_path, overlap_retriever, max_turns=4)
    (ep,) = RolloutCollector(venv, generator, max_turn_tokens=32, max_response_tokens=budget).collect(["q0"], 1)
    assert ep.budget_truncated and ep.truncated and not ep.terminated
    assert (ep.reward, ep.task_reward, ep.answered, ep.turns) == (0.0, 0.0, False, 1)
    assert ep.num_searches == 1  # the end records what happened up to the cut
    # generation budgets never exceed the room left, and policy tokens never pass the budget
    (request,) = generator.requests_for("France")
    assert request.max_new_tokens == min(32, budget)
    assert ep.num_policy_tokens <= budget
    assert generator.calls == 1


def test_each_turn_asks_for_at_most_the_room_left(tokenizer, tiny_qa_path, overlap_retriever):
    budget = 150
    generator = ScriptedGenerator(tokenizer, {"France": [["<search> capital of France </search>"]] * 4})
    venv = make_venv(tiny_qa_path, overlap_retriever, max_turns=4)
    (ep,) = RolloutCollector(venv, generator, max_turn_tokens=128, max_response_tokens=budget).collect(["q0"], 1)
    first, second = generator.requests_for("France")[:2]
    assert first.max_new_tokens == 128
    used = len(second.input_ids) - len(ep.prompt_ids)
    assert 0 < budget - used < 128 and second.max_new_tokens == budget - used
    assert ep.budget_truncated and ep.turns == 2


def test_response_never_exceeds_the_budget(tokenizer, tiny_qa_path, overlap_retriever):
    budget = 60
    generator = ScriptedGenerator(tokenizer, {"France": [["<search> capital of France </search>"]] * 4})
    venv = make_venv(tiny_qa_path, overlap_retriever, max_turns=4)
    (ep,) = RolloutCollector(venv, generator, max_response_tokens=budget).collect(["q0"], 1)
    assert ep.budget_truncated
    assert len(ep.response_ids) <= budget


def test_prefill_alone_filling_the_budget_ends_before_generation(tokenizer, tiny_qa_path, overlap_retriever):
    generator = ScriptedGenerator(tokenizer, {"France": [["<answer> Paris </answer>"]]})
    venv = make_venv(tiny_qa_path, overlap_retriever, attack="think_prefill")
    (ep,) = RolloutCollector(venv, generator, max_response_tokens=5).collect(["q0"], 1)
    assert generator.calls == 0 and ep.budget_truncated and ep.turns == 0 and ep.reward == 0.0
    assert [s[2] for s in ep.spans] == [PREFILL] and ep.num_policy_tokens == 0
    assert venv.envs[0].actions == []


def test_obs_and_prompt_truncation_are_counted(tokenizer, tiny_qa_path, overlap_retriever):
    generator = ScriptedGenerator(tokenizer, {"France": [["<search> capital of France </search>"],
                                                          ["<answer> Paris </answer>"]]})
    venv = make_venv(tiny_qa_path, overlap_retriever)
    collector = RolloutCollector(venv, generator, max_obs_tokens=10, max_prompt_tokens=32)
    (ep,) = collector.collect(["q0"], 1)
    block = encode(tokenizer, format_information(hits_for(overlap_retriever, "capital of France")))
    assert ep.obs_truncated_tokens == len(block) - 10 > 0
    env_span = ep.spans[1]
    assert env_span[2] == ENV and span_ids(ep, env_span) == block[:10]
    full_prompt = encode(tokenizer, render_prompt(tokenizer, venv.envs[0]._episode.messages))
    assert len(ep.prompt_ids) == 32 and ep.prompt_truncated == len(full_prompt) - 32
    assert ep.prompt_ids == full_prompt[-32:]
    # the next turn continued the truncated buffer, and the episode still finished
    assert generator.requests_for("France")[1].input_ids == ep.prompt_ids + ep.response_ids[: ep.spans[2][0]]
    assert ep.reward == 1.0 and not ep.budget_truncated


# ---------------------------------------------------------------------------------------------- 4. HF sampling


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def _rollout(model, tokenizer, tiny_qa_path, retriever, temperature: float, seed: int):
    venv = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=retriever, max_turns=2)
    generator = HFGenerator(model, tokenizer, temperature=temperature, seed=0)
    collector = RolloutCollector(venv, generator, max_turn_tokens=8)
    return collector.collect(["q0", "q1"], 2, seed=seed)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_rollouts_are_seeded_and_logprobs_match_a_forward(tiny_model, tokenizer, tiny_qa_path, overlap_retriever,
                                                             temperature):
    first = _rollout(tiny_model, tokenizer, tiny_qa_path, overlap_retriever, temperature, seed=11)
    again = _rollout(tiny_model, tokenizer, tiny_qa_path, overlap_retriever, temperature, seed=11)
    other = _rollout(tiny_model, tokenizer, tiny_qa_path, overlap_retriever, temperature, seed=12)
    assert [e.response_ids for e in first] == [e.response_ids for e in again]
    assert [e.logprobs for e in first] == [e.logprobs for e in again]
    assert [e.response_ids for e in first] != [e.response_ids for e in other]
    # the two episodes of one question were sampled differently
    assert first[0].response_ids != first[1].response_ids
    assert all(end - start <= 8 for e in first for start, end, kind in e.spans if kind == POLICY)  # max_turn_tokens

    batch = collate(first, tokenizer.pad_token_id)
    with torch.no_grad():
        logps, _, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask, temperature=temperature)
        at_one, _, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask, temperature=1.0)
    mask = batch.loss_mask.bool()
    assert int(mask.sum()) == sum(e.num_policy_tokens for e in first) > 10
    recorded = batch.sampler_logprobs[mask]
    assert all(math.isfinite(v) for e in first for v, m in zip(e.logprobs, e.loss_mask) if m)
    assert torch.allclose(recorded, logps[mask], atol=1e-4, rtol=0)
    if temperature != 1.0:  # the check can tell the temperatures apart
        assert (recorded - at_one[mask]).abs().max() > 1e-3
    # skipping the prompt's logits (logits_to_keep) changes nothing where the loss reads
    first_col = first_loss_position(batch.loss_mask)
    assert first_col > 0
    with torch.no_grad():
        kept, kept_entropy, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask,
                                               temperature=temperature, with_entropy=True, first_position=first_col)
        _, full_entropy, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask,
                                            temperature=temperature, with_entropy=True)
    assert kept.shape == logps.shape and torch.all(kept[:, :first_col] == 0)
    assert torch.allclose(kept[mask], logps[mask], atol=1e-5, rtol=0)
    assert torch.allclose(kept_entropy[:, first_col:], full_entropy[:, first_col:], atol=1e-5, rtol=0)
    # environment tokens carry no sampler log-probability
    assert np.all(np.asarray([v for e in first for v, m in zip(e.logprobs, e.loss_mask) if not m]) == 0.0)
