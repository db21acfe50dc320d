"""Play a few episodes of SearchGym/WikiQA-v0 with the scripted agent and print the transcripts.

    python examples/quickstart.py --episodes 3 --retriever bm25
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import search_gym  # noqa: F401  (registers the SearchGym/* ids)
from search_gym.agents import ScriptedAgent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=3, help="episodes to play")
    parser.add_argument("--retriever", default="dense", choices=["dense", "bm25"], help="retriever family")
    parser.add_argument("--seed", type=int, default=0, help="first episode's seed")
    args = parser.parse_args()

    env = gym.make("SearchGym/WikiQA-v0", split="test", retriever=args.retriever, render_mode="ansi")
    agent = ScriptedAgent()
    for episode in range(args.episodes):
        obs, info = env.reset(seed=args.seed + episode)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs).text)
            done = terminated or truncated
        print(env.render())
        print(f"gold={info['golden_answers']} reward={reward} searches={info['searches']}\n")


if __name__ == "__main__":
    main()
