"""Asynchronous (one step off-policy) rollouts: the bookkeeping, on the fake vLLM engine of test_vllm_generation.

The fake engine samples from its own copy of the policy, changed only when the trainer pushes weights, so which
weights produced an episode can be read off the episode itself: the trainer below snapshots the policy before and
after every update (version v = the weights after v updates), and an episode's recorded sampler log-probabilities
equal those of exactly one version. In async mode every episode of step t >= 1 must come from version t - 1 (the
weights the engine held while update t - 1 ran, the rollout beside it) and step 0's from version 0; in sync mode
step t's from version t. A resumed async run's first step comes from the resumed weights.
"""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import WordOverlapRetriever, tiny_llama
# the fake vLLM engine (its own copy of the policy, HFAgent sampling) and distinct rewards within each group
from test_vllm_generation import FakeLLM, RandomRewards

from search_gym.envs import SearchVectorEnv
from search_gym.trainers.config import VLLMConfig, train_env
from search_gym.trainers.grpo import GRPOTrainer
from search_gym.trainers.grpo_config import GRPOConfig
from search_gym.trainers.rollout import HFGenerator
from search_gym.trainers.vllm_generation import VLLMGenerator

STEPS = 3
# Bounds of the importance weights, inside the spread of a one-step-stale batch here (0.79 to 1.36): the test sees
# both applied as configured.
CLIP_MIN, CLIP_MAX = 0.85, 1.25
SAME = 1e-3  # largest per-token gap between an engine's sampling log-probabilities and a forward of the same weights


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while this module runs: its models are tiny, and in async mode the rollout thread and the
    update already run side by side; two intra-op pools on a busy 2-core machine made each forward ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class LateEngine(FakeLLM):
    """A fake engine that generates a background rollout's turns only once the update beside it has finished: the
    rollout is still running when the update ends (the case the bookkeeping exists for), whatever the timing."""

    def __init__(self, policy, tokenizer):
        super().__init__(policy, tokenizer)
        self.update_done = threading.Event()
        self.update_done.set()

    def generate(self, prompts, sampling_params, use_tqdm=False):
        if threading.current_thread() is not threading.main_thread():
            assert self.update_done.wait(timeout=60), "the update beside this rollout never finished"
        return super().generate(prompts, sampling_params, use_tqdm)


class RecordingGRPO(RandomRewards, GRPOTrainer):
    """GRPO with distinct rewards in each group (so every update moves the weights) that records every version of
    the weights, every rollout it starts, and each update's episodes and importance weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.versions: dict[int, dict[str, torch.Tensor]] = {}
        self.rolled_out: list[int] = []
        self.updates: list[dict] = []

    def rollout(self, step):
        self.rolled_out.append(step)
        return super().rollout(step)

    def update(self, episodes):
        self.versions[self.step] = snapshot(self.model)
        self.updates.append({"step": self.step, "episodes": episodes})
        self.generator.llm.update_done.clear()
        try:
            metrics = super().update(episodes)
        finally:
            self.generator.llm.update_done.set()
        self.versions[self.step + 1] = snapshot(self.model)
        return metrics

    def sampler_weights(self, policy_logps, batch):
        weights = super().sampler_weights(policy_logps, batch)
        self.updates[-1].update(weights=weights.detach().clone(), loss_mask=batch.loss_mask.clone())
        return weights


def make_config(output_dir, **overrides) -> GRPOConfig:
    values = dict(output_dir=str(output_dir), seed=0, learning_rate=1e-2, max_steps=STEPS, save_steps=0,
                  questions_per_step=2, group_size=2, env=train_env(max_turns=2, reward="f1"), max_turn_tokens=8,
                  max_response_tokens=160, beta=0.0, tensorboard=False, progress=False, plots=False,
                  generation_backend="vllm",
                  vllm=VLLMConfig(importance_sampling_mode="token_truncate", importance_sampling_clip_min=CLIP_MIN,
                                  importance_sampling_clip_max=CLIP_MAX))
    values.update(overrides)
    return GRPOConfig(**values)


def make_trainer(tokenizer, qa_path, corpus_path, output_dir, trainer_cls=RecordingGRPO, **overrides):
    policy = tiny_llama(tokenizer, 0)
    generator = VLLMGenerator(policy, tokenizer, model_path="unused", seed=0, llm=LateEngine(policy, tokenizer))
    env = SearchVectorEnv(num_envs=4, dataset=str(qa_path), split="test", retriever=WordOverlapRetriever(corpus_path),
                          max_turns=2)
    return trainer_cls(make_config(output_dir, **overrides), model=policy, tokenizer=tokenizer, env=env,
                       generator=generator)


@pytest.fixture(scope="module")
def runs(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path_factory):
    """The same 3-step GRPO run, synchronous and asynchronous: {mode: (trainer, logged rows)}."""
    out = {}
    for mode in ("sync", "async"):
        trainer = make_trainer(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path_factory.mktemp(mode),
                               async_rollouts=mode == "async")
        out[mode] = trainer, trainer.train()
    return out


def policy_token_logprobs(model, episode) -> torch.Tensor:
    """Log-probabilities (temperature 1) of the episode's policy tokens under ``model``, by a plain forward (the
    output layer only at the positions that predict policy tokens: the vocabulary is most of the cost)."""
    ids = torch.tensor([episode.input_ids])
    start = len(episode.prompt_ids) - 1  # the position that predicts the first response token
    positions = torch.tensor([start + j for j, m in enumerate(episode.loss_mask) if m])
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state[0, positions]
        logps = torch.log_softmax(model.lm_head(hidden).float(), dim=-1)
    return logps.gather(-1, ids[0, positions + 1, None])[:, 0]


def sampler_logprobs(episode) -> torch.Tensor:
    return torch.tensor([lp for lp, m in zip(episode.logprobs, episode.loss_mask) if m])


@pytest.fixture(scope="module")
def score(tokenizer):
    """``score(trainer, version, episode)``: :func:`policy_token_logprobs` under that version of the trainer's
    weights, computed once per module."""
    scorer, cache = tiny_llama(tokenizer, 0).eval(), {}

    def score(trainer, version, episode):
        key = (id(trainer), version, id(episode))
        if key not in cache:
            scorer.load_state_dict(trainer.versions[version])
            cache[key] = (trainer, episode, policy_token_logprobs(scorer, episode))  # objects kept: ids stay unique
        return cache[key][2]

    return score


def sampled_by(score, trainer, episode) -> list[int]:
    """The versions of the trainer's weights whose log-probabilities are the episode's sampler log-probabilities."""
    sampler = sampler_logprobs(episode)
    return [version for version in sorted(trainer.versions)
            if float((score(trainer, version, episode) - sampler).abs().max()) < SAME]


def expected_version(mode: str, step: int, first: int = 0) -> int:
    """Updates in the weights that sample step ``step``'s episodes (``first``: the step a run started or resumed
    at, collected synchronously)."""
    return step if mode == "sync" or step == first else step - 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_episode_was_sampled_by_the_weights_it_records(runs, score, mode):
    trainer, _ = runs[mode]
    assert [u["step"] for u in trainer.updates] == list(range(STEPS))
    assert sorted(trainer.versions) == list(range(STEPS + 1))
    for update in trainer.updates:
        want = expected_version(mode, update["step"])
        for ep in update["episodes"]:
            assert ep.num_policy_tokens > 0
            # exactly one version of the weights produced the tokens: no episode mixes versions, and the versions
            # differ enough to tell apart
            assert sampled_by(score, trainer, ep) == [want], (mode, update["step"])
            assert ep.weights_version == want
            assert ep.to_dict()["weights_version"] == want  # saved with the episode's token fields


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_importance_weights_are_the_clipped_policy_over_sampler_ratio(runs, score, mode):
    """The update of step t weights each policy token by exp(logp_t - logp_sampler) clipped to [C_min, C_max],
    where logp_t is the policy being updated (version t) and logp_sampler the episode's recorded sampler
    log-probability: ~1 in sync mode, the staleness in async mode."""
    trainer, _ = runs[mode]
    staleness = []
    for update in trainer.updates:
        for b, ep in enumerate(update["episodes"]):
            policy = score(trainer, update["step"], ep)
            expected = torch.exp(policy - sampler_logprobs(ep)).clamp(min=CLIP_MIN, max=CLIP_MAX)
            used = update["weights"][b][update["loss_mask"][b] > 0]
            torch.testing.assert_close(used, expected, atol=1e-4, rtol=1e-4)
            if update["step"] > 0:
                staleness.append(float((used - 1).abs().max()))
    if mode == "sync":
        assert max(staleness) < 1e-2
    else:  # one update apart: ratios visibly away from 1, clipped at both bounds
        assert max(staleness) > 0.1
        used = torch.cat([u["weights"][u["loss_mask"] > 0] for u in trainer.updates[1:]])
        assert (used == CLIP_MIN).any() and (used == CLIP_MAX).any()


def test_no_episode_is_lost_or_duplicated(runs):
    """Each step is rolled out once (none past max_steps), and trains on its own questions, the synchronous run's."""
    questions = {}
    for mode, (trainer, _) in runs.items():
        assert trainer.rolled_out == list(range(STEPS))
        questions[mode] = [[ep.question_id for ep in u["episodes"]] for u in trainer.updates]
        for step, ids in enumerate(questions[mode]):
            assert sorted(ids) == sorted(trainer.questions_for_step(step) * trainer.config.group_size)
        episodes = [id(ep) for u in trainer.updates for ep in u["episodes"]]
        assert len(set(episodes)) == len(episodes) == STEPS * 4
        assert trainer.pending_rollout is None
    assert questions["async"] == questions["sync"]
    assert len({tuple(q) for q in questions["sync"]}) > 1  # the steps' batches differ: a shift would show


def test_policy_lag_is_logged(runs):
    (sync, sync_rows), (asynchronous, async_rows) = runs["sync"], runs["async"]
    assert [r["charts/policy_lag"] for r in sync_rows] == [0.0] * STEPS
    assert [r["charts/policy_lag"] for r in async_rows] == [0.0] + [1.0] * (STEPS - 1)
    for trainer in (sync, asynchronous):
        # one push per update, and the engine ends on the trained weights
        assert trainer.generator.syncs == STEPS and trainer.sampler_version == STEPS
        engine = dict(trainer.generator.llm.model.inner.named_parameters())
        assert all(torch.equal(engine[n], p) for n, p in trainer.model.named_parameters())


def test_a_resumed_async_run_starts_synchronously(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, runs, score):
    first = make_trainer(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, async_rollouts=True, max_steps=1)
    first.train()
    resumed = make_trainer(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, async_rollouts=True)
    rows = resumed.train()
    assert [r["step"] for r in rows] == [2, 3]
    assert [r["charts/policy_lag"] for r in rows] == [0.0, 1.0]
    assert resumed.rolled_out == [1, 2]
    sync_questions = [[ep.question_id for ep in u["episodes"]] for u in runs["sync"][0].updates]
    for update in resumed.updates:
        assert [ep.question_id for ep in update["episodes"]] == sync_questions[update["step"]]
        want = expected_version("async", update["step"], first=1)
        for ep in update["episodes"]:
            assert ep.weights_version == want
            assert sampled_by(score, resumed, ep) == [want]


class FailingRollout(RecordingGRPO):
    def rollout(self, step):
        if step == 1:
            raise RuntimeError("engine lost")
        return super().rollout(step)


def test_a_background_rollout_error_reaches_the_caller(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path):
    trainer = make_trainer(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, trainer_cls=FailingRollout,
                           async_rollouts=True, max_steps=2)
    with pytest.raises(RuntimeError, match="engine lost"):
        trainer.train()
    assert [u["step"] for u in trainer.updates] == [0]  # step 0 updated while step 1's rollout failed
    assert trainer.generator.syncs == 0  # the weights were not pushed after a failed rollout
    assert trainer.pending_rollout is None
    assert not [t for t in threading.enumerate() if t.name.startswith("async-rollout")]


def test_async_needs_a_generator_with_its_own_weights(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path):
    with pytest.raises(ValueError, match="generation_backend 'hf' samples from the policy being updated"):
        make_config(tmp_path, async_rollouts=True, generation_backend="hf")
    with pytest.raises(ValueError, match="importance_sampling_correction"):
        make_config(tmp_path, async_rollouts=True, vllm=VLLMConfig(importance_sampling_correction=False))
    with pytest.raises(ValueError, match="enable_sleep_mode"):
        make_config(tmp_path, async_rollouts=True, vllm=VLLMConfig(enable_sleep_mode=True))
    # a config that names vllm, handed a generator that samples from the policy itself
    policy = tiny_llama(tokenizer, 0)
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test",
                          retriever=WordOverlapRetriever(tiny_corpus_path), max_turns=2)
    with pytest.raises(ValueError, match="HFGenerator samples from the policy being updated"):
        GRPOTrainer(make_config(tmp_path, async_rollouts=True), model=policy, tokenizer=tokenizer, env=env,
                    generator=HFGenerator(policy, tokenizer))
