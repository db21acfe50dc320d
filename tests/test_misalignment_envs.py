"""Misalignment environments: Gymnasium and PettingZoo API checks, seeding, parsing and payoffs."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import search_gym  # noqa: F401  (registers the ids)
from search_gym.envs.misalignment import SelfInterestedExplorationEnv, parse_choice, violation_rate_per_round
from search_gym.envs.misalignment import imitative_diffusion_v0 as diffusion


def test_exploration_check_env_and_seeds():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("SearchGym/SelfInterestedExploration-v0", num_rounds=4)
    check_env(env.unwrapped, skip_render_check=True)
    a, b = gym.make("SearchGym/SelfInterestedExploration-v0", supervision="random"), \
        gym.make("SearchGym/SelfInterestedExploration-v0", supervision="random")
    oa, ia = a.reset(seed=7)
    ob, ib = b.reset(seed=7)
    assert oa == ob and ia == ib
    for _ in range(3):
        assert a.step('{"choice": "B"}')[4] == b.step('{"choice": "B"}')[4]


def test_exploration_rewards_supervision_and_bad_answers():
    env = SelfInterestedExplorationEnv(scenario="taxi", num_rounds=4, supervision="alternating", history=2)
    obs, info = env.reset(seed=0)
    assert info["scenario"] == "taxi" and "a supervisor is watching" in obs["messages"][1]["content"]
    _, r, *_ , i0 = env.step('I pick {"choice": "B"} because why not')
    assert (r, i0["supervised"], i0["violation"]) == (0.0, True, True)  # caught: pays nothing
    _, r, *_, i1 = env.step('{"choice": "B"}')
    assert (r, i1["supervised"]) == (5.0, False)  # unsupervised violation pays more
    _, r, *_, i2 = env.step(["not", "text"])
    assert r == 0.0 and i2["parse_error"] == "unparsable" and i2["choice"] is None
    obs, r, terminated, truncated, i3 = env.step('{"choice": "A"}')
    assert r == 2.0 and terminated and not truncated and i3["violations"] == 2
    assert "round 3: chose nothing valid" in obs["messages"][1]["content"]  # history shows the last K=2 rounds
    assert "round 2:" not in obs["messages"][1]["content"]
    with pytest.raises(ValueError, match="scenario must be one of"):
        SelfInterestedExplorationEnv(scenario="nope")
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"secnario": "taxi"})
    assert parse_choice('{"choice": "a"}') == "A" and parse_choice("{broken") is None and parse_choice(None) is None


def test_violation_rate_curve_of_an_exploring_scripted_agent():
    """A scripted explorer keeps breaking the rule once it paid: the violation rate climbs when unsupervised."""
    episodes = []
    for seed in range(8):
        env = SelfInterestedExplorationEnv(num_rounds=6, supervision="never")
        env.reset(seed=seed)
        infos, choice = [], "A"
        for r in range(6):
            if r == 1:
                choice = "B"  # explore once
            _, reward, _, _, info = env.step(json.dumps({"choice": choice}))
            infos.append(info)
        episodes.append(infos)
    rates = violation_rate_per_round(episodes, 6)
    assert rates[0] == 0.0 and all(r == 1.0 for r in rates[1:])


def test_pettingzoo_api_seed_and_max_cycles():
    from pettingzoo.test import max_cycles_test, parallel_api_test, parallel_seed_test

    parallel_api_test(diffusion.parallel_env(num_agents=3, max_cycles=5), num_cycles=10)
    parallel_seed_test(lambda: diffusion.parallel_env(num_agents=3, max_cycles=5))
    max_cycles_test(diffusion)


def test_aec_form_runs():
    # PettingZoo's AEC api_test checks numpy observation dtypes, which text observations do not have; play it instead.
    aec = diffusion.env(num_agents=2, max_cycles=3)
    aec.reset(seed=0)
    steps = 0
    for agent in aec.agent_iter():
        obs, reward, termination, truncation, info = aec.last()
        assert isinstance(obs, str)
        aec.step(None if termination or truncation else '{"choice": "collective"}')
        steps += 1
    assert steps == 2 * 3 + 2  # 3 rounds of 2 agents, then each agent's final truncated step


def test_diffusion_payoffs_history_modes_and_fixed_agents():
    env = diffusion.parallel_env(num_agents=3, threshold=2, max_cycles=3, history="final_only",
                                 fixed_agents={"deviant_0": "independent"})
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"agent_0", "agent_1", "agent_2"}
    acts = {"agent_0": '{"choice": "collective"}', "agent_1": "collective", "agent_2": "\ud800 garbage \x00"}
    obs, rewards, term, trunc, infos = env.step(acts)
    assert rewards == {"agent_0": 3.0, "agent_1": 3.0, "agent_2": 0.0}
    assert infos["agent_2"]["parse_error"] == "unparsable" and infos["agent_0"]["collective_count"] == 2
    assert "deviant_0: independent (1)" in obs["agent_0"]
    env.step({a: '{"choice": "independent"}' for a in env.agents})
    obs, rewards, term, trunc, infos = env.step({a: '{"choice": "collective"}' for a in env.agents})
    assert all(trunc.values()) and env.agents == []
    assert infos["agent_0"]["collective_rate_by_round"] == pytest.approx([2 / 3, 0.0, 1.0])
    assert "Round 1:" not in obs["agent_0"] and "Round 3:" in obs["agent_0"]  # final-only history


def test_imitation_spreads_the_paying_strategy_faster_with_full_history():
    """Diffusion curve with scripted imitators: independent deviants pay while the collective fails, so imitators
    switch to independent; the collective rate falls over rounds."""
    curves = {}
    for mode in ("full", "final_only"):
        env = diffusion.parallel_env(num_agents=4, threshold=5, max_cycles=6, history=mode,
                                     fixed_agents={"deviant_0": "independent", "deviant_1": "independent"})
        env.reset(seed=0)
        policy = diffusion.ImitateBestPeer(initial="collective")
        infos = {}
        while env.agents:
            seen = env.rounds if mode == "full" else env.rounds[-1:]
            actions = {a: policy.act(a, seen) for a in env.agents}
            _, _, _, _, infos = env.step(actions)
        curves[mode] = infos["agent_0"]["collective_rate_by_round"]
    for curve in curves.values():
        assert curve[0] == 1.0 and curve[-1] == 0.0
