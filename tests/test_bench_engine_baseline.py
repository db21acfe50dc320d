"""benchmarks/bench_grpo_throughput.py's engine baseline (issue 24, part 2): the last step's generate calls are
recorded and replayed straight to the engine with the agent's own sampling parameters, the prefix cache emptied."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from search_gym.rollout.generators import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_grpo_throughput", ROOT / "benchmarks" / "bench_grpo_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


class FakeLLM:
    def __init__(self):
        self.events = []

    def generate(self, prompts, params, use_tqdm=True):
        self.events.append(("generate", [p["prompt_token_ids"] for p in prompts], params))
        return []

    def reset_prefix_cache(self):
        self.events.append(("reset",))


class FakeAgent:
    def __init__(self):
        self.llm = FakeLLM()

    def _sampling(self, index, stop=None, max_new_tokens=None):
        return ("params", index, max_new_tokens)


class FakeGenerator:
    def __init__(self):
        self.pushed = 0

    def generate(self, requests):
        return [len(r.input_ids) for r in requests]

    def sync_weights(self):
        self.pushed += 1


def request(ids, budget):
    return GenerationRequest(input_ids=ids, observation={}, max_new_tokens=budget)


def test_the_last_steps_calls_are_replayed_with_the_agents_parameters():
    generator = FakeGenerator()
    log = bench.RequestLog(generator)
    generator.sync_weights()  # step 1: one call
    assert generator.generate([request([1, 2], 8)]) == [2]  # the wrapped call still answers
    generator.sync_weights()  # step 2: two turns
    generator.generate([request([3], 4), request([4, 5], 4)])
    generator.generate([request([3, 9], 2)])
    assert generator.pushed == 2 and len(log.steps) == 2
    assert log.last_step() == [([[3], [4, 5]], [4, 4]), ([[3, 9]], [2])]
    agent = FakeAgent()
    seconds = bench.engine_generate_seconds(agent, log.last_step(), repeats=2)
    assert seconds >= 0
    assert agent.llm.events == [
        ("reset",), ("generate", [[3], [4, 5]], [("params", 0, 4), ("params", 1, 4)]),
        ("generate", [[3, 9]], [("params", 0, 2)]),
    ] * 2
