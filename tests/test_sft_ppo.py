"""SFT warm start and PPO on CPU with a tiny random model and the bundled model's real tokenizer."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import torch

from conftest import WordOverlapRetriever, tiny_llama




def tiny_model(tokenizer, seed: int = 0):
    return tiny_llama(tokenizer, seed)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def sft_episodes(tokenizer, tiny_qa_path, tiny_corpus_path):
    from search_gym.trainers.sft import build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    config = SFTConfig(benign_repeat=2, progress=False)
    return build_sft_episodes(
        config, tokenizer, num_envs=4, progress=False,
        datasets={"qa": (str(tiny_qa_path), "train"), "harmful": None, "benign": None},
        env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)},
    )


def test_sft_data_is_oracle_trajectories_with_env_tokens_masked(sft_episodes, tokenizer):
    from search_gym.trainers.rollout import decode

    assert sft_episodes, "the oracle answers the tiny QA questions from the overlap retriever's passages"
    for ep in sft_episodes:
        assert ep.correct and ep.answered and ep.invalid_actions == 0 and ep.num_searches == 1
        text = decode(tokenizer, ep.response_ids)
        assert text.count("<information>") == 1
        for start, end, kind in ep.spans:
            piece = decode(tokenizer, ep.response_ids[start:end])
            assert set(ep.loss_mask[start:end]) == {1 if kind == "policy" else 0}
            if "<information>" in piece:
                assert kind == "env"
        # the answer is policy text, the passages are not
        policy = decode(tokenizer, [t for t, m in zip(ep.response_ids, ep.loss_mask) if m])
        assert "<answer>" in policy and "Doc 1(Title:" not in policy


def test_refusal_and_oracle_agents():
    from conftest import observation

    from search_gym.agents import OracleAgent, RefusalAgent
    from search_gym.envs.protocol import parse_tagged_action
    from search_gym.safety.refusal import RefusalSubstringJudge

    refusal = RefusalAgent().act(observation("Explain how to build a bomb")).text
    parsed = parse_tagged_action(refusal, max_chars=10_000, max_tags=8)
    assert parsed.kind == "answer"
    assert RefusalSubstringJudge().match(parsed.content) is not None
    oracle = OracleAgent({"What is the capital of France?": ["Paris"]})
    first = oracle.act(observation("What is the capital of France?")).text
    assert "<search> What is the capital of France? </search>" in first
    info = '<search> q </search>\n\n<information>Doc 1(Title: "France") France; its capital is Paris.</information>\n\n'
    assert "<answer> Paris </answer>" in oracle.act(observation("What is the capital of France?", info)).text


def _sft(tmp_path, tokenizer, episodes, max_steps, name="run", **fields):
    from search_gym.trainers.sft import SFTTrainer
    from search_gym.trainers.sft_config import SFTConfig

    settings = dict(output_dir=str(tmp_path / name), max_steps=max_steps, batch_size=2, save_steps=1,
                    learning_rate=1e-3, warmup_steps=0, progress=False, tensorboard=False, device="cpu")
    config = SFTConfig(**{**settings, **fields})
    model = tiny_model(tokenizer)
    return SFTTrainer(config, model=model, tokenizer=tokenizer, episodes=episodes), model


def test_sft_steps_change_parameters_and_resume_exactly(tmp_path, tokenizer, sft_episodes):
    trainer, model = _sft(tmp_path, tokenizer, sft_episodes, 3, "full")
    before = _params(model)
    rows = trainer.train()
    assert all(math.isfinite(r["losses/sft_loss"]) for r in rows)
    assert any((a - b).abs().max() > 0 for a, b in zip(before, model.parameters()))
    assert (tmp_path / "full" / "final" / "config.json").exists()
    # Killed after step 2, resumed: the third step sees the same batch and gives the same loss and weights.
    part, _ = _sft(tmp_path, tokenizer, sft_episodes, 3, "resumed")
    part.total_steps = 2  # the same run (same schedule), stopped after its step-2 checkpoint
    part.train()
    resumed, resumed_model = _sft(tmp_path, tokenizer, sft_episodes, 3, "resumed")
    rest = resumed.train()
    assert [r["step"] for r in rest] == [3]
    assert rest[0]["losses/sft_loss"] == pytest.approx(rows[2]["losses/sft_loss"], abs=1e-6)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_ppo_steps_change_policy_and_value_head(tmp_path, tokenizer, tiny_qa_path, tiny_corpus_path):
    from search_gym.envs.vector import SearchVectorEnv
    from search_gym.trainers.config import train_env
    from search_gym.trainers.ppo import PPOTrainer, gae_over_mask
    from search_gym.trainers.ppo_config import PPOConfig

    class DistinctRewards(PPOTrainer):
        """A random tiny model never answers; give its episodes distinct rewards so the update has a signal."""

        def collect(self, step):
            episodes = super().collect(step)
            for i, ep in enumerate(episodes):
                ep.reward = ep.task_reward = float(i % 2)
            return episodes

    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), retriever=WordOverlapRetriever(tiny_corpus_path))
    model = tiny_model(tokenizer)
    reference = tiny_model(tokenizer)
    reference.load_state_dict(model.state_dict())
    config = PPOConfig(output_dir=str(tmp_path / "ppo"), max_steps=2, questions_per_step=4, group_size=1,
                       max_turn_tokens=8, env=train_env(max_turns=2), learning_rate=1e-3, progress=False,
                       tensorboard=False, device="cpu", kl_coef=0.05)
    trainer = DistinctRewards(config, model=model, tokenizer=tokenizer, env=env, reference=reference)
    before, head_before = _params(model), _params(trainer.value_head)
    rows = trainer.train()
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("losses/policy_loss", "losses/value_loss", "losses/entropy"))
    assert any((a - b).abs().max() > 0 for a, b in zip(before, model.parameters()))
    assert any((a - b).abs().max() > 0 for a, b in zip(head_before, trainer.value_head.parameters()))
    # GAE skips environment tokens: two policy tokens separated by masked ones behave as consecutive steps.
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 9.0, 9.0, 0.25]])
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    adv, ret = gae_over_mask(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[0, 3] == pytest.approx(0.75) and adv[0, 0] == pytest.approx(0.5)
    assert adv[0, 1] == 0 and adv[0, 2] == 0 and ret[0, 0] == pytest.approx(1.0)


def test_train_cli_flags_come_from_the_configs(tmp_path):
    from search_gym.cli import build_parser
    from search_gym.trainers.config import build_config
    from search_gym.trainers.grpo_config import GRPOConfig

    yaml_file = tmp_path / "grpo.yaml"
    yaml_file.write_text("beta: 0.2\nloss-type: dapo\ngroup_size: 8\n")
    args = build_parser().parse_args(["train", "grpo", "--config", str(yaml_file), "--beta", "0.05",
                                      "--penalty.relu", "true", "--epsilon-high", "none"])
    config = build_config(GRPOConfig, args, args.config)
    assert (config.beta, config.loss_type, config.group_size, config.penalty.relu) == (0.05, "dapo", 8, True)
    assert config.epsilon_high is None and config.learning_rate == GRPOConfig().learning_rate
    out = subprocess.run([sys.executable, "-m", "search_gym.cli", "train", "ppo", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--cliprange-value" in out and "--penalty.lambda" in out and "value clip range" in out


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_policy")
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_lora_sft_trains_adapters_resumes_and_saves_a_merged_model(tmp_path, tiny_folder, tokenizer, sft_episodes):
    from transformers import AutoModelForCausalLM

    from search_gym.trainers.sft import SFTTrainer
    from search_gym.trainers.sft_config import SFTConfig

    def trainer(steps_done=None):
        config = SFTConfig(model=str(tiny_folder), output_dir=str(tmp_path / "lora"), max_steps=3, batch_size=2,
                           save_steps=1, learning_rate=1e-2, warmup_steps=0, lora_r=4, lora_alpha=8,
                           lora_target_modules="q_proj,v_proj", progress=False, tensorboard=False, device="cpu")
        t = SFTTrainer(config, episodes=sft_episodes)
        if steps_done is not None:
            t.total_steps = steps_done
        return t

    first = trainer(steps_done=2)
    trainable = [n for n, p in first.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # only the adapters train
    first.train()
    resumed = trainer()
    rows = resumed.train()
    assert [r["step"] for r in rows] == [3]
    straight = SFTTrainer(SFTConfig(**{**resumed.config.__dict__, "output_dir": str(tmp_path / "lora_straight")}),
                          episodes=sft_episodes)
    straight_rows = straight.train()
    assert rows[0]["losses/sft_loss"] == pytest.approx(straight_rows[2]["losses/sft_loss"], abs=1e-6)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "final")
    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(dict(merged.named_parameters())[q], dict(base.named_parameters())[q])


def test_grpo_with_penalty_records_drift_on_checkpoints(tmp_path, tokenizer, tiny_qa_path, tiny_corpus_path):
    import json

    from search_gym.directions import Direction
    from search_gym.envs.vector import SearchVectorEnv
    from search_gym.trainers.config import PenaltyConfig, train_env
    from search_gym.trainers.grpo import GRPOTrainer
    from search_gym.trainers.grpo_config import GRPOConfig

    model = tiny_model(tokenizer)
    reference = tiny_model(tokenizer)
    reference.load_state_dict(model.state_dict())
    d = 32
    vectors = torch.nn.functional.normalize(torch.randn(2, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    direction = Direction("planted", (0, 1), vectors, torch.ones(2), torch.zeros(2, d), torch.zeros(2, d),
                          torch.ones(2), chosen_layer=1)
    path = direction.save(tmp_path / "planted.safetensors")
    env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), retriever=WordOverlapRetriever(tiny_corpus_path),
                          attack="multi_search:n=2")  # every episode searches twice

    config = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, questions_per_step=2, group_size=2,
                        max_turn_tokens=6, beta=0.0, learning_rate=1e-3, progress=False,
                        tensorboard=False, device="cpu", save_steps=1, drift_every=1, drift_prompts=3,
                        env=train_env(max_turns=3),
                        # the first <search> is prefilled here: its state depends on the prompt alone, equal within a
                        # group; the second one follows the policy's own query, so the mean differs within a group
                        penalty=PenaltyConfig(direction=str(path), lambda_=0.5, searches="mean"))
    trainer = GRPOTrainer(config, model=model, tokenizer=tokenizer, env=env, reference=reference)
    before = _params(model)
    rows = trainer.train()
    assert all("safety/projection" in r and math.isfinite(r["safety/projection"]) for r in rows)
    # the task reward is 0 for a random model: the penalty alone gives the group its advantages
    assert any((a - b).abs().max() > 0 for a, b in zip(before, model.parameters()))
    assert all(math.isfinite(r["losses/policy_loss"]) for r in rows)
    drift_rows = [json.loads(line) for line in (tmp_path / "grpo" / "drift.jsonl").read_text().splitlines()]
    assert [r["step"] for r in drift_rows] == [0, 1, 2] and all(r["layer"] == 1 for r in drift_rows)
    assert all(math.isfinite(r["mean"]) and r["auroc"] is not None for r in drift_rows)


def test_oracle_answers_edgy_requests_with_a_whole_short_sentence():
    from search_gym.agents.baselines import short_grounded_answer

    long = "This opening sentence runs on, clause after clause, " + "word " * 30 + "until it ends."
    # the first passage whose opening sentence fits wins, even below the top passage
    assert short_grounded_answer([("A", long + " Next."), ("B", "B is short. Then more.")]) == "B is short."
    # none fits: the top passage's opening clause, closed with a full stop
    cut = short_grounded_answer([("A", long)], max_words=12)
    assert cut == "This opening sentence runs on, clause after clause." and len(cut.split()) <= 12
    assert short_grounded_answer([("Title", "")]) == "Title"


def test_sft_sources_helpful_and_refusal_teachers(tokenizer, tiny_qa_path, tiny_corpus_path):
    """The judge-data sources' teachers: benign requests get a searched, grounded answer, harmful ones a refusal."""
    from search_gym.safety.refusal import RefusalSubstringJudge
    from search_gym.trainers.rollout import decode
    from search_gym.trainers.sft import build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    config = SFTConfig(progress=False, instruct_limit=0, pair_harmful_limit=0)
    none = {k: None for k in ("qa", "harmful", "benign")}
    episodes = build_sft_episodes(
        config, tokenizer, num_envs=4, progress=False,
        datasets={**none, "instruct": (str(tiny_qa_path), "train"), "harmful_pairs": (str(tiny_qa_path), "train")},
        env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)},
    )
    groups = {ep.group for ep in episodes}
    assert groups == {3, 4}, "instruct (source 3) and harmful_pairs (source 4) both kept trajectories"
    judge = RefusalSubstringJudge()
    for ep in episodes:
        policy = decode(tokenizer, [t for t, m in zip(ep.response_ids, ep.loss_mask) if m])
        refused = judge.match(policy.split("<answer>")[-1]) is not None
        assert refused == (ep.group == 4)
        assert ep.num_searches == (1 if ep.group == 3 else 0)


def test_sft_dev_split_rows_are_exactly_those_kept_out_of_training(tmp_path, tokenizer, tiny_corpus_path,
                                                                   monkeypatch):
    """With ``dev_split``, the ids played for training and the rows written to ``dev/`` partition every source:
    nothing in dev/ is trained on, and nothing is kept out of training without being in dev/."""
    import json

    from search_gym.build import load_questions
    from search_gym.trainers import sft
    from search_gym.trainers.sft_config import SFTConfig

    played = {}

    class Recorder:  # stands in for the rollouts: which ids each source would play
        def __init__(self, venv, *args, **kwargs):
            self.env = venv.envs[0]

        def collect(self, ids, *args, **kwargs):
            played[(self.env.dataset, self.env.split)] = list(ids)
            return []

    monkeypatch.setattr(sft, "RolloutCollector", Recorder)
    config = SFTConfig(dev_split=True, progress=False, output_dir=str(tmp_path), qa_limit=0, harmful_limit=0,
                       benign_limit=0, instruct_limit=0, pair_harmful_limit=0)
    assert sft.build_sft_episodes(config, tokenizer, num_envs=1, progress=False,
                                  env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)}) == []
    for name, (dataset, split, _) in sft.SOURCES.items():
        if dataset.startswith("package:"):  # written for training only (edgy_extra): no dev rows, off by default
            assert not (tmp_path / "dev" / f"{name}.jsonl").exists()
            assert str(tmp_path / "sources" / f"{name}.jsonl") not in {d for d, _ in played}
            continue
        if dataset.startswith("judge:"):  # judge data: the requests file written for the run
            dataset = str(tmp_path / "sources" / f"{name}.jsonl")
        dev = [json.loads(line)["id"] for line in (tmp_path / "dev" / f"{name}.jsonl").read_text().splitlines()]
        trained = played[(dataset, split)]
        everything = [q.id for q in load_questions(dataset, split)]
        assert dev and trained, name
        assert not set(dev) & set(trained), f"{name}: dev rows are trained on"
        if not sft.SOURCES[name][0].startswith("judge:"):  # a bundled set: the carve splits its rows in two
            assert sorted(dev + trained) == sorted(everything), f"{name}: rows kept out of training but not in dev"


def test_sft_recipe_selection_rule(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sft_select", Path(__file__).parents[1] / "examples/sft_select.py")
    select = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(select)

    def summary(em, refusal, answered, invalid=0.0):
        def m(v, n=100):
            return {"mean": v, "lo": v, "hi": v, "n": n}
        sets = {"qa": {"em": m(em)}, "harmful": {"refusal": m(refusal)}, "harmful_pairs": {"refusal": m(refusal)},
                "benign": {"answered": m(answered, 17)}, "instruct": {"answered": m(answered, 264)}}
        cells = []
        for name, metrics in sets.items():
            metrics.setdefault("invalid", m(invalid))
            metrics.setdefault("refusal", m(0.0))
            metrics.setdefault("answered", m(0.0))
            metrics.setdefault("em", m(0.0))
            cells.append({"prompt_set": f"/x/dev/{name}.jsonl", "metrics": metrics})
        return {"cells": cells}

    def run(**recipes):
        for name, s in recipes.items():
            (tmp_path / f"dev_{name}").mkdir(exist_ok=True)
            (tmp_path / f"dev_{name}" / "summary.json").write_text(json.dumps(s))
        assert select.main([str(tmp_path), *recipes]) == 0
        return (tmp_path / "sft_selected").read_text().strip()

    # the gentler (last-listed) recipe wins within 2 points of the best eligible score
    assert run(main=summary(0.45, 99, 90), soft=summary(0.40, 95, 88.5)) == "soft"
    # ... but not when it is worse by more than that, nor when it misses a target
    assert run(main=summary(0.45, 99, 90), soft=summary(0.40, 95, 80)) == "main"
    assert run(main=summary(0.45, 99, 85), soft=summary(0.25, 95, 95)) == "main"
    # none eligible: the fewest failed targets (main misses invalid <= 0.3 on all 5 sets, soft two refusal targets)
    assert run(main=summary(0.45, 99, 85, invalid=0.5), soft=summary(0.40, 70, 95)) == "soft"
    assert run(main=summary(0.45, 70, 85), soft=summary(0.40, 99, 95, invalid=0.5)) == "main"


def test_sft_loss_is_the_cross_entropy_of_the_policy_tokens(tokenizer):
    """The SFT loss (token log-probabilities with the prompt's logits skipped) equals a full cross-entropy
    masked to the policy tokens."""
    import torch

    from conftest import tiny_llama
    from search_gym.trainers.core import TokenBatch
    from search_gym.trainers.sft import sft_loss

    model = tiny_llama(tokenizer, 0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0  # right padding
    mask = torch.zeros(3, 11)
    mask[0, 4:] = 1
    mask[1, 6:9] = 1
    mask[2, 5:8] = 1
    batch = TokenBatch(ids, attention, mask, torch.zeros(3, 11))
    loss, tokens = sft_loss(model, batch)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                            reduction="none").view_as(mask)
    assert tokens == int(mask.sum())
    assert torch.allclose(loss, (nll * mask).sum() / mask.sum(), atol=1e-6)


def test_aligned_teachers_vary_rephrase_and_meet_a_forced_search_without_the_request(tokenizer, tiny_qa_path,
                                                                                      tiny_corpus_path):
    """teacher='aligned': QA trajectories search a rephrased query (never the question) after varied thoughts;
    harmful_search plays harmful requests under a forced <search> and writes no part of the request there."""


    from search_gym.safety.refusal import RefusalSubstringJudge
    from search_gym.trainers.rollout import decode
    from search_gym.trainers.sft import SOURCES, build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    config = SFTConfig(progress=False, teacher="aligned", harmful_search_limit=0)
    none = {k: None for k in ("harmful", "benign", "instruct", "harmful_pairs")}
    harmful = tiny_qa_path  # any questions: the refusal teacher treats every request as harmful
    episodes = build_sft_episodes(
        config, tokenizer, num_envs=4, progress=False,
        datasets={**none, "qa": (str(tiny_qa_path), "test"), "harmful_search": (str(harmful), "test")},
        env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)},
    )
    qa_group, forced_group = list(SOURCES).index("qa"), list(SOURCES).index("harmful_search")
    qa = [ep for ep in episodes if ep.group == qa_group]
    forced = [ep for ep in episodes if ep.group == forced_group]
    assert qa and len(forced) == 5
    for ep in qa:
        assert ep.searches and all(s.rstrip("?") != ep.question.rstrip("?") for s in ep.searches)
    judge = RefusalSubstringJudge()
    for ep in forced:
        text = decode(tokenizer, ep.response_ids)
        assert text.startswith("<search>")  # the attack's prefill, an env span
        assert ep.spans[0][2] != "policy"
        query = ep.searches[0]
        assert ep.question.rstrip("?").lower() not in query.lower()
        assert judge.match(text.split("<answer>")[-1]) is not None  # refuses after the information block
    import pytest

    with pytest.raises(ValueError, match="needs teacher='aligned'"):
        build_sft_episodes(SFTConfig(progress=False, harmful_search_limit=0), tokenizer, datasets={**none},
                           env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)})
    with pytest.raises(ValueError, match="teacher="):
        from search_gym.trainers.sft import make_teacher

        make_teacher("refusal", "varied", {}, 0)



def test_instruct_repeat_weights_the_benign_instruction_rows(tokenizer, tiny_qa_path, tiny_corpus_path):
    """``instruct_repeat`` N: each kept benign instruction-style trajectory appears N times (recipe 3 of
    docs/aligned_start.md), other sources once."""
    from search_gym.trainers.sft import build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    def build(repeat):
        return build_sft_episodes(
            SFTConfig(instruct_repeat=repeat, instruct_limit=0, teacher="aligned", progress=False), tokenizer,
            num_envs=4, progress=False,
            datasets={"qa": None, "harmful": None, "benign": None, "instruct": (str(tiny_qa_path), "train")},
            env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)})

    once, thrice = build(1), build(3)
    assert once and len(thrice) == 3 * len(once)
    assert len({id(ep) for ep in thrice}) == len(once)  # the same trajectories, repeated


def test_qa_repeat_weights_the_qa_rows(tokenizer, tiny_qa_path, tiny_corpus_path):
    """``qa_repeat`` N: each kept (correct) QA trajectory appears N times (recipe 4a of docs/aligned_start.md)."""
    from search_gym.trainers.sft import build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    def build(repeat):
        return build_sft_episodes(
            SFTConfig(qa_repeat=repeat, teacher="aligned", progress=False), tokenizer, num_envs=4, progress=False,
            datasets={"qa": (str(tiny_qa_path), "train"), "harmful": None, "benign": None},
            env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)})

    once, twice = build(1), build(2)
    assert once and len(twice) == 2 * len(once)
    assert len({id(ep) for ep in twice}) == len(once)  # the same trajectories, repeated


def test_lower_passage_repeat_and_grounded_thought(tokenizer, tmp_path):
    """Recipe 5 of docs/aligned_start.md: ``qa_lower_passage_repeat`` N repeats exactly the kept QA rows whose answer
    is not in the top passage (N x qa_repeat times); ``grounded_thought`` writes the answer's passage into the thought
    before the answer and needs the aligned teacher."""
    from conftest import write_jsonl

    from search_gym.agents.baselines import _information_docs
    from search_gym.trainers.sft import answered_from_lower_passage, build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    # word overlap ranks "Swedish lakes" (id 0) above "Stockholm" for a Sweden query (a tie, broken by id), so that
    # question's answer is in passage 2; Norway's is in passage 1
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": "0", "contents": '"Swedish lakes"\nthe capital of sweden has lakes'},
        {"id": "1", "contents": '"Stockholm"\nstockholm is the capital of sweden'},
        {"id": "2", "contents": '"Oslo"\noslo is the capital of norway'}])
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"id": "se", "question": "What is the capital of Sweden?", "golden_answers": ["Stockholm"]},
        {"id": "no", "question": "What is the capital of Norway?", "golden_answers": ["Oslo"]}])

    def build(teacher="aligned", **fields):
        return build_sft_episodes(
            SFTConfig(teacher=teacher, progress=False, **fields), tokenizer, num_envs=2, progress=False,
            datasets={"qa": (str(qa), "train"), "harmful": None, "benign": None},
            env_kwargs={"retriever": WordOverlapRetriever(corpus)})

    base = build()
    lower = {ep.question: answered_from_lower_passage(ep, tokenizer, ep.golden_answers) for ep in base}
    assert lower == {"What is the capital of Sweden?": True, "What is the capital of Norway?": False}
    weighted = build(qa_lower_passage_repeat=3, qa_repeat=2)
    counts = {q: sum(ep.question == q for ep in weighted) for q in lower}
    assert counts == {"What is the capital of Sweden?": 6, "What is the capital of Norway?": 2}
    for ep in build(grounded_thought=True):
        text = tokenizer.decode(ep.response_ids)
        thought = text.rsplit("<think>", 1)[1].split("</think>")[0]
        k = 2 if "Sweden" in ep.question else 1
        assert f"Doc {k}" in thought and _information_docs(text)[k - 1][0] in thought
    assert all("Doc 1 (" not in tokenizer.decode(ep.response_ids) for ep in base if "Sweden" in ep.question)
    with pytest.raises(ValueError, match="grounded_thought needs teacher='aligned'"):
        build(teacher="fixed", grounded_thought=True)


def test_ppo_accumulated_passes_equal_one_pass(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path):
    """PPO's forward_batch_size splits each minibatch into forward/backward passes whose gradients accumulate (what
    let the algorithm comparison's PPO arm fit beside four other runs on one H100): the logged losses and the update
    equal one pass over the minibatch."""
    from search_gym.envs.vector import SearchVectorEnv
    from search_gym.trainers.config import train_env
    from search_gym.trainers.ppo import PPOTrainer
    from search_gym.trainers.ppo_config import PPOConfig

    model = tiny_model(tokenizer)
    trainers = []
    for name, passes in (("whole", 0), ("split", 1)):
        env = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), retriever=WordOverlapRetriever(tiny_corpus_path))
        policy, reference = tiny_model(tokenizer), tiny_model(tokenizer)
        policy.load_state_dict(model.state_dict())
        reference.load_state_dict(model.state_dict())
        config = PPOConfig(output_dir=str(tmp_path / name), max_steps=1, questions_per_step=4, group_size=1,
                           max_turn_tokens=8, env=train_env(max_turns=2), learning_rate=1e-3, progress=False,
                           tensorboard=False, device="cpu", kl_coef=0.05, ent_coef=0.01, forward_batch_size=passes)
        trainers.append(PPOTrainer(config, model=policy, tokenizer=tokenizer, env=env, reference=reference))
    whole, split = trainers
    split.value_head.load_state_dict(whole.value_head.state_dict())
    episodes = whole.collect(0)
    for i, ep in enumerate(episodes):
        ep.reward = ep.task_reward = float(i % 2)
    # unequal lengths, so a mean per pass would differ from the minibatch's: drop one episode's last policy tokens
    ones = [i for i, m in enumerate(episodes[0].loss_mask) if m]
    for i in ones[-3:]:
        episodes[0].loss_mask[i] = 0
    assert len({sum(e.loss_mask) for e in episodes}) > 1
    one, parts = whole.update(episodes), split.update(episodes)
    for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/grad_norm"):
        assert parts[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    # Adam's first steps are ~lr * sign(g): where a gradient is near Adam's eps, float summation order moves an
    # element by up to ~1e-3 of a step (test_trainers' GRPO check), here over num_iterations = 2 optimiser steps;
    # the scale of the gradients is what the grad_norm check above pins down.
    step = whole.config.learning_rate
    for a, b in zip(list(whole.model.parameters()) + list(whole.value_head.parameters()),
                    list(split.model.parameters()) + list(split.value_head.parameters())):
        assert torch.allclose(a, b, atol=3e-3 * step, rtol=0), float((a - b).abs().max()) / step
    assert any(not torch.equal(a, b) for a, b in zip(whole.model.parameters(), model.parameters()))  # it moved


def test_edgy_extra_source_is_off_by_default_and_trains_only(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path):
    """``edgy_extra_limit`` adds the search_gym/data/edgy_benign_sft.json questions, answered after a search by the
    helpful teacher, drawn by the seeded subset and repeated ``edgy_extra_repeat`` times; nothing of them reaches
    dev/ (training rows only), and the default adds none."""
    import json
    from importlib.resources import files

    from search_gym.trainers.sft import SOURCES, build_sft_episodes
    from search_gym.trainers.sft_config import SFTConfig

    written = {p["question"] for p in json.loads(files("search_gym.data").joinpath(
        "edgy_benign_sft.json").read_text())["prompts"]}
    assert len(written) == 144

    def build(root, **fields):
        return build_sft_episodes(
            SFTConfig(teacher="aligned", progress=False, dev_split=True, **fields), tokenizer, num_envs=4,
            progress=False, root=root, datasets={"qa": (str(tiny_qa_path), "train"), "harmful": None, "benign": None},
            env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)})

    group = list(SOURCES).index("edgy_extra")
    assert not [ep for ep in build(tmp_path / "off") if ep.group == group]
    once = [ep for ep in build(tmp_path / "on", edgy_extra_limit=6) if ep.group == group]
    assert 0 < len({ep.question for ep in once}) <= 6 and {ep.question.strip() for ep in once} <= written
    from search_gym.agents.teachers import REFUSALS

    assert all(ep.num_searches > 0 and ep.answered and ep.answer not in REFUSALS for ep in once)
    twice = [ep for ep in build(tmp_path / "twice", edgy_extra_limit=6, edgy_extra_repeat=2) if ep.group == group]
    assert len(twice) == 2 * len(once)
    assert (tmp_path / "on" / "sources" / "edgy_extra.jsonl").is_file()
    assert not (tmp_path / "on" / "dev" / "edgy_extra.jsonl").exists()


@pytest.mark.needs_asset("minilm")
def test_edgy_extra_prompts_stay_clear_of_every_evaluation_prompt():
    """The written edgy prompts are training data: none may sit near a validation or held-out prompt (benign, harmful,
    the judges' val requests). The rule of the file's "decontamination" field: all-MiniLM-L6-v2 cosine <= 0.80."""
    import json
    from importlib.resources import files

    from search_gym.build import load_questions
    from search_gym.corpora.judge_data import load_judge_rows, split_for_bundled
    from search_gym.retrieval.encoders import load_encoder

    written = [p["question"] for p in json.loads(files("search_gym.data").joinpath(
        "edgy_benign_sft.json").read_text())["prompts"]]
    evaluation = [q.question for kind in ("benign", "harmful") for q in load_questions(kind, "heldout")]
    evaluation += [q.question for kind in ("benign", "harmful") for q in load_questions(kind, "train")
                   if split_for_bundled(q.id, "train") == "val"]
    evaluation += [r["text"] for r in load_judge_rows("val") if r["kind"] == "request"]
    encoder = load_encoder("minilm")
    a = encoder.encode(written, normalize_embeddings=True, show_progress_bar=False)
    b = encoder.encode(evaluation, normalize_embeddings=True, show_progress_bar=False, batch_size=128)
    closest = (a @ b.T).max(axis=1)
    assert len(evaluation) > 1000 and float(closest.max()) <= 0.80, [
        (written[i], round(float(closest[i]), 3)) for i in range(len(written)) if closest[i] > 0.80]


def test_decision_weight_scales_the_first_thought_only(tmp_path, tokenizer, sft_episodes):
    """decision_weight multiplies the loss terms of each row's first thought (first policy span up to its first
    </think>) and nothing else; the sum stays divided by the plain token count; a run with it trains."""
    from conftest import tiny_llama
    from search_gym.trainers.core import collate
    from search_gym.trainers.rollout import decode
    from search_gym.trainers.sft import first_thought, sft_loss, thought_masks, thought_weights

    rows = sft_episodes[:3]
    thoughts = [first_thought(ep, tokenizer) for ep in rows]
    for ep, (start, end) in zip(rows, thoughts):
        first_policy = next(s for s in ep.spans if s[2] == "policy")
        assert start == first_policy[0] < end <= first_policy[1]
        text = decode(tokenizer, ep.response_ids[start:end])
        assert text.rstrip().endswith("</think>") and text.count("</think>") == 1
        assert "</think>" not in decode(tokenizer, ep.response_ids[start:end - 1])
    batch = collate(rows, tokenizer.pad_token_id)
    masks = thought_masks(rows, batch, {"first_thought": thoughts})
    w = thought_weights(batch, masks, {"first_thought": 4.0})
    changed = (w != batch.loss_mask).nonzero().tolist()
    expected = [[b, len(ep.prompt_ids) - 1 + k] for b, (ep, (s, e)) in enumerate(zip(rows, thoughts))
                for k in range(s, e)]
    assert changed == expected and torch.all(w[w != batch.loss_mask] == 4.0)
    model = tiny_llama(tokenizer, 1)
    plain, n = sft_loss(model, batch)
    weighted, n2 = sft_loss(model, batch, w)
    thoughts_only, _ = sft_loss(model, batch, (w != batch.loss_mask).float())
    assert n == n2 and torch.allclose(weighted, plain + 3.0 * thoughts_only, atol=1e-5)
    from search_gym.trainers.sft import sft_loss_terms

    _, sums = sft_loss_terms(model, batch, w, masks=masks)  # the plain sum is what a run logs as its loss
    assert sums["tokens"] == n and sums["first_thought_tokens"] == float((w != batch.loss_mask).sum())
    assert sums["nll"] / n == pytest.approx(float(plain), abs=1e-5)
    assert sums["first_thought_nll"] == pytest.approx(float(thoughts_only) * n, abs=1e-4)
    assert first_thought(type(rows[0])(question_id="x", question="x", response_ids=[1, 2],
                                       spans=[(0, 2, "policy")]), tokenizer) == (0, 0)
    trainer, _ = _sft(tmp_path, tokenizer, sft_episodes, 2, "weighted", decision_weight=4.0)
    assert set(trainer.thoughts["first_thought"].values()) >= set(thoughts)
    logged = trainer.train()
    assert all(math.isfinite(r["losses/sft_loss"]) and r["losses/first_thought_loss"] > 0 for r in logged)
    assert not any("answer_thought" in k for k in logged[0])


def test_passage_weight_scales_the_grounded_answer_thought(tmp_path, tokenizer, tiny_qa_path, tiny_corpus_path):
    """passage_weight multiplies the loss terms of the last turn's thought when it names a passage ("Doc 2 (Title)
    answers the question.", the grounded teacher), where the student picks the passage to read; with decision_weight
    too, each thought gets its own weight; a run logs both thoughts' losses and trains."""
    from conftest import tiny_llama
    from search_gym.trainers.core import collate
    from search_gym.trainers.rollout import decode
    from search_gym.trainers.sft import (answer_thought, build_sft_episodes, first_thought, sft_loss, thought_masks,
                                         thought_weights)
    from search_gym.trainers.sft_config import SFTConfig

    config = SFTConfig(teacher="aligned", grounded_thought=True, progress=False)
    rows = build_sft_episodes(config, tokenizer, num_envs=4, progress=False,
                              datasets={"qa": (str(tiny_qa_path), "train"), "harmful": None, "benign": None},
                              env_kwargs={"retriever": WordOverlapRetriever(tiny_corpus_path)})[:4]
    assert len(rows) == 4
    firsts = [first_thought(ep, tokenizer) for ep in rows]
    answers = [answer_thought(ep, tokenizer) for ep in rows]
    for ep, (start, end) in zip(rows, answers):
        last_policy = [s for s in ep.spans if s[2] == "policy"][-1]
        assert start == last_policy[0] < end <= last_policy[1]
        text = decode(tokenizer, ep.response_ids[start:end])
        assert re.search(r"Doc \d", text) and text.rstrip().endswith("</think>") and text.count("</think>") == 1
    # a one-turn row (a refusal) and a last thought that names no passage have none
    assert answer_thought(type(rows[0])(question_id="x", question="x", response_ids=[1, 2],
                                        spans=[(0, 2, "policy")]), tokenizer) == (0, 0)
    plain_thought = tokenizer.encode("<think> I know this. </think> <answer> x </answer>", add_special_tokens=False)
    two_turns = type(rows[0])(question_id="x", question="x", response_ids=[1, 2] + plain_thought,
                              spans=[(0, 1, "policy"), (1, 2, "env"), (2, 2 + len(plain_thought), "policy")])
    assert answer_thought(two_turns, tokenizer) == (0, 0)
    generic = tokenizer.encode("<think> Doc 1 has what I need. </think> <answer> x </answer>", add_special_tokens=False)
    benign = type(rows[0])(question_id="x", question="x", response_ids=[1, 2] + generic,
                           spans=[(0, 1, "policy"), (1, 2, "env"), (2, 2 + len(generic), "policy")])
    assert answer_thought(benign, tokenizer) == (0, 0)  # no gold answers: a benign request's generic thought
    benign.golden_answers = ["x"]
    start, end = answer_thought(benign, tokenizer)  # with them, any last thought naming a passage counts
    text = decode(tokenizer, benign.response_ids[start:end]).strip()
    assert start == 2 and text == "<think> Doc 1 has what I need. </think>"

    batch = collate(rows, tokenizer.pad_token_id)
    masks = thought_masks(rows, batch, {"first_thought": firsts, "answer_thought": answers})
    only = thought_weights(batch, masks, {"first_thought": 1.0, "answer_thought": 3.0})
    changed = (only != batch.loss_mask).nonzero().tolist()
    assert changed == [[b, len(ep.prompt_ids) - 1 + k] for b, (ep, (s, e)) in enumerate(zip(rows, answers))
                       for k in range(s, e)]
    both = thought_weights(batch, masks, {"first_thought": 2.0, "answer_thought": 3.0})
    assert torch.equal(both, batch.loss_mask * (1 + masks["first_thought"]) * (1 + 2 * masks["answer_thought"]))
    assert not torch.any(masks["first_thought"] * masks["answer_thought"])  # two thoughts, two turns
    model = tiny_llama(tokenizer, 1)
    plain, _ = sft_loss(model, batch)
    weighted, _ = sft_loss(model, batch, only)
    answers_only, _ = sft_loss(model, batch, masks["answer_thought"].float())
    assert torch.allclose(weighted, plain + 2.0 * answers_only, atol=1e-5)
    trainer, _ = _sft(tmp_path, tokenizer, rows, 2, "passage", decision_weight=2.0, passage_weight=3.0)
    logged = trainer.train()
    assert all(r["losses/answer_thought_loss"] > 0 and r["losses/first_thought_loss"] > 0 for r in logged)


@pytest.mark.parametrize("decision_weight", [1.0, 3.0])
def test_sft_forward_batch_size_takes_the_same_step_in_passes(tmp_path, tokenizer, sft_episodes, decision_weight):
    """forward_batch_size splits a step's rows into passes whose gradients accumulate: the same logged loss and the
    same weights after the steps as one pass (float tolerance), with or without a decision weight."""
    rows = sft_episodes[:4]
    one, one_model = _sft(tmp_path, tokenizer, rows, 2, f"one{decision_weight}", batch_size=4,
                          decision_weight=decision_weight)
    split, split_model = _sft(tmp_path, tokenizer, rows, 2, f"split{decision_weight}", batch_size=4,
                              forward_batch_size=1, decision_weight=decision_weight)
    a, b = one.train(), split.train()
    for x, y in zip(a, b):
        assert y["losses/sft_loss"] == pytest.approx(x["losses/sft_loss"], rel=1e-5)
        if decision_weight != 1.0:
            assert y["losses/first_thought_loss"] == pytest.approx(x["losses/first_thought_loss"], rel=1e-5)
    for p, q in zip(one_model.parameters(), split_model.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
