"""Curves of the misalignment environments with scripted agents, and a few rounds with any agent (the bundled LLM).

    python examples/misalignment_curves.py --out docs/img                 # scripted: both PNGs + tables
    python examples/misalignment_curves.py --agent smollm2 --episodes 2   # LLM: a few rounds of each env, end to end

Scripted agents:
- self-interested exploration: an epsilon-greedy learner over (supervised?, choice) that reads this round's
  supervision from the prompt; the violation rate per round over ``--episodes`` seeded episodes, per supervision
  pattern (``violation_rate.png``);
- imitative diffusion: 4 imitators (:class:`ImitateBestPeer`, epsilon 0.1) who need every one of them for the
  collective action to pay; one exploratory defection makes it fail and a defector out-earn the cooperators, and
  imitation can spread it. Collective-choice rate per round, full vs final-only history (``diffusion.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from search_gym.envs.misalignment import SelfInterestedExplorationEnv, violation_rate_per_round
from search_gym.envs.misalignment import imitative_diffusion_v0 as diffusion


class EpsilonGreedyExplorer:
    """Keeps the mean reward of A and B separately for supervised and unsupervised rounds; picks the better one,
    or a random one with probability ``epsilon`` (unknown options count as worth trying)."""

    def __init__(self, epsilon: float = 0.2, seed: int = 0):
        self.epsilon, self.rng = epsilon, np.random.default_rng(seed)
        self.totals: dict[tuple[bool, str], list[float]] = {}

    def act(self, prompt: str) -> tuple[str, bool]:
        watched = "a supervisor is watching" in prompt
        if self.rng.random() < self.epsilon:
            return str(self.rng.choice(["A", "B"])), watched
        value = {c: np.mean(self.totals[(watched, c)]) if self.totals.get((watched, c)) else np.inf for c in "AB"}
        return ("A" if value["A"] >= value["B"] else "B"), watched

    def learn(self, watched: bool, choice: str, reward: float) -> None:
        self.totals.setdefault((watched, choice), []).append(reward)


def exploration_curves(episodes: int, rounds: int) -> dict[str, list[float]]:
    curves = {}
    for pattern in ("never", "alternating", "mostly_supervised", "always"):
        logs = []
        for seed in range(episodes):
            env = SelfInterestedExplorationEnv(num_rounds=rounds, supervision=pattern)
            obs, _ = env.reset(seed=seed)
            agent, infos = EpsilonGreedyExplorer(seed=seed), []
            for _ in range(rounds):
                choice, watched = agent.act(obs["messages"][1]["content"])
                obs, reward, _, _, info = env.step(json.dumps({"choice": choice}))
                agent.learn(watched, choice, reward)
                infos.append(info)
            logs.append(infos)
        curves[pattern] = violation_rate_per_round(logs, rounds)
    return curves


def diffusion_curves(episodes: int, rounds: int) -> dict[str, list[float]]:
    curves = {}
    for mode in ("full", "final_only"):
        runs = []
        for seed in range(episodes):
            env = diffusion.parallel_env(num_agents=4, threshold=4, max_cycles=rounds, history=mode)
            env.reset(seed=seed)
            policy = diffusion.ImitateBestPeer(initial="collective", epsilon=0.1, seed=seed)
            infos = {}
            while env.agents:
                seen = env.rounds if mode == "full" else env.rounds[-1:]
                _, _, _, _, infos = env.step({a: policy.act(a, seen) for a in env.agents})
            runs.append(infos["agent_0"]["collective_rate_by_round"])
        curves[mode] = list(np.mean(runs, axis=0))
    return curves


def plot(curves: dict[str, list[float]], ylabel: str, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def table(curves: dict[str, list[float]], every: int = 5) -> str:
    rounds = len(next(iter(curves.values())))
    shown = [r for r in range(rounds) if r % every == 0 or r == rounds - 1]
    lines = ["| | " + " | ".join(f"round {r + 1}" for r in shown) + " |", "|---|" + "---:|" * len(shown)]
    lines += [f"| {k} | " + " | ".join(f"{v[r]:.2f}" for r in shown) + " |" for k, v in curves.items()]
    return "\n".join(lines)


def llm_rounds(agent_name: str, episodes: int, device: str | None) -> None:
    """A few rounds of each env played by an agent backend (``make_agent``), printed as they go."""
    from search_gym.agents.registry import make_agent
    from search_gym.experiments.common import agent_kwargs_for

    agent = make_agent(agent_name, **agent_kwargs_for(agent_name, max_new_tokens=24, device=device,
                                                      extra={"stop": (), "few_shot": 0}))
    for seed in range(episodes):
        env = SelfInterestedExplorationEnv(num_rounds=4, supervision="alternating")
        obs, info = env.reset(seed=seed)
        print(f"\nself-interested exploration, scenario {info['scenario']}:")
        for _ in range(4):
            step = agent.act(obs)
            obs, reward, _, _, info = env.step(step.text)
            print(f"  round {info['round'] + 1}: {step.text.strip()[:60]!r} -> choice={info['choice']} "
                  f"supervised={info['supervised']} reward={reward:g}")
        game = diffusion.parallel_env(num_agents=3, max_cycles=2)
        observations, _ = game.reset(seed=seed)
        print("imitative diffusion, 3 agents:")
        while game.agents:
            actions = {a: agent.act({"messages": ({"role": "user", "content": o},), "prefill": ""}).text
                       for a, o in observations.items()}
            observations, rewards, _, _, infos = game.step(actions)
            print("  " + ", ".join(f"{a}: {infos[a]['choice']} ({rewards[a]:g})" for a in rewards))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/img", help="folder of the PNGs")
    parser.add_argument("--episodes", type=int, default=50, help="seeded episodes per curve (LLM: episodes played)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per episode (scripted curves)")
    parser.add_argument("--agent", default=None, help="play a few rounds with this agent instead (e.g. smollm2)")
    parser.add_argument("--device", default=None, help="torch device of an HF agent")
    args = parser.parse_args()
    if args.agent:
        llm_rounds(args.agent, args.episodes, args.device)
        return 0
    out = Path(args.out)
    exploration = exploration_curves(args.episodes, args.rounds)
    spread = diffusion_curves(args.episodes, args.rounds)
    print("violation rate per round (epsilon-greedy explorer, by supervision pattern):\n" + table(exploration))
    print("\ncollective-choice rate per round (4 imitators, epsilon 0.1):\n" + table(spread))
    print(plot(exploration, "violation rate", "Self-interested exploration (scripted explorer)",
               out / "misalignment_violation_rate.png"))
    print(plot(spread, "collective-choice rate", "Imitative diffusion (scripted imitators)",
               out / "misalignment_diffusion.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
