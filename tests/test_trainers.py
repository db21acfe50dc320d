"""Trainers (search_gym.trainers): GRPO steps on a tiny in-memory model, exact resume from a checkpoint, the
representation penalty against a manual forward, and the config command line (flags > YAML > defaults)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math

import pytest

from conftest import reward_odd_tokens, tiny_llama
import torch

from search_gym.envs import SearchVectorEnv
from search_gym.trainers.config import (
    PenaltyConfig,
    VLLMConfig,
    add_dataclass_arguments,
    build_config,
    config_dict,
    train_env,
)
from search_gym.trainers.core import checkpoints, load_checkpoint, make_optimizer, save_checkpoint
from search_gym.trainers.grpo import GRPOTrainer
from search_gym.trainers.grpo_config import GRPOConfig
from search_gym.trainers.rollout import ENV, Generation, RolloutCollector, decode, encode
from search_gym.trainers.shaping import RepresentationPenalty, load_penalty

SEARCH = "<search>"


# ---------------------------------------------------------------------------------------------- fixtures




def tiny_model(tokenizer, seed: int = 0):
    """A random Llama on SmolLM2's vocabulary (hidden 32, 2 layers); the same seed gives the same weights."""
    return tiny_llama(tokenizer, seed)


def frozen(model):
    model.eval()
    model.requires_grad_(False)
    return model


def make_env(tiny_qa_path, retriever, num_envs: int = 4, **kwargs) -> SearchVectorEnv:
    kwargs.setdefault("max_turns", 2)
    return SearchVectorEnv(num_envs=num_envs, dataset=str(tiny_qa_path), split="test", retriever=retriever, **kwargs)


def grpo_config(output_dir, **overrides) -> GRPOConfig:
    values = dict(output_dir=str(output_dir), seed=0, learning_rate=1e-2, lr_scheduler="linear", warmup_steps=1,
                  max_steps=2, save_steps=0, questions_per_step=2, group_size=2,
                  env=train_env(max_turns=2, reward="f1"), max_turn_tokens=8, max_response_tokens=160, beta=0.1,
                  tensorboard=False, progress=False)
    values.update(overrides)
    return GRPOConfig(**values)


class OddTokenGRPO(GRPOTrainer):
    """GRPO whose task reward is the fraction of odd token ids among the policy's sampled tokens: a reward a
    random policy earns in varying amounts, so group advantages are nonzero (the env's own reward is ~0 for it)."""

    def collect(self, step):
        return reward_odd_tokens(super().collect(step))


def make_trainer(tokenizer, tiny_qa_path, retriever, output_dir, **overrides) -> OddTokenGRPO:
    return OddTokenGRPO(grpo_config(output_dir, **overrides), model=tiny_model(tokenizer), tokenizer=tokenizer,
                        env=make_env(tiny_qa_path, retriever), reference=frozen(tiny_model(tokenizer)))


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


COMPARED = ("losses/", "charts/episodic_return", "charts/task_reward", "charts/advantage_abs", "charts/reward_std",
            "charts/learning_rate", "charts/policy_tokens", "charts/episodic_length")


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k == "step" or k.startswith(COMPARED)}


# ---------------------------------------------------------------------------------------------- 5. GRPO steps


def test_grpo_steps_change_parameters_with_finite_losses(tokenizer, tiny_qa_path, overlap_retriever, tmp_path):
    trainer = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "run")
    before, reference_before = params(trainer.model), params(trainer.reference)
    rows = trainer.train()

    assert [r["step"] for r in rows] == [1, 2] and trainer.step == 2
    for row in rows:
        for key in ("losses/policy_loss", "losses/kl", "losses/entropy", "losses/grad_norm", "losses/approx_kl"):
            assert math.isfinite(row[key]), (key, row[key])
        assert row["charts/advantage_abs"] > 0 and row["charts/policy_tokens"] > 0
    # Step 1 is on the reference weights: KL exactly 0; after one update the policy has moved away from it.
    assert abs(rows[0]["losses/kl"]) < 1e-6 and rows[1]["losses/kl"] > 0
    after = params(trainer.model)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) >= len(before) // 2, moved
    assert max(float((before[k] - after[k]).abs().max()) for k in moved) > 1e-4
    assert all(torch.equal(reference_before[k], v) for k, v in params(trainer.reference).items())  # frozen
    assert [s for s, _ in checkpoints(tmp_path / "run")] == [2]  # saved at the end
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        assert [int(float(r["global_step"])) for r in csv.DictReader(f)] == [1, 2]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_accumulated_passes_equal_one_pass(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, loss_type):
    """forward_batch_size splits a minibatch into forward/backward passes whose gradients accumulate: the update
    (and the logged loss) equal one pass over the minibatch, for every loss aggregation."""
    whole = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "whole", loss_type=loss_type,
                         max_steps=1)
    split = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "split", loss_type=loss_type,
                         max_steps=1, forward_batch_size=1)
    episodes = whole.collect(0)
    # unequal lengths, so token means and episode means differ: drop the last policy tokens of one episode
    ones = [i for i, m in enumerate(episodes[0].loss_mask) if m]
    for i in ones[-5:]:
        episodes[0].loss_mask[i] = 0
    assert len({sum(e.loss_mask) for e in episodes}) > 1
    one, passes = whole.update(episodes), split.update(episodes)
    for key in ("losses/policy_loss", "losses/kl", "losses/grad_norm"):
        assert passes[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    after_one, after_split = params(whole.model), params(split.model)
    # Adam's first step is ~lr * sign(g): an element whose gradient is near Adam's eps turns float summation-order
    # differences into up to ~1e-3 of a step (seen on torch 2.13 CPU), so the weights agree to 1e-3 * lr. The
    # gradient's scale is what the grad_norm check above pins down (a sign-like step would hide it).
    step = whole.config.learning_rate
    assert all(torch.allclose(after_one[k], after_split[k], atol=1e-3 * step, rtol=0) for k in after_one)
    assert any(not torch.equal(after_one[k], v) for k, v in params(tiny_model(tokenizer)).items())  # it moved


def test_sampler_correction_modes_follow_trl():
    """exp(policy - sampler) per token or per episode, truncated to or masked outside [C_min, C_max]."""
    from search_gym.trainers.core import sampler_correction

    policy = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-1.5, -1.5, 0.0], [-0.5, -1.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    token = sampler_correction(policy, sampler, mask, "token_truncate", clip_min=None, clip_max=1.5)
    assert torch.allclose(token, torch.tensor([[1.5, 1.5, 1.0], [math.exp(-0.5), 1.0, 1.0]]))  # NaN: no difference
    token_mask = sampler_correction(policy, sampler, mask, "token_mask", clip_min=0.7, clip_max=1.5)
    assert torch.allclose(token_mask, torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    seq = sampler_correction(policy, sampler, mask, "sequence_truncate", clip_min=None, clip_max=3.0)
    assert seq.shape == (2, 1) and torch.allclose(seq, torch.tensor([[math.e], [math.exp(-0.5)]]))
    seq_mask = sampler_correction(policy, sampler, mask, "sequence_mask", clip_min=None, clip_max=2.0)
    assert torch.allclose(seq_mask, torch.tensor([[0.0], [math.exp(-0.5)]]))
    with pytest.raises(ValueError, match="mode"):
        sampler_correction(policy, sampler, mask, "episode_mask")


def test_sampling_weights_scale_the_policy_term_only():
    """A sequence weight w multiplies the clipped policy term like an advantage scaled by w; the KL is untouched."""
    from search_gym.trainers.grpo import grpo_loss

    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 5, generator=g) - 0.1
    old = logps + 0.3 * torch.randn(3, 5, generator=g)
    ref = logps + 0.2 * torch.randn(3, 5, generator=g)
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 5)
    w = torch.tensor([[0.0], [1.0], [2.5]])
    weighted, _ = grpo_loss(logps, old, None, adv, mask, sampling_weights=w)
    scaled, _ = grpo_loss(logps, old, None, adv * w.squeeze(1), mask)
    assert torch.allclose(weighted, scaled)
    with_kl, _ = grpo_loss(logps, old, ref, adv, mask, beta=0.1, sampling_weights=torch.zeros(3, 1))
    kl_only, _ = grpo_loss(logps, old, ref, torch.zeros(3), mask, beta=0.1)
    assert torch.allclose(with_kl, kl_only) and float(kl_only) != 0.0


# ---------------------------------------------------------------------------------------------- 6. resume


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tokenizer, tiny_qa_path, overlap_retriever, tmp_path, capsys):
    # Warm-up over two steps, then constant: a resumed step 3 must run at the full rate, not restart the warm-up.
    # (Not the linear schedule: it decays to 0 at max_steps, so a run stopped by max_steps=2 is a different run.)
    schedule = dict(lr_scheduler="constant", warmup_steps=2, save_steps=1)
    run_a = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "a", max_steps=3, **schedule)
    rows_a = run_a.train()
    assert [s for s, _ in checkpoints(tmp_path / "a")] == [1, 2, 3]

    run_b = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "b", max_steps=2, **schedule)
    rows_b = run_b.train()
    assert [comparable(r) for r in rows_b] == [comparable(r) for r in rows_a[:2]]  # identical seeds, identical runs

    resumed = make_trainer(tokenizer, tiny_qa_path, overlap_retriever, tmp_path / "b", max_steps=3, **schedule)
    rows_c = resumed.train()
    assert [r["step"] for r in rows_c] == [3]  # started from checkpoint-2
    assert "checkpoint-2 (step 2 of 3)" in capsys.readouterr().out  # the log says where the run picked up
    step3_a, step3_c = comparable(rows_a[2]), comparable(rows_c[0])
    assert step3_a.keys() == step3_c.keys()
    for key in step3_a:
        assert step3_c[key] == pytest.approx(step3_a[key], abs=1e-6, rel=0), key
    final_a, final_c = params(run_a.model), params(resumed.model)
    for key in final_a:
        torch.testing.assert_close(final_c[key], final_a[key], atol=1e-6, rtol=0)
    assert [s for s, _ in checkpoints(tmp_path / "b")] == [1, 2, 3]
    with open(tmp_path / "b" / "metrics.csv", newline="") as f:
        assert [int(float(r["global_step"])) for r in csv.DictReader(f)] == [1, 2, 3]


def test_resume_with_more_steps_follows_the_new_linear_schedule(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    old = grpo_config(tmp_path, learning_rate=1.0, lr_scheduler="linear", warmup_steps=0, max_steps=2)
    optimizer, scheduler = make_optimizer(model, old)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    save_checkpoint(tmp_path, 2, model, tokenizer, optimizer, scheduler)
    new = grpo_config(tmp_path, learning_rate=1.0, lr_scheduler="linear", warmup_steps=0, max_steps=3)
    optimizer, scheduler = make_optimizer(model, new)
    load_checkpoint(tmp_path / "checkpoint-2", model, optimizer, scheduler)
    # what a 3-step run uses at its third step: (3 - 2) / 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------- 7. the penalty


class Scripted:
    """Generator playing fixed turns per question (matched by a word of the question); no log-probabilities."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer, self.scripts, self.turn = tokenizer, scripts, {}

    def seed(self, seed):
        pass

    def sync_weights(self):
        pass

    def generate(self, requests):
        out = []
        for request in requests:
            content = request.observation["messages"][0]["content"]
            (key,) = [k for k in self.scripts if k in content]
            turn = self.turn.get(key, 0)
            self.turn[key] = turn + 1
            text = self.scripts[key][turn]
            out.append(Generation(encode(self.tokenizer, text), None, text, "stop"))
        return out


LAYER = 0
COEF = 0.5


@pytest.fixture(scope="module")
def reader(tokenizer):
    return frozen(tiny_model(tokenizer, seed=1))


@pytest.fixture(scope="module")
def search_episodes(tokenizer, tiny_qa_path, tiny_corpus_path):
    """q0 searches twice, q1 once, q4 answers without searching; every answer is right (task reward 1)."""
    from conftest import WordOverlapRetriever

    scripts = {
        "France": ["<think> capital </think>\n<search> capital of France </search>",
                   "<search> Paris city </search>", "<answer> Paris </answer>"],
        "Bizet": ["I will look it up. <search> Bizet opera in four acts </search>", "<answer> Carmen </answer>"],
        "planet": ["<answer> Jupiter </answer>"],
    }
    venv = make_env(tiny_qa_path, WordOverlapRetriever(tiny_corpus_path), num_envs=3, max_turns=3)
    episodes = RolloutCollector(venv, Scripted(tokenizer, scripts)).collect(["q0", "q1", "q4"], 1)
    assert [e.task_reward for e in episodes] == [1.0, 1.0, 1.0]
    assert [len(e.search_indices) for e in episodes] == [2, 1, 0]
    return episodes


@pytest.fixture(scope="module")
def manual(tokenizer, reader, search_episodes):
    """Per layer: each episode's residual stream from a manual forward, and its search-tag positions."""
    tags = [tag_ends(tokenizer, ep) for ep in search_episodes]
    return {layer: [manual_hidden(reader, ep.input_ids, layer) for ep in search_episodes] for layer in (0, 1)}, tags


def tag_ends(tokenizer, ep) -> list[int]:
    """Absolute indices of the tokens completing each <search> the episode's policy wrote, found independently of
    ``search_indices``: the first token whose decoded prefix contains one more tag (env text excluded)."""
    out, seen = [], 0
    for j in range(len(ep.response_ids)):
        count = decode(tokenizer, ep.response_ids[: j + 1]).count(SEARCH)
        if count > seen:
            seen = count
            if not any(s <= j < e and kind == ENV for s, e, kind in ep.spans):
                out.append(ep.absolute(j))
    return out


def manual_hidden(model, ids, layer: int) -> torch.Tensor:
    """Residual stream after decoder block ``layer`` at every position: HF hidden_states[layer + 1] for every block
    but the last (HF's last entry is after the final norm), a forward hook on the block for the last."""
    with torch.no_grad():
        if layer + 1 < model.config.num_hidden_layers:
            return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]
        captured = {}
        handle = model.model.layers[layer].register_forward_hook(
            lambda _m, _a, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out))
        try:
            model(input_ids=torch.tensor([ids]))
        finally:
            handle.remove()
        return captured["h"][0]


def manual_projection(hidden: torch.Tensor, direction: torch.Tensor, projection: str) -> torch.Tensor:
    if projection == "dot":
        return hidden @ direction
    return torch.nn.functional.cosine_similarity(hidden, direction.expand_as(hidden), dim=-1)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("searches", ["first", "mean"])
@pytest.mark.parametrize("projection", ["cosine", "dot"])
def test_penalty_matches_a_manual_forward(reader, search_episodes, manual, projection, searches, relu, layer):
    episodes = search_episodes
    by_layer, tags = manual
    hidden = by_layer[layer]
    assert [[ep.absolute(i) for i in ep.search_indices] for ep in episodes] == tags
    # planted direction: q0's first-search activation minus q1's, so q0 projects higher (for dot, by |d|^2)
    direction = hidden[0][tags[0][0]] - hidden[1][tags[1][0]]
    clamped = 0
    for sign in (1.0, -1.0):  # p(-d) = -p(d): with relu, one of the two signs clamps every single-search p to 0
        penalty = RepresentationPenalty(sign * direction, layer=layer, coef=COEF, searches=searches,
                                        projection=projection, relu=relu, reader=reader)
        values = penalty.apply(episodes)
        for ep, h, t, value in zip(episodes, hidden, tags, values):
            if not t:
                assert value is None and ep.projection is None and ep.penalty == 0.0 and ep.reward == ep.task_reward
                continue
            chosen = t[:1] if searches == "first" else t
            raw = manual_projection(h[chosen], sign * direction, projection)
            expected = float((raw.clamp(min=0.0) if relu else raw).mean())
            clamped += relu and bool((raw < 0).any())
            assert ep.projection == value == pytest.approx(expected, abs=1e-5)
            assert ep.penalty == pytest.approx(COEF * expected, abs=1e-5)
            assert ep.reward == ep.task_reward - ep.penalty  # exactly coef * projection less
        if not relu and searches == "first" and sign > 0:
            # higher projection, lower reward
            assert episodes[0].projection > episodes[1].projection and episodes[0].reward < episodes[1].reward
            if projection == "dot":
                gap = float(direction @ direction)
                assert episodes[0].projection - episodes[1].projection == pytest.approx(gap, rel=1e-4)
                assert episodes[1].reward - episodes[0].reward == pytest.approx(COEF * gap, rel=1e-4)
    assert clamped >= (2 if relu else 0)  # the relu branch was exercised


def test_penalty_reads_the_last_token_of_the_first_search(tokenizer, reader, search_episodes, manual):
    ep = search_episodes[1]
    (index,) = ep.search_indices
    assert decode(tokenizer, ep.input_ids[: ep.absolute(index) + 1]).endswith(SEARCH)
    assert not decode(tokenizer, ep.input_ids[: ep.absolute(index)]).endswith(SEARCH)
    h = manual[0][LAYER][1]
    # the direction is that position's own activation: cosine 1 there and only there
    direction = h[ep.absolute(index)]
    penalty = RepresentationPenalty(direction, layer=LAYER, coef=1.0, projection="cosine", reader=reader)
    (p,) = penalty.projections([ep])
    assert p == pytest.approx(1.0, abs=1e-5)
    # the neighbouring positions are not it
    for other in (ep.absolute(index) - 1, ep.absolute(index) + 1):
        assert float(torch.nn.functional.cosine_similarity(h[other], direction, dim=0)) < 0.999


def test_penalty_restores_reader_mode_and_validates(reader, search_episodes):
    reader.train()
    try:
        RepresentationPenalty(torch.ones(32), layer=0, coef=1.0, reader=reader).apply(search_episodes)
        assert reader.training
    finally:
        reader.eval()
    with pytest.raises(ValueError, match="needs a layer"):
        RepresentationPenalty(torch.ones(32), layer=None)
    with pytest.raises(ValueError, match="searches must be one of"):
        RepresentationPenalty(torch.ones(32), layer=0, searches="last")
    with pytest.raises(ValueError, match="projection must be one of"):
        RepresentationPenalty(torch.ones(32), layer=0, projection="l2")
    with pytest.raises(ValueError, match="needs a reader"):
        RepresentationPenalty(torch.ones(32), layer=0).apply(search_episodes)  # no reader
    assert load_penalty(grpo_config("unused").penalty, reader) is None
    with pytest.raises(ValueError, match=r"penalty\.direction"):
        load_penalty(PenaltyConfig(lambda_=0.1), reader)


# ---------------------------------------------------------------------------------------------- 8. config CLI


def parser_for(config_cls) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    add_dataclass_arguments(parser, config_cls)
    return parser


def test_config_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text("learning_rate: 0.001\ngroup-size: 8\nenv:\n  attack: multi_search:n=2\n  max-turns: 3\n"
                    "  topk: 5\npenalty:\n  relu: true\nbeta: 0.5\nepsilon_high: 0.28\n")
    parser = parser_for(GRPOConfig)
    args = parser.parse_args(["--config", str(path), "--group-size", "3", "--beta", "0.05", "--resume", "false",
                              "--penalty.layer", "4", "--env.max-turns", "2", "--output-dir", str(tmp_path / "out")])
    config = build_config(GRPOConfig, args, args.config)
    defaults = GRPOConfig()
    assert (config.group_size, config.beta, config.resume, config.penalty.layer) == (3, 0.05, False, 4)  # flags
    assert config.env.max_turns == 2  # a nested flag beats the same nested YAML key
    assert config.output_dir == str(tmp_path / "out")
    assert (config.learning_rate, config.env.attack, config.env.topk, config.penalty.relu, config.epsilon_high) == (
        0.001, "multi_search:n=2", 5, True, 0.28)  # YAML, the env keys beside the one the flag set included
    assert (config.seed, config.loss_type, config.temperature, config.env.split, config.env.safety) == (
        defaults.seed, defaults.loss_type, defaults.temperature, defaults.env.split, defaults.env.safety)  # defaults
    assert config.env.safety is True and config.env.retriever == "dense"  # the trainers' env defaults, not EnvConfig's
    assert (config.penalty.lambda_, config.vllm) == (defaults.penalty.lambda_, defaults.vllm)
    assert isinstance(config.group_size, int) and isinstance(config.beta, float) and isinstance(config.env.topk, int)
    # keyword overrides beat everything; a section's mapping merges over the values below it
    assert build_config(GRPOConfig, args, args.config, group_size=5).group_size == 5
    override = build_config(GRPOConfig, args, args.config, env={"topk": 7})
    assert (override.env.topk, override.env.max_turns, override.env.attack) == (7, 2, "multi_search:n=2")
    # no flags, no file: the defaults
    assert build_config(GRPOConfig, parser.parse_args([])) == defaults


def test_config_round_trips_through_a_file(tmp_path):
    import json

    import yaml

    config = GRPOConfig(output_dir=str(tmp_path), seed=7, beta=0.0, env=train_env(attack="search", max_turns=3),
                        penalty=PenaltyConfig(layer=3, lambda_=0.5), epsilon_high=None, loss_type="dapo")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(config)))
    assert "env:\n" in path.read_text() and "  max_turns: 3\n" in path.read_text()  # nested keys
    assert "  lambda: 0.5\n" in path.read_text()  # lambda_ is written as its key
    assert build_config(GRPOConfig, None, path) == config
    json_path = tmp_path / "config.json"
    config = GRPOConfig(output_dir=str(tmp_path), env=train_env(judges=("refusal", "query")))  # a tuple field
    json_path.write_text(json.dumps(config_dict(config)))
    assert build_config(GRPOConfig, parser_for(GRPOConfig).parse_args([]), json_path) == config


def test_a_flat_config_of_an_older_run_loads_with_a_deprecation_line(tmp_path, caplog):
    """tests/data/flat_grpo_config.json is the config.json a run wrote before the env / vllm / penalty sections
    existed (every field top-level): it loads, into the same config as its nested form, and one logged line names
    the new keys."""
    import json
    import logging
    from pathlib import Path

    path = Path(__file__).parent / "data" / "flat_grpo_config.json"
    nested = GRPOConfig(output_dir="runs/old", seed=7, loss_type="dapo",
                        env=train_env(max_turns=2, reward="f1", attack="search", safety=False, kwargs='{"x": 1}'),
                        vllm=VLLMConfig(max_model_len=2048),
                        penalty=PenaltyConfig(lambda_=0.5, layer=3, relu=True))
    with caplog.at_level(logging.WARNING, logger="search_gym.configs"):
        assert build_config(GRPOConfig, None, path) == nested
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and str(path) in line
    moved = GRPOConfig.moved_fields
    assert set(moved) <= set(json.loads(path.read_text()))  # every moved key is in the old file ...
    for old, new in moved.items():
        assert f"{old} -> {new}" in line  # ... and the line names its new key
    assert "env_id -> env.id" in line and "penalty_lambda -> penalty.lambda" in line
    # the same for a YAML of flat keys, and for the old flat flags (hidden from --help)
    caplog.clear()
    flat = tmp_path / "flat.yaml"
    flat.write_text("max_turns: 2\nreward: f1\nattack: search\nsafety: false\npenalty_lambda: 0.5\n")
    args = parser_for(GRPOConfig).parse_args(["--penalty-layer", "3", "--vllm-max-model-len", "2048"])
    with caplog.at_level(logging.WARNING, logger="search_gym.configs"):
        old = build_config(GRPOConfig, args, flat)
    assert old.env == train_env(max_turns=2, reward="f1", attack="search", safety=False)
    assert (old.penalty.lambda_, old.penalty.layer, old.vllm.max_model_len) == (0.5, 3, 2048)
    assert [f"{flat}: deprecated flat keys, now nested: max_turns -> env.max_turns, reward -> env.reward, "
            "attack -> env.attack, safety -> env.safety, penalty_lambda -> penalty.lambda",
            "command line: deprecated flat flags, now nested: --penalty-layer -> --penalty.layer, "
            "--vllm-max-model-len -> --vllm.max-model-len"] == [r.getMessage() for r in caplog.records]
    # where one source gives both spellings, the nested one wins
    assert build_config(GRPOConfig, None, None, max_turns=5, env={"max_turns": 6}).env.max_turns == 6


def test_help_groups_the_sections():
    parser = parser_for(GRPOConfig)
    text = parser.format_help()
    groups = {g.title: [a.option_strings for a in g._group_actions] for g in parser._action_groups}
    assert {"env", "vllm", "penalty"} <= set(groups)
    assert ["--env.max-turns"] in groups["env"] and ["--env.id"] in groups["env"]
    assert ["--vllm.gpu-memory-utilization"] in groups["vllm"] and ["--penalty.lambda"] in groups["penalty"]
    assert all(name.startswith(f"--{title}.") for title in ("env", "vllm", "penalty") for names in groups[title]
               for name in names)
    # each section's flags show the trainer's defaults, under the section's title
    env_part = text[text.index("\nenv:\n"):text.index("\nvllm:\n")]
    assert "--env.safety BOOL" in env_part and "(default: True)" in env_part
    assert "--max-turns" not in text and "--penalty-lambda" not in text  # the old flat flags still parse, unlisted
    top = [a for a in parser._actions if a.help != argparse.SUPPRESS and a.option_strings
           and not a.option_strings[0].startswith(("--env.", "--vllm.", "--penalty."))]
    flat_fields = [f for f in dataclasses.fields(GRPOConfig) if f.name not in ("env", "vllm", "penalty")]
    assert len(top) == 2 + len(flat_fields)  # -h, --config and one per top-level field (47 of 74 before the sections)
    assert not {a.dest for a in top} & set(GRPOConfig.moved_fields)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.001\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        build_config(GRPOConfig, None, path)
    path.write_text("env:\n  max_turn: 3\n")
    with pytest.raises(ValueError, match="max_turn'"):
        build_config(GRPOConfig, None, path)
    path.write_text("env: 3\n")
    with pytest.raises(ValueError, match="mapping of EnvConfig fields"):
        build_config(GRPOConfig, None, path)
    with pytest.raises(ValueError, match="loss_type"):
        build_config(GRPOConfig, None, None, loss_type="ppo")
    with pytest.raises(ValueError, match="importance_sampling_mode"):
        build_config(GRPOConfig, None, None, vllm={"importance_sampling_mode": "token"})
    with pytest.raises(TypeError, match="env must be a EnvConfig"):
        GRPOConfig(env={"max_turns": 2})
    for argv, error in ((["--resume", "maybe"], "argument --resume: expected a boolean (true/false), got 'maybe'"),
                        (["--group-size", "two"], "argument --group-size: invalid int value: 'two'"),
                        (["--env.max-turns", "two"], "argument --env.max-turns: invalid int value: 'two'")):
        with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error: exit status 2, the message on stderr
            parser_for(GRPOConfig).parse_args(argv)
        assert error in capsys.readouterr().err


def test_optional_fields_take_values_from_flags():
    args = parser_for(GRPOConfig).parse_args(["--epsilon-high", "0.3", "--env.attack", "search", "--penalty.layer",
                                              "2", "--env.judges", "refusal", "query"])
    config = build_config(GRPOConfig, args)
    assert (config.epsilon_high, config.env.attack, config.penalty.layer) == (0.3, "search", 2)
    assert config.env.judges == ("refusal", "query")
    assert build_config(GRPOConfig, parser_for(GRPOConfig).parse_args(["--env.attack", "none"])).env.attack is None
    assert build_config(GRPOConfig, parser_for(GRPOConfig).parse_args(["--env.judges", "none"])).env.judges is None


def test_a_none_flag_overrides_the_file(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text("env:\n  attack: search\npenalty:\n  layer: 3\n")
    args = parser_for(GRPOConfig).parse_args(["--env.attack", "none", "--penalty.layer", "none"])
    config = build_config(GRPOConfig, args, path)
    assert config.env.attack is None and config.penalty.layer is None
