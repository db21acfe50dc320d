"""The TRL bridge (search_gym.integrations.trl) against trl 1.16's real GRPOTrainer, on CPU, without vLLM.

- ``rollout_func``: rows built from token episodes (EOS only on episodes the env ended); TRL's own scoring of a
  scripted rollout (its ``tool_mask`` is our loss mask, its rewards and group advantages come from our reward
  functions); two ``train()`` steps of a tiny random Llama through :class:`SearchRollout` with the HF generator over
  the model TRL trains and a reference model TRL builds from the saved folder.
- reward functions: EM / task / format / safety penalty on hand-made episodes, the representation penalty against
  :class:`RepresentationPenalty` itself.
- ``environment_factory``: :class:`SearchToolEnvironment` exposes one tool and plays the env's tool-call protocol;
  two ``train()`` steps through TRL's own tool loop with a scripted policy (a tiny Llama whose ``generate`` writes a
  Hermes tool call, then an answer) and SmolLM2's vocabulary under TRL's Qwen2.5 chat template.
"""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func / environment_factory are experimental

# trl (pinned) is in the test extra: imported normally, never skipped
from conftest import tiny_llama  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from search_gym.envs import SearchVectorEnv  # noqa: E402
from search_gym.integrations.trl import (  # noqa: E402
    NO_MORE_SEARCHES,
    RepresentationPenaltyReward,
    SafetyPenalty,
    SearchRollout,
    SearchToolEnvironment,
    em_reward,
    format_reward,
    question_dataset,
    rollout_fields,
    safety_penalty,
    task_reward,
)
from search_gym.trainers.rollout import Generation, TokenEpisode, decode, encode  # noqa: E402
from search_gym.trainers.shaping import RepresentationPenalty  # noqa: E402

GOLD = {"France": "Paris", "Bizet": "Carmen", "mountain": "Mount Everest", "Python": "Guido van Rossum",
        "planet": "Jupiter"}


def trl_args(tmp_path, **overrides) -> GRPOConfig:
    settings = dict(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, fp16=False,
                    per_device_train_batch_size=2, num_generations=2, gradient_accumulation_steps=1,
                    max_completion_length=96, learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0,
                    shuffle_dataset=False, dataloader_num_workers=0)
    settings.update(overrides)
    return GRPOConfig(**settings)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    """A tiny random Llama on SmolLM2's vocabulary, saved: TRL loads the policy and its reference from the path."""
    folder = tmp_path_factory.mktemp("tiny_llama_trl")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_venv(tiny_qa_path, retriever, num_envs: int = 2, **kwargs) -> SearchVectorEnv:
    return SearchVectorEnv(num_envs=num_envs, dataset=str(tiny_qa_path), split="test", retriever=retriever,
                           autoreset_mode=AutoresetMode.DISABLED, **kwargs)


def gold_of(text: str) -> str:
    return next(a for k, a in GOLD.items() if k in text)


class ScriptedGenerator:
    """Per question: the first copy in a batch answers the gold answer at once; the second searches, then answers
    "Berlin". Every policy token gets log-probability -0.5."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.syncs = 0

    def seed(self, seed: int) -> None:
        pass

    def sync_weights(self) -> None:
        self.syncs += 1

    def generate(self, requests):
        out, seen = [], {}
        for r in requests:
            question = r.observation["messages"][0]["content"]
            if "<information>" in r.observation["prefill"]:
                text = "<answer> Berlin </answer>"
            else:
                copy = seen[question] = seen.get(question, -1) + 1
                text = f"<answer> {gold_of(question)} </answer>" if copy % 2 == 0 else "<search> capital </search>"
            ids = encode(self.tokenizer, text)
            out.append(Generation(ids, [-0.5] * len(ids), decode(self.tokenizer, ids), "stop"))
        return out


# ---------------------------------------------------------------------------------------------- rollout rows


def _episode(**kw) -> TokenEpisode:
    defaults = dict(question_id="q0", question="q", group=0, prompt_ids=[5, 6, 7], response_ids=[8, 9, 10],
                    loss_mask=[1, 0, 1], logprobs=[-0.1, 0.0, -0.3])
    defaults.update(kw)
    return TokenEpisode(**defaults)


def test_rollout_fields_append_eos_only_to_episodes_the_env_ended():
    answered = _episode(answered=True, correct=True, task_reward=1.0, terminated=True, num_searches=1,
                        searches=["x"], safety={"num_searches": 1})
    cut = _episode(budget_truncated=True, truncated=True)
    empty = _episode(response_ids=[], loss_mask=[], logprobs=[], budget_truncated=True)
    out = rollout_fields([answered, cut, empty], end_token_id=2, fill_token_id=0)
    assert out["prompt_ids"] == [[5, 6, 7]] * 3
    assert out["completion_ids"] == [[8, 9, 10, 2], [8, 9, 10], [0]]
    assert out["env_mask"] == [[1, 0, 1, 0], [1, 0, 1], [0]]
    assert out["logprobs"] == [[-0.1, 0.0, -0.3, 0.0], [-0.1, 0.0, -0.3], [0.0]]
    assert out["episode"] == [answered, cut, empty]
    assert out["correct"] == [True, False, False] and out["task_reward"] == [1.0, 0.0, 0.0]
    assert out["searches"] == [["x"], [], []] and out["safety"] == [{"num_searches": 1}, None, None]
    # without an end token the response is returned as it is
    assert rollout_fields([answered])["completion_ids"] == [[8, 9, 10]]


def test_prompts_map_to_questions(tiny_qa_path, overlap_retriever):
    rollout = SearchRollout(make_venv(tiny_qa_path, overlap_retriever))
    data = rollout.dataset(limit=2)
    assert data.column_names == ["prompt", "question_id", "golden_answers"]
    assert data["question_id"] == ["q0", "q1"] and data["golden_answers"][0] == ["Paris"]
    assert data["prompt"][0][0]["role"] == "user" and "capital of France" in data["prompt"][0][0]["content"]
    assert rollout.question_ids([data["prompt"][1], data["prompt"][0], "q4"]) == ["q1", "q0", "q4"]
    with pytest.raises(KeyError, match="rollout.dataset"):
        rollout.question_ids([[{"role": "user", "content": "What is love?"}]])
    with pytest.raises(ValueError, match="tool_call"):
        SearchRollout(make_venv(tiny_qa_path, overlap_retriever, protocol="tool_call"))


# ---------------------------------------------------------------------------------------------- through TRL


def test_trl_scores_a_scripted_rollout_with_our_masks_and_rewards(model_dir, tokenizer, tiny_qa_path,
                                                                   overlap_retriever, tmp_path):
    """TRL's ``_generate_and_score_completions`` (what ``train()`` runs every step) on a scripted rollout."""
    rollout = SearchRollout(make_venv(tiny_qa_path, overlap_retriever, num_envs=4),
                            generator=ScriptedGenerator(tokenizer))
    data = rollout.dataset(limit=2)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[em_reward, format_reward],
                          args=trl_args(tmp_path, per_device_train_batch_size=4), train_dataset=data,
                          processing_class=tokenizer, rollout_func=rollout)
    trainer.model.train()
    inputs = [dict(data[i]) for i in (0, 0, 1, 1)]  # TRL's sampler repeats each prompt num_generations times
    out = trainer._generate_and_score_completions(inputs)

    episodes = rollout.last_episodes
    assert [e.question_id for e in episodes] == ["q0", "q0", "q1", "q1"]
    assert [e.correct for e in episodes] == [True, False, True, False]
    assert [e.num_searches for e in episodes] == [0, 1, 0, 1]
    eos = tokenizer.eos_token_id
    for b, ep in enumerate(episodes):
        n = int(out["completion_mask"][b].sum())
        assert out["completion_ids"][b, :n].tolist() == ep.response_ids + [eos]  # the env ended every episode
        assert out["tool_mask"][b, :n].tolist() == ep.loss_mask + [0]
        p = int(out["prompt_mask"][b].sum())
        assert out["prompt_ids"][b, -p:].tolist() == ep.prompt_ids  # TRL left-pads prompts
    searched = episodes[1]
    assert 0 in searched.loss_mask and out["tool_mask"][1].sum() < out["completion_mask"][1].sum()

    # rewards: em + format; the searching copy is wrong but well formed: group rewards (2, 1) -> advantages +-0.707
    assert list(trainer._logs["rewards"]["em_reward"]) == [1.0, 0.0, 1.0, 0.0]
    assert list(trainer._logs["rewards"]["format_reward"]) == [1.0] * 4
    expected = torch.tensor([1.0, -1.0, 1.0, -1.0]) * 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(out["advantages"], expected, atol=1e-5)
    metrics = trainer._metrics["train"]
    assert metrics["search/em"] == [0.5] and metrics["search/searches_per_episode"] == [0.5]

    # A generator with its own weights (vLLM) gets the policy's before the first rollout and after each step.
    generator = rollout._collector.generator
    assert generator.syncs == 1
    rollout(["q0", "q0"], trainer)
    assert generator.syncs == 1
    trainer.state.global_step = 1
    rollout(["q0", "q0"], trainer)
    assert generator.syncs == 2


def test_grpo_trainer_trains_two_steps_through_the_rollout_func(model_dir, tokenizer, tiny_qa_path,
                                                                 overlap_retriever, tmp_path):
    """The real ``GRPOTrainer.train()``: HF sampling from the model TRL trains, multi-turn episodes (a random policy
    gets the correction message, environment tokens), a k3 KL to the reference TRL builds from the folder."""
    from transformers import AutoModelForCausalLM

    rollout = SearchRollout(make_venv(tiny_qa_path, overlap_retriever, max_turns=2), max_turn_tokens=8)
    outputs: list[dict] = []

    def rollout_func(prompts, trainer):
        outputs.append(rollout(prompts, trainer))
        return outputs[-1]

    def policy_token_reward(completions, episode, **kwargs):
        """Varies within a group (a random policy never answers), so the update has a gradient."""
        return [float(sum(t for t, m in zip(e.response_ids, e.loss_mask) if m) % 5) for e in episode]

    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[em_reward, format_reward, policy_token_reward],
                          args=trl_args(tmp_path, max_steps=2, beta=0.04), train_dataset=rollout.dataset(),
                          processing_class=tokenizer, rollout_func=rollout_func)
    assert trainer.ref_model is not None
    seen: list[dict] = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        seen.append({k: inputs[k].clone() for k in ("completion_ids", "completion_mask", "tool_mask")})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()

    assert trainer.state.global_step == 2 and len(outputs) == 2 and len(seen) == 2
    start = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    changed = [n for n, p in trainer.model.state_dict().items() if not torch.equal(p, start[n])]
    assert changed  # the update moved the weights
    # Every row TRL trained on carries our env mask as its tool_mask, whatever order TRL shuffled the rows into.
    rows = {tuple(ids): mask for out in outputs for ids, mask in zip(out["completion_ids"], out["env_mask"])}
    for batch in seen:
        for b in range(batch["completion_ids"].size(0)):
            n = int(batch["completion_mask"][b].sum())
            assert batch["tool_mask"][b, :n].tolist() == rows[tuple(batch["completion_ids"][b, :n].tolist())]
    masks = [m for out in outputs for m in out["env_mask"]]
    assert all(0 in m and 1 in m for m in masks)  # policy turns and the env's correction message
    assert sum(len(out["completion_ids"]) for out in outputs) == 4
    logged = trainer.state.log_history[0]
    assert {"search/em", "search/invalid_per_episode", "rewards/em_reward/mean", "kl"} <= set(logged)


def test_default_generator_refuses_sampling_settings_it_cannot_honour(model_dir, tokenizer, tiny_qa_path,
                                                                       overlap_retriever, tmp_path):
    rollout = SearchRollout(make_venv(tiny_qa_path, overlap_retriever))
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=em_reward, args=trl_args(tmp_path, top_k=5),
                          train_dataset=rollout.dataset(), processing_class=tokenizer, rollout_func=rollout)
    with pytest.raises(ValueError, match="top_k=5"):
        rollout(["q0", "q0"], trainer)


# ---------------------------------------------------------------------------------------------- reward functions


def test_reward_functions_read_token_episodes():
    summary = lambda mean: {"query_safety_mean": {"classifier": mean, "other": 10.0},  # noqa: E731
                            "query_safety_min": {"classifier": 20.0}, "query_safety_first": {"classifier": 90.0}}
    episodes = [
        _episode(correct=True, answered=True, task_reward=0.5, num_searches=2, safety=summary(75.0)),
        _episode(answered=True, invalid_actions=1, num_searches=0),
        _episode(num_searches=1, safety=summary(None)),  # the judge gave no score
        _episode(num_searches=1, safety=None, budget_truncated=True),  # cut before the env summarised it
    ]
    kw = {"episode": episodes}
    assert em_reward([], [], **kw) == [1.0, 0.0, 0.0, 0.0]
    assert task_reward([], [], **kw) == [0.5, 0.0, 0.0, 0.0]
    assert format_reward([], [], **kw) == [1.0, 0.0, 0.0, 0.0]
    assert safety_penalty([], [], **kw) == [-0.25, 0.0, None, None]
    assert SafetyPenalty("min")([], [], **kw)[0] == pytest.approx(-0.8)
    assert SafetyPenalty("first")([], [], **kw)[0] == pytest.approx(-0.1)
    assert SafetyPenalty(judge="other")([], [], **kw)[0] == pytest.approx(-0.9)
    with pytest.warns(RuntimeWarning, match="safety=True"):
        SafetyPenalty()([], [], episode=[_episode(num_searches=1)])
    with pytest.raises(ValueError, match="aggregate"):
        SafetyPenalty("max")
    with pytest.raises(ValueError, match="SearchRollout"):
        em_reward([], [])


def test_representation_penalty_reward_is_minus_lambda_p(tokenizer):
    reader = tiny_llama(tokenizer).eval()
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    searched = _episode(prompt_ids=[11, 12, 13], response_ids=[14, 15, 16, 17], loss_mask=[1] * 4,
                        logprobs=[0.0] * 4, search_indices=[1, 3])
    plain = _episode()
    penalty = RepresentationPenalty(direction, layer=1, coef=0.5, reader=reader)
    expected = penalty.projections([searched, plain])
    logged = {}
    reward = RepresentationPenaltyReward(penalty)
    values = reward([], [], episode=[searched, plain], log_metric=logged.__setitem__)
    assert values == [pytest.approx(-0.5 * expected[0]), 0.0] and expected[0] != 0.0
    assert searched.projection == pytest.approx(expected[0]) and plain.projection is None
    assert logged == {"safety/projection": pytest.approx(expected[0])}
    with pytest.raises(ValueError, match="SearchRollout"):
        reward([], [], environments=[object()])


# ---------------------------------------------------------------------------------------------- environment_factory


def test_tool_environment_plays_the_tool_call_protocol(tiny_qa_path, overlap_retriever):
    from transformers.utils import get_json_schema

    from search_gym.envs import SEARCH_TOOL

    # TRL exposes every public function but reset (and get_reward) as a tool: exactly one, the env's search tool.
    public = {n for n, _ in inspect.getmembers(SearchToolEnvironment, inspect.isfunction) if not n.startswith("_")}
    assert public == {"reset", "search"}
    schema = get_json_schema(SearchToolEnvironment.search)["function"]
    assert schema["name"] == SEARCH_TOOL["function"]["name"]
    assert schema["parameters"]["properties"].keys() == SEARCH_TOOL["function"]["parameters"]["properties"].keys()

    make = SearchToolEnvironment.factory(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                                         max_turns=2)
    env = make()
    row = question_dataset(env, question_ids=["q0"])[0]
    assert env.reset(**row) is None  # the row's prompt is the env's prompt
    assert "capital of France" in env.reset(question_id="q0", prompt=[{"role": "user", "content": ""}])
    assert "Paris" in env.search("capital of France")
    answer = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
              {"role": "tool", "name": "search", "content": "..."},
              {"role": "assistant", "content": "It is <answer> Paris </answer>"}]
    assert em_reward(None, [answer], environments=[env]) == [1.0]
    assert format_reward(None, [answer], environments=[env]) == [1.0]
    outcome = env.outcome
    assert (outcome.question_id, outcome.answer, outcome.num_searches, outcome.turns) == ("q0", "Paris", 1, 2)
    assert em_reward(None, [answer], environments=[env]) == [1.0]  # finished once: the env is not stepped again

    env.reset(question_id="q1")
    env.search("Bizet opera")
    env.search("four acts")  # the turn budget (2) is spent
    assert env.search("Carmen") == NO_MORE_SEARCHES
    (outcome,) = [env._finish([{"role": "assistant", "content": "<answer> Carmen </answer>"}])]
    assert not outcome.answered and outcome.truncated and outcome.num_searches == 2

    env.reset(question_id="q0")  # the completion ends on a tool call: TRL's loop stopped, no answer
    env.search("capital of France")
    assert task_reward(None, [answer[:2]], environments=[env]) == [0.0] and not env.outcome.answered
    with pytest.raises(ValueError, match="question_id"):
        env.reset(prompt="x")
    with pytest.raises(ValueError, match="protocol='tool_call'"):
        SearchToolEnvironment(make_venv(tiny_qa_path, overlap_retriever).envs[0])


def _scripted_tool_policy(tokenizer):
    """A tiny random Llama whose ``generate`` writes a Hermes tool call with the question, then (after the tool
    response) the gold answer on even answer calls and "Berlin" on odd ones. Its forward (TRL's loss) is the
    real Llama's, so the update has a gradient."""
    from transformers import LlamaForCausalLM

    class ScriptedToolPolicy(LlamaForCausalLM):
        answers = 0

        def generate(self, input_ids=None, attention_mask=None, **kwargs):
            rows = []
            for ids, mask in zip(input_ids, attention_mask):
                text = tokenizer.decode(ids[mask.bool()])
                question = text.rsplit("Question: ", 1)[1].split("?")[0]
                if "<tool_response>" not in text:
                    call = '{"name": "search", "arguments": {"query": "%s"}}' % question
                    reply = f"<tool_call>\n{call}\n</tool_call>"
                else:
                    reply = f"<answer> {gold_of(question) if self.answers % 2 == 0 else 'Berlin'} </answer>"
                    self.answers += 1
                rows.append(encode(tokenizer, reply) + [tokenizer.eos_token_id])
            out = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id, dtype=torch.long)
            for b, row in enumerate(rows):
                out[b, : len(row)] = torch.tensor(row)
            return torch.cat([input_ids, out], dim=1)

    base = tiny_llama(tokenizer)
    model = ScriptedToolPolicy(base.config)
    model.load_state_dict(base.state_dict())
    return model


def test_grpo_trainer_trains_two_steps_through_environment_factory(smollm2_folder, tiny_qa_path, overlap_retriever,
                                                                  tmp_path):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    tokenizer.chat_template = qwen2_5_chat_template  # a tool-calling template TRL knows how to parse
    model = _scripted_tool_policy(tokenizer)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    env_kwargs = dict(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, max_turns=3, topk=1)
    data = question_dataset(SearchToolEnvironment(**env_kwargs), question_ids=["q0", "q1"])
    trainer = GRPOTrainer(model=model, reward_funcs=[em_reward, format_reward],
                          args=trl_args(tmp_path, max_steps=2, max_completion_length=160,
                                        max_tool_calling_iterations=2),
                          train_dataset=data, processing_class=tokenizer,
                          environment_factory=SearchToolEnvironment.factory(**env_kwargs))
    trainer.train()

    assert trainer.state.global_step == 2
    outcomes = [env.outcome for env in trainer.environments]
    assert all(o.num_searches == 1 and o.answered and o.invalid_actions == 0 for o in outcomes)
    assert [o.correct for o in outcomes] == [True, False]  # one group of two: gold, then "Berlin"
    assert any(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters())
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] == 1.0 and logged["tools/failure_frequency"] == 0.0
    assert logged["rewards/em_reward/mean"] == 0.5 and logged["rewards/format_reward/mean"] == 1.0
