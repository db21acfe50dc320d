"""The trainers' vLLM backend without vLLM: a fake engine with vLLM's generate() and engine layout.

The fake engine holds its own copy of the policy (as a colocated vLLM engine does) and samples with HFAgent from
that copy, so what VLLMGenerator does around generation runs for real: per-request budgets, the sampler's
log-probabilities, weights pushed into the engine's model after every optimiser step (and after a resume), the
prefix cache reset, and sleep / wake around the update. The real engine runs in the GPU benchmark.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import peft  # in the test extra
import pytest
import torch

from conftest import tiny_llama

from search_gym.agents.hf import HFAgent
from search_gym.envs import SearchVectorEnv
from search_gym.trainers.config import VLLMConfig, train_env
from search_gym.trainers.grpo import GRPOTrainer
from search_gym.trainers.grpo_config import GRPOConfig
from search_gym.trainers.vllm_generation import VLLMGenerator, engine_model, policy_weights


class FakeEngineModel(torch.nn.Module):
    """The engine's model: a separate copy of the policy with vLLM's ``load_weights(iterable)``."""

    def __init__(self, policy):
        super().__init__()
        self.inner = copy.deepcopy(policy)
        self.loaded: list[str] = []

    def load_weights(self, weights):
        params = dict(self.inner.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)
            self.loaded.append(name)


class FakeLLM:
    def __init__(self, policy, tokenizer):
        self.model = FakeEngineModel(policy)
        runner = SimpleNamespace(model=self.model)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))
        self.agent = HFAgent(self.model.inner, tokenizer, temperature=1.0, few_shot=0, seed=0)
        self.events: list[str] = []
        self.budgets: list[list[int]] = []
        self.seeds: list[list[int | None]] = []

    def generate(self, prompts, sampling_params, use_tqdm=False):
        assert not self.events or self.events[-1] != "sleep", "generate() on a sleeping engine"
        self.events.append("generate")
        self.budgets.append([p.max_tokens for p in sampling_params])
        self.seeds.append([p.seed for p in sampling_params])
        outputs = [None] * len(prompts)
        by_budget: dict[int, list[int]] = {}
        for i, p in enumerate(sampling_params):
            by_budget.setdefault(p.max_tokens, []).append(i)
        for budget, idx in by_budget.items():
            steps = self.agent.generate_ids([prompts[i]["prompt_token_ids"] for i in idx], max_new_tokens=budget)
            for i, step in zip(idx, steps):
                completion = SimpleNamespace(
                    text=step.text, token_ids=step.completion_ids, finish_reason="length" if step.finish_reason == "length" else "stop",
                    logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(step.completion_ids, step.logprobs)],
                    stop_reason=step.metadata.get("stop_string"))
                outputs[i] = SimpleNamespace(prompt_token_ids=prompts[i]["prompt_token_ids"], outputs=[completion])
        return outputs

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")

    def sleep(self, level=1):
        self.events.append("sleep")

    def wake_up(self, tags=None):
        self.events.append("wake:" + ",".join(tags or ["all"]))


def engine_equals_policy(llm, policy) -> bool:
    engine = dict(llm.model.inner.named_parameters())
    return all(torch.equal(engine[name], p) for name, p in policy.named_parameters())


def config(tmp_path, **overrides) -> GRPOConfig:
    values = dict(output_dir=str(tmp_path), seed=0, learning_rate=1e-2, max_steps=2, save_steps=1,
                  questions_per_step=2, group_size=2, env=train_env(max_turns=2, reward="f1"), max_turn_tokens=8,
                  max_response_tokens=160, beta=0.0, tensorboard=False, progress=False)
    values.update(overrides)
    return GRPOConfig(**values)


class RandomRewards:
    """Distinct rewards within each group, so the update moves the policy away from the engine's copy (and the
    loss depends on which tokens count)."""

    def collect(self, step):
        episodes = super().collect(step)
        for i, ep in enumerate(episodes):
            ep.task_reward = ep.reward = float(i % 2)
        return episodes


class RandomRewardGRPO(RandomRewards, GRPOTrainer):
    pass


def make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, **overrides):
    policy = tiny_llama(tokenizer, 0)
    llm = FakeLLM(policy, tokenizer)
    cfg = config(tmp_path, **overrides)
    generator = VLLMGenerator(policy, tokenizer, model_path="unused", temperature=cfg.temperature, seed=0, llm=llm,
                              enable_sleep_mode=cfg.vllm.enable_sleep_mode)
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                          max_turns=2)
    return RandomRewardGRPO(cfg, model=policy, tokenizer=tokenizer, env=env, generator=generator), llm


@pytest.mark.parametrize("sleep", [False, True])
def test_weights_reach_the_engine_after_every_step(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, sleep):
    trainer, llm = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path,
                                vllm=VLLMConfig(enable_sleep_mode=sleep))
    assert engine_equals_policy(llm, trainer.model)
    episodes = trainer.collect(0)
    # the sampler's log-probabilities reach every policy token; the env's prefills and passages carry none
    for ep in episodes:
        policy_lps = [lp for lp, m in zip(ep.logprobs, ep.loss_mask) if m]
        assert policy_lps and all(lp <= 0 for lp in policy_lps)
    assert {b for call in llm.budgets for b in call} <= {8}
    trainer.train()
    assert trainer.generator.syncs == 2 and engine_equals_policy(llm, trainer.model)
    names = {n for n, _ in trainer.model.named_parameters()}
    assert set(llm.model.loaded) == names
    if sleep:  # sleep before each update, weights first then the KV cache on waking, no generation while asleep
        assert llm.events.count("sleep") == 2
        i = llm.events.index("sleep")
        assert llm.events[i + 1:i + 4] == ["wake:weights", "wake:kv_cache", "reset_prefix_cache"]
    else:
        assert "sleep" not in llm.events
    assert llm.events[-1] == "reset_prefix_cache"


def test_resume_pushes_the_resumed_weights(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    first, _ = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, max_steps=1)
    first.train()
    resumed, llm = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, max_steps=2)
    rows = resumed.train()
    assert [r["step"] for r in rows] == [2]
    assert resumed.generator.syncs == 2  # once after resuming, once after step 2
    assert engine_equals_policy(llm, resumed.model)


def test_policy_weights_names_match_a_plain_checkpoint(tokenizer):
    model = tiny_llama(tokenizer, 0)
    plain = {n for n, _ in model.named_parameters()}
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert {n for n, _ in policy_weights(lora)} == plain


def test_engine_model_reaches_the_runner():
    model = object()
    runner = SimpleNamespace(model=model)
    v0 = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))))
    wrapped = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(model_runner=None, worker=SimpleNamespace(model_runner=runner)))))
    assert engine_model(v0) is model and engine_model(wrapped) is model


def test_vllm_backend_needs_a_saved_start(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever)
    with pytest.raises(ValueError, match="saved model folder"):
        GRPOTrainer(config(tmp_path, generation_backend="vllm"), model=tiny_llama(tokenizer, 0), tokenizer=tokenizer,
                    env=env)
    with pytest.raises(ValueError, match="generation_backend"):
        GRPOTrainer(config(tmp_path, generation_backend="tgi"), model=tiny_llama(tokenizer, 0), tokenizer=tokenizer,
                    env=env)


def test_request_seeds_are_opt_in(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    """By default (as TRL) requests carry no seed: vLLM draws one noise tensor per batch rather than one generator
    call per sequence; request_seeds=True seeds each request from (the step's seed, its index)."""
    from search_gym.trainers.rollout import GenerationRequest

    prompt = tokenizer("Question: who?", add_special_tokens=False)["input_ids"]
    requests = [GenerationRequest(input_ids=list(prompt), observation={}, max_new_tokens=4) for _ in range(3)]
    seen = {}
    for flag in (False, True):
        policy = tiny_llama(tokenizer, 0)
        llm = FakeLLM(policy, tokenizer)
        generator = VLLMGenerator(policy, tokenizer, model_path="unused", seed=0, llm=llm, request_seeds=flag)
        generator.seed(7)
        generator.generate(requests)
        seen[flag] = llm.seeds[-1]
    assert seen[False] == [None, None, None]
    assert None not in seen[True] and len(set(seen[True])) == 3


class DetokenisingLLM(FakeLLM):
    """vLLM's text is its own detokeniser's, not ``tokenizer.decode(ids)``: here special tokens are skipped in the
    text (vLLM's default) and one is sampled into every completion."""

    def __init__(self, policy, tokenizer, special_id):
        super().__init__(policy, tokenizer)
        self.tokenizer, self.special_id = tokenizer, special_id

    def generate(self, prompts, sampling_params, use_tqdm=False):
        outputs = super().generate(prompts, sampling_params, use_tqdm)
        for out in outputs:
            completion = out.outputs[0]
            if len(completion.token_ids) > 2:
                completion.token_ids = [completion.token_ids[0], self.special_id, *completion.token_ids[2:]]
                completion.logprobs[1] = {self.special_id: SimpleNamespace(logprob=-1.0)}
            completion.text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        return outputs


def test_every_sampled_token_is_a_policy_token_whatever_the_engine_text(tokenizer, tiny_qa_path, overlap_retriever,
                                                                       tmp_path):
    """The collector keeps the tokens whose decode the env kept: the generator hands it the tokenizer's decode of
    the ids, so an engine whose text differs (special tokens skipped) loses no policy token."""
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert special != tokenizer.unk_token_id
    policy = tiny_llama(tokenizer, 0)
    llm = DetokenisingLLM(policy, tokenizer, special)
    cfg = config(tmp_path, max_steps=1)
    generator = VLLMGenerator(policy, tokenizer, model_path="unused", seed=0, llm=llm)
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                          max_turns=2)
    trainer = GRPOTrainer(cfg, model=policy, tokenizer=tokenizer, env=env, generator=generator)
    episodes = trainer.collect(0)
    assert any(special in ep.response_ids for ep in episodes)
    assert sum(ep.num_policy_tokens for ep in episodes) == trainer.collector.stats.generated_tokens


class OverconfidentLLM(FakeLLM):
    """An engine whose log-probabilities of every other request are 1 nat below the policy's per token."""

    def generate(self, prompts, sampling_params, use_tqdm=False):
        outputs = super().generate(prompts, sampling_params, use_tqdm)
        for i, out in enumerate(outputs):
            if i % 2 == 0:
                completion = out.outputs[0]
                completion.logprobs = [{t: SimpleNamespace(logprob=next(iter(e.values())).logprob - 1.0)}
                                       for t, e in zip(completion.token_ids, completion.logprobs)]
        return outputs


@pytest.mark.parametrize("shifted", [False, True])
def test_sampler_mismatch_is_measured_and_masked(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, shifted):
    """GRPO reweights vLLM rollouts by exp(policy - sampler) (TRL's sequence_mask by default): an engine equal to the
    policy gives ratios ~1; episodes whose sampler log-probs are far off are masked out of the policy loss."""
    policy = tiny_llama(tokenizer, 0)
    llm = (OverconfidentLLM if shifted else FakeLLM)(policy, tokenizer)
    generator = VLLMGenerator(policy, tokenizer, model_path="unused", seed=0, llm=llm)
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                          max_turns=2)
    trainer = RandomRewardGRPO(config(tmp_path, max_steps=1), model=policy, tokenizer=tokenizer, env=env,
                               generator=generator)
    row = trainer.train()[0]
    if shifted:
        assert row["sampling/logprob_gap"] == pytest.approx(0.5, abs=0.05)  # half the episodes, 1 nat per token
        assert row["sampling/masked_fraction"] == pytest.approx(0.5, abs=0.1)
    else:
        assert row["sampling/logprob_gap"] < 1e-3
        assert row["sampling/masked_fraction"] == 0.0 and row["sampling/is_ratio_mean"] == pytest.approx(1.0, abs=1e-2)


def test_sampler_correction_can_be_turned_off(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    policy = tiny_llama(tokenizer, 0)
    generator = VLLMGenerator(policy, tokenizer, model_path="unused", seed=0, llm=FakeLLM(policy, tokenizer))
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                          max_turns=2)
    trainer = RandomRewardGRPO(config(tmp_path, max_steps=1, vllm=VLLMConfig(importance_sampling_correction=False)),
                               model=policy, tokenizer=tokenizer, env=env, generator=generator)
    assert not any(k.startswith("sampling/") for k in trainer.train()[0])


def test_ppo_corrects_the_sampler_mismatch_as_grpo_does(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    """PPO takes its ratio against its own scoring of the batch, and weights the policy loss by the same TRL
    correction as GRPO: ~1 for an engine equal to the policy; episodes far off are masked out of the loss (the same
    episodes, since the fake engine samples from the policy's copy, give another loss)."""
    from search_gym.trainers.ppo import PPOTrainer
    from search_gym.trainers.ppo_config import PPOConfig

    class RandomRewardPPO(RandomRewards, PPOTrainer):
        pass

    rows = {}
    for shifted in (False, True):
        policy = tiny_llama(tokenizer, 0)
        llm = (OverconfidentLLM if shifted else FakeLLM)(policy, tokenizer)
        generator = VLLMGenerator(policy, tokenizer, model_path="unused", seed=0, llm=llm)
        env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever,
                              max_turns=2)
        cfg = PPOConfig(output_dir=str(tmp_path / str(shifted)), seed=0, learning_rate=1e-3, max_steps=1,
                        save_steps=0, questions_per_step=4, env=train_env(max_turns=2, reward="f1"), max_turn_tokens=8,
                        max_response_tokens=160, kl_coef=0.0, tensorboard=False, progress=False)
        rows[shifted] = RandomRewardPPO(cfg, model=policy, tokenizer=tokenizer, env=env, generator=generator).train()[0]
    same, shifted = rows[False], rows[True]
    assert same["sampling/logprob_gap"] < 1e-3
    assert same["sampling/masked_fraction"] == 0.0 and same["sampling/is_ratio_mean"] == pytest.approx(1.0, abs=1e-2)
    assert shifted["sampling/logprob_gap"] == pytest.approx(0.5, abs=0.05)  # half the episodes, 1 nat per token
    assert shifted["sampling/masked_fraction"] == pytest.approx(0.5, abs=0.1)
    assert shifted["losses/policy_loss"] != pytest.approx(same["losses/policy_loss"], abs=1e-7)
