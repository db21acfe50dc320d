"""Data-parallel GRPO (search_gym.trainers.distributed): two CPU processes (gloo, launched by torchrun as
``accelerate launch`` would) take the same optimiser steps as one process on the same global batch.

Rollouts are made deterministic by a generator whose text is a function of the token buffer it continues (not of
the rank's sampling seed), so the union of the two ranks' episodes is exactly the one-process batch; the reward is
the fraction of odd policy token ids (nonzero group advantages). Each case runs in both processes of one launch;
this file is also the worker script (``python -m torch.distributed.run ... tests/test_distributed.py <json>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

# name -> GRPOConfig overrides. Together with RESUMED: every loss aggregation, minibatches that split unevenly over
# the ranks (a rank may hold no row of a minibatch), several passes, batch-scaled rewards, the KL term,
# gradients accumulated over forward/backward passes.
CASES = {
    "bnpo_minibatches": dict(loss_type="bnpo", mini_batch_size=3, num_iterations=2),
    "dapo_minibatches_batch_scale": dict(loss_type="dapo", mini_batch_size=4, scale_rewards="batch", beta=0.0),
    # passes of one episode: the ranks hold 1 and 2 rows of a minibatch of 3, so they make different numbers of
    # backward passes (only the last one all-reduces)
    "bnpo_one_episode_passes": dict(loss_type="bnpo", mini_batch_size=3, forward_batch_size=1),
}
# One dr_grpo step saved, then resumed for a grpo step (a second trainer on the same folder, as a restarted job):
# covers the two episode-count aggregations and resume on every rank with one more trainer pair.
RESUMED = "dr_grpo_then_resumed_grpo"
QUESTIONS, GROUP = 4, 2
PIECES = ["the", "capital", "<search> capital of France </search>", "<answer> Paris </answer>", "Jupiter",
          "river", "maybe so", "<answer> Carmen </answer>", "<search> Bizet opera </search>"]


class BufferGenerator:
    """Text chosen by a hash of the token buffer (and of its repeat index among identical buffers in one call):
    deterministic per episode whatever the rank, batch position or seed. No log-probabilities (NaN)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def seed(self, seed):
        pass

    def sync_weights(self):
        pass

    def generate(self, requests):
        from search_gym.trainers.rollout import Generation, encode

        seen: dict[tuple, int] = {}
        out = []
        for request in requests:
            key = tuple(request.input_ids)
            k = seen[key] = seen.get(key, -1) + 1
            digest = hashlib.sha256(json.dumps([key, k]).encode()).digest()
            text = " ".join(PIECES[b % len(PIECES)] for b in digest[: 1 + digest[5] % 3])
            out.append(Generation(encode(self.tokenizer, text), None, text, "stop"))
        return out


def make_trainer(tokenizer, qa_path, corpus_path, output_dir, *, num_envs, **overrides):
    from conftest import WordOverlapRetriever, reward_odd_tokens, tiny_llama

    from search_gym.envs import SearchVectorEnv
    from search_gym.trainers.config import train_env
    from search_gym.trainers.grpo import GRPOTrainer
    from search_gym.trainers.grpo_config import GRPOConfig

    class OddTokenGRPO(GRPOTrainer):
        def collect(self, step):
            return reward_odd_tokens(super().collect(step))

    # A small learning rate: Adam's first step is ~lr * sign(g), so float-rounding differences of near-zero
    # gradients move weights by up to ~lr * 1e-2; the gradient scale itself is checked through losses/grad_norm.
    values = dict(output_dir=str(output_dir), seed=0, learning_rate=1e-4, max_steps=1, save_steps=0,
                  questions_per_step=QUESTIONS, group_size=GROUP, env=train_env(max_turns=2), max_turn_tokens=16,
                  max_response_tokens=160, beta=0.1, tensorboard=False, progress=False)
    values.update(overrides)
    reference = tiny_llama(tokenizer, 0).eval().requires_grad_(False)
    env = SearchVectorEnv(num_envs=num_envs, dataset=str(qa_path), split="test",
                          retriever=WordOverlapRetriever(Path(corpus_path)), max_turns=2)
    return OddTokenGRPO(GRPOConfig(**values), model=tiny_llama(tokenizer, 0), tokenizer=tokenizer, env=env,
                        generator=BufferGenerator(tokenizer), reference=reference)


def run_cases(tokenizer, qa_path, corpus_path, root: Path, num_envs: int) -> dict[str, dict]:
    """Every case's final weights and logged rows (the same code in one process and under torchrun)."""
    out = {}
    for name, overrides in CASES.items():
        trainer = make_trainer(tokenizer, qa_path, corpus_path, root / name, num_envs=num_envs, **overrides)
        rows = trainer.train()
        out[name] = {"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, "rows": rows}
    first = make_trainer(tokenizer, qa_path, corpus_path, root / RESUMED, num_envs=num_envs, max_steps=1,
                         loss_type="dr_grpo")
    first.train()
    resumed = make_trainer(tokenizer, qa_path, corpus_path, root / RESUMED, num_envs=num_envs, max_steps=2,
                           loss_type="grpo")
    rows = resumed.train()
    out[RESUMED] = {"params": {k: v.detach().clone() for k, v in resumed.model.state_dict().items()}, "rows": rows}
    return out


def worker(args: dict) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rank = int(os.environ["RANK"])
    results = run_cases(tokenizer, args["qa"], args["corpus"], Path(args["root"]), num_envs=QUESTIONS // 2 * GROUP)
    torch.save(results, Path(args["root"]) / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_take_the_one_process_steps(tokenizer, smollm2_folder, tiny_qa_path, tiny_corpus_path,
                                                  tmp_path):
    args = {"tokenizer": str(smollm2_folder), "qa": str(tiny_qa_path), "corpus": str(tiny_corpus_path),
            "root": str(tmp_path / "ddp")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(HERE)}
    launch = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(HERE / "test_distributed.py"), json.dumps(args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The one-process runs while the launch starts up (2 cores: the two overlap well).
    single = run_cases(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path / "single", num_envs=QUESTIONS * GROUP)
    log, _ = launch.communicate(timeout=300)
    assert launch.returncode == 0, log[-4000:]
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    start = make_start(tokenizer)
    for name in [*CASES, RESUMED]:
        one, (r0, r1) = single[name]["params"], (ranks[0][name]["params"], ranks[1][name]["params"])
        assert any(not torch.equal(one[k], start[k]) for k in one), name  # the step moved the weights
        for key in one:
            assert torch.equal(r0[key], r1[key]), (name, key)  # both ranks hold the same weights
            assert torch.allclose(r0[key], one[key], atol=1e-5, rtol=0), (
                name, key, float((r0[key] - one[key]).abs().max()))
        # The reduced metrics are the job's: the same on both ranks and, for batch means, the one-process value.
        rows_one, rows_r0, rows_r1 = (x[name]["rows"] for x in (single, *ranks))
        assert rows_r0 == rows_r1 or _same_but_timing(rows_r0, rows_r1), name
        assert len(rows_one) == len(rows_r0) == 1
        for a, b in zip(rows_one, rows_r0):
            for key in ("charts/episodic_return", "charts/policy_tokens", "charts/reward_std",
                        "charts/advantage_abs", "losses/policy_loss", "losses/grad_norm", "charts/learning_rate"):
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (name, key, a[key], b[key])
    # Only rank 0 wrote the run folder (one metrics file, one checkpoint per save) and every rank resumed from it.
    assert [r["step"] for r in ranks[1][RESUMED]["rows"]] == [2]
    assert (tmp_path / "ddp" / RESUMED / "checkpoint-1" / "trainer_state.pt").exists()


def make_start(tokenizer) -> dict[str, torch.Tensor]:
    from conftest import tiny_llama

    return tiny_llama(tokenizer, 0).state_dict()


def _same_but_timing(a: list[dict], b: list[dict]) -> bool:
    keep = lambda row: {k: v for k, v in row.items() if not k.startswith("time/")}  # noqa: E731
    return [keep(r) for r in a] == [keep(r) for r in b]


def test_questions_per_step_must_split_over_the_ranks(tmp_path):
    class FakeAccelerator:  # enough of an Accelerator for the check that runs before anything is made
        num_processes, process_index, is_main_process, device = 3, 0, True, torch.device("cpu")

    with pytest.raises(ValueError, match="multiple of 3"):
        from search_gym.trainers.grpo import GRPOTrainer
        from search_gym.trainers.grpo_config import GRPOConfig

        GRPOTrainer(GRPOConfig(output_dir=str(tmp_path), questions_per_step=4), accelerator=FakeAccelerator())


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
