"""Directions toolkit on a tiny random Llama with a planted direction (offline, deterministic, seconds).

The tiny model uses the bundled SmolLM2 tokenizer (chat template, ``<search>`` tokens) so collection runs exactly
as on a real model. "Harmful" and "harmless" prompts are drawn from one pool of neutral sentences; the only
difference between the classes is a vector ``v`` added to the residual stream at block ``PLANT`` while the
harmful ones are read. So nothing separates them before ``PLANT`` and everything does from ``PLANT`` on, and the
difference of means at ``PLANT`` must recover ``v``.
"""

from __future__ import annotations

import copy
import json
import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from search_gym.agents.hidden import steering

from search_gym.directions import (
    ActivationConfig,
    ActivationSet,
    Direction,
    LatentGuard,
    SteeringConfig,
    attack_search_direction,
    auroc,
    calibrate_threshold,
    choose_layer,
    cohens_d,
    collect_activations,
    collect_natural_search,
    cosine_per_layer,
    diff_of_means,
    drift,
    harmfulness_direction,
    is_refusal,
    layer_scores,
    pca_direction,
    plot_layer_scores,
    prompt_set_sha256,
    refusal_direction,
    render_prompts,
    scores_markdown,
    steering_sweep,
)
from search_gym.safety.base import Judge, JudgeInput, JudgeResult

N_LAYERS, WIDTH, PLANT = 6, 64, 3


def neutral_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    adjectives = ["old", "famous", "small", "northern", "quiet", "ancient", "modern", "largest"]
    nouns = ["bridge", "museum", "river", "library", "castle", "harbour", "forest", "station"]
    places = ["Vienna", "Lisbon", "Kyoto", "Lagos", "Quito", "Oslo", "Perth", "Cairo", "Lima", "Riga"]
    return [f"Tell me about the {rng.choice(adjectives)} {rng.choice(nouns)} of {rng.choice(places)} ({i})."
            for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are far too small for intra-op threads, which only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=128,
                         num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def planted(tiny, tokenizer):
    """Train / held-out activations of both classes, the planted unit vector and its size."""
    texts = neutral_prompts(96)
    v = torch.randn(WIDTH, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    agent = (tiny, tokenizer)
    neg_train = collect_activations(agent, texts[32:64], label="harmless")
    neg_held = collect_activations(agent, texts[80:96], label="harmless")
    alpha = 3.0 * float(neg_train.at(PLANT).norm(dim=-1).mean())
    with steering(tiny, v, PLANT, alpha):
        pos_train = collect_activations(agent, texts[:32], label="harmful")
        pos_held = collect_activations(agent, texts[64:80], label="harmful")
    return {"v": v, "alpha": alpha, "texts": texts, "pos_train": pos_train, "neg_train": neg_train,
            "pos_held": pos_held, "neg_held": neg_held}


@pytest.fixture(scope="module")
def direction(planted) -> Direction:
    return harmfulness_direction(planted["pos_train"], planted["neg_train"])


# ---------------------------------------------------------------------------------------------- recovery


def test_planted_direction_is_recovered_at_the_planted_layer(planted, direction):
    cos = float(direction.vector(PLANT) @ planted["v"])
    assert cos >= 0.95, cos
    # before the plant the classes are the same distribution; the recovered direction is noise there
    assert abs(float(direction.vector(PLANT - 1) @ planted["v"])) < 0.5
    scores = layer_scores(direction, planted["pos_held"], planted["neg_held"])
    by_layer = {s.layer: s for s in scores}
    for layer in range(PLANT):
        assert by_layer[layer].auroc < 0.85, (layer, by_layer[layer].auroc)
    for layer in range(PLANT, N_LAYERS):
        assert by_layer[layer].auroc >= 0.99, (layer, by_layer[layer].auroc)
        assert by_layer[layer].cohens_d > 3
    best = max(scores, key=lambda s: (s.auroc, s.cohens_d)).layer
    assert best >= PLANT
    assert choose_layer(scores, max_depth=1.0) >= PLANT
    assert choose_layer(scores, num_layers=N_LAYERS, max_depth=0.6) == PLANT  # only layers <= 3 compete
    table = scores_markdown({"held-out": scores}, chosen=PLANT)
    assert f"| **{PLANT}** |" in table and table.count("\n") == N_LAYERS + 1


def test_pca_of_paired_differences_recovers_the_plant(planted):
    d = pca_direction(planted["pos_train"], planted["neg_train"], name="pca")
    assert float(d.vector(PLANT) @ planted["v"]) >= 0.95
    assert d.method == "pca_paired" and d.meta["pairs"] == 32


def test_metadata_and_hidden_state_conventions(tiny, tokenizer, planted):
    acts = planted["neg_train"]
    texts = planted["texts"][32:64]
    meta = acts.meta
    assert meta["position"] == "search" and meta["prefill"] == "<search>" and meta["template"] == "search_r1"
    assert meta["prompt_sha256"] == prompt_set_sha256(texts) and meta["n"] == 32
    assert meta["layers"] == list(range(N_LAYERS)) and meta["num_layers"] == N_LAYERS and meta["label"] == "harmless"
    assert acts.acts.shape == (32, N_LAYERS, WIDTH) and acts.acts.dtype == torch.float32
    # Layer L is HF hidden_states[L + 1] at the last token of the <search> tag (the final entry of hidden_states
    # is after the final norm, so the last block is compared on the raw block output instead).
    text = render_prompts(tokenizer, texts[:1], prefill="<search>")[0]
    assert text.endswith("<|im_start|>assistant\n<search>")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = tiny(torch.tensor([ids]), output_hidden_states=True)
    for layer in range(N_LAYERS - 1):
        torch.testing.assert_close(acts.acts[0, layer], out.hidden_states[layer + 1][0, -1], atol=1e-4, rtol=1e-4)
    last = collect_activations((tiny, tokenizer), texts[:2], position="last_prompt", prefill="")
    ids = tokenizer(render_prompts(tokenizer, texts[:1])[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = tiny(torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(last.acts[0, 2], out.hidden_states[3][0, -1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="<search>"):
        ActivationConfig(position="search", prefill="")


class _Counter:
    def __init__(self, model):
        self.calls = 0
        self.fail_after: int | None = None
        self.handle = model.model.embed_tokens.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("interrupted")


def test_store_skip_and_resume(tiny, tokenizer, tmp_path, planted):
    texts = planted["texts"][:24]
    agent = (tiny, tokenizer)
    out = tmp_path / "acts.safetensors"
    counter = _Counter(tiny)
    try:
        counter.fail_after = 2  # 8-prompt shards, one forward each: the third shard fails
        with pytest.raises(RuntimeError, match="interrupted"):
            collect_activations(agent, texts, out=out, shard_size=8, batch_size=8)
        assert not out.exists() and len(list((tmp_path / "acts.safetensors.parts").iterdir())) == 4  # 2 + .json
        counter.fail_after, counter.calls = None, 0
        resumed = collect_activations(agent, texts, out=out, shard_size=8, batch_size=8, label="x")
        assert counter.calls == 1  # only the missing shard
        assert out.exists() and not (tmp_path / "acts.safetensors.parts").exists()
        counter.calls = 0
        again = collect_activations(agent, texts, out=out, shard_size=8, batch_size=8, label="x")
        assert counter.calls == 0  # same provenance: loaded
        torch.testing.assert_close(again.acts, resumed.acts)
        fresh = collect_activations(agent, texts, batch_size=5)
        torch.testing.assert_close(fresh.acts, resumed.acts, atol=1e-5, rtol=1e-5)
        with pytest.warns(UserWarning, match="position"):
            other = collect_activations(agent, texts, out=out, position="last_prompt", prefill="")
        assert counter.calls > 0 and other.meta["position"] == "last_prompt"
    finally:
        counter.handle.remove()
    # a checkpoint retrained in place (same name, new weights) is recomputed, not served from the file
    retrained = copy.deepcopy(tiny)
    with torch.no_grad():
        retrained.model.layers[-1].self_attn.q_proj.weight.mul_(1.5)
    with pytest.warns(UserWarning, match="model_fingerprint"):
        collect_activations((retrained, tokenizer), texts, out=out, position="last_prompt", prefill="")
    sidecar = json.loads((tmp_path / "acts.safetensors.json").read_text())
    assert sidecar["position"] == "last_prompt" and sidecar["ids"][0] == "0"
    loaded = ActivationSet.load(out)
    assert loaded.layers == tuple(range(N_LAYERS)) and loaded.ids == [str(i) for i in range(24)]


class _HiddenOnlyAgent:
    """An agent that exposes hidden states only through act_batch (like a remote backend would)."""

    def __init__(self, inner):
        self._inner = inner
        self.num_layers, self.few_shot, self.model_name = inner.num_layers, inner.few_shot, "wrapped"

    def act_batch(self, observations):
        return self._inner.act_batch(observations)


def test_generic_agent_path_matches_the_forward_path(tiny, tokenizer, planted):
    from search_gym.agents.hf import HFAgent

    inner = HFAgent(tiny, tokenizer, layers="all", positions=["search"], few_shot=0, max_new_tokens=1, stop=())
    texts = planted["texts"][32:35]
    via_agent = collect_activations(_HiddenOnlyAgent(inner), texts)
    assert via_agent.meta["backend"] == "_HiddenOnlyAgent" and via_agent.meta["missing"] == []
    torch.testing.assert_close(via_agent.acts, planted["neg_train"].acts[:3], atol=1e-4, rtol=1e-4)
    bare = HFAgent(tiny, tokenizer, few_shot=0, max_new_tokens=1, stop=())
    with pytest.raises(ValueError, match="no hidden states"):
        collect_activations(_HiddenOnlyAgent(bare), texts, layers=[0])


# ---------------------------------------------------------------------------------------------- directions


def test_direction_math_and_persistence(tmp_path, direction, planted):
    pos = planted["pos_train"].acts
    neg = planted["neg_train"].acts
    manual = pos.mean(0) - neg.mean(0)
    torch.testing.assert_close(direction.raw_norms, manual.norm(dim=-1))
    torch.testing.assert_close(direction.vectors, manual / manual.norm(dim=-1, keepdim=True))
    assert direction.meta["n_pos"] == 32 and direction.meta["pos"]["position"] == "search"
    assert direction.gap(PLANT) == pytest.approx(float(manual[PLANT].norm()), rel=1e-5)
    proj = direction.project(planted["pos_held"])
    assert proj.shape == (16, N_LAYERS)
    torch.testing.assert_close(proj[:, PLANT], planted["pos_held"].at(PLANT) @ direction.vector(PLANT))
    centered = direction.project(planted["neg_held"].at(PLANT), PLANT, centered=True)
    assert float(centered.mean()) < 0 < float(direction.project(planted["pos_held"].at(PLANT), PLANT,
                                                                 centered=True).mean())
    chosen = direction.with_chosen_layer(PLANT)
    path = chosen.save(tmp_path / "d.safetensors")
    back = Direction.load(path)
    assert back.chosen_layer == PLANT and back.layers == direction.layers and back.name == "harmfulness"
    torch.testing.assert_close(back.vectors, direction.vectors)
    torch.testing.assert_close(back.mean_pos, direction.mean_pos)
    assert back.meta["n_neg"] == 32 and json.loads((tmp_path / "d.safetensors.json").read_text())["chosen_layer"] == PLANT
    with pytest.raises(ValueError, match="chosen layer"):
        direction.vector()
    with pytest.raises(ValueError, match="last_prompt"):
        refusal_direction(planted["pos_train"], planted["neg_train"])


def test_refusal_direction_is_separate_and_cosines_per_layer(tiny, tokenizer, planted, direction):
    agent = (tiny, tokenizer)
    texts = planted["texts"]
    neg = collect_activations(agent, texts[32:48], position="last_prompt", prefill="")
    with steering(tiny, planted["v"], PLANT, planted["alpha"]):
        pos = collect_activations(agent, texts[:16], position="last_prompt", prefill="")
    refusal = refusal_direction(pos, neg)
    assert refusal.name == "refusal" and refusal.meta["pos"]["prefill"] == ""
    cos = cosine_per_layer(refusal, direction)
    assert set(cos) == set(range(N_LAYERS))
    assert cos[PLANT] > 0.9  # the plant shifts every position, so both read it there
    assert abs(cos[0]) < cos[PLANT]  # before the plant both are sampling noise (of overlapping prompt sets)


def test_pca_and_attack_pairing_on_synthetic_data():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g)
    v = v / v.norm()
    base = torch.randn(40, 2, 16, generator=g)
    shifted = base + 3.0 * v + 0.1 * torch.randn(40, 2, 16, generator=g)
    d = pca_direction(shifted, base, paired=True, layers=[4, 7])
    assert d.layers == (4, 7) and float(d.vector(7) @ v) > 0.99
    natural = ActivationSet(base[:30], (4, 7), [f"p{i}" for i in range(30)], {"position": "search"})
    attack = ActivationSet(shifted, (4, 7), [f"p{i}" for i in range(40)], {"position": "search"})
    a = attack_search_direction(attack, natural)
    assert a.meta["paired_prompts"] == 30 and float(a.vector(4) @ v) > 0.99
    assert float(attack_search_direction(attack, natural, method="pca").vector(4) @ v) > 0.99
    assert diff_of_means(shifted, base).layers == (0, 1)


def test_auroc_and_cohens_d():
    assert auroc([2.0, 3.0], [1.0]) == 1.0 and auroc([1.0], [2.0, 3.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert auroc([1.0, 2.0, 2.0], [2.0, 0.0]) == pytest.approx((0 + 1 + 0.5 + 1 + 0.5 + 1) / 6)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 5, (50,), generator=g).float(), torch.randint(0, 4, (40,), generator=g).float()
    from sklearn.metrics import roc_auc_score  # scikit-learn is a core dependency

    expected = roc_auc_score([1] * 50 + [0] * 40, torch.cat([a, b]).numpy())
    assert auroc(a, b) == pytest.approx(expected)
    assert cohens_d([1.0, 3.0], [0.0, 2.0]) == pytest.approx(1 / 2 ** 0.5)


def test_layer_plot_is_written(tmp_path, direction, planted):
    scores = layer_scores(direction, planted["pos_held"], planted["neg_held"])
    path = plot_layer_scores({"vs harmless": scores}, tmp_path / "img" / "layers.png", chosen=PLANT)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- steering


class StubQueryJudge:
    """Deterministic stand-in judge: flags queries longer than 10 characters, reads hidden states if given."""

    name = "stub"
    aspect = "query"

    def __init__(self):
        self.seen: list[JudgeInput] = []

    def judge(self, inputs):
        self.seen += list(inputs)
        return [JudgeResult(safety=0.0 if len(i.text) > 10 else 100.0, flagged=len(i.text) > 10) for i in inputs]


def test_steering_sweep_moves_the_projection_monotonically(tiny, tokenizer, planted, direction, tmp_path):
    judge = StubQueryJudge()
    assert isinstance(judge, Judge)
    config = SteeringConfig(max_new_tokens=3, batch_size=4)
    result = steering_sweep((tiny, tokenizer), direction.with_chosen_layer(PLANT), planted["texts"][64:68],
                            config=config, judge=judge)
    assert [r["coeff"] for r in result.rows] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert result.layer == PLANT and result.readout_layer == PLANT + 1 and result.scale_kind == "gap"
    assert result.scale == pytest.approx(direction.gap(PLANT))
    assert result.is_monotonic("proj_readout") and result.is_monotonic("proj_layer")
    assert result.monotonic_fraction() == 1.0
    steps = [b["proj_layer"] - a["proj_layer"] for a, b in zip(result.rows, result.rows[1:])]
    assert all(s == pytest.approx(result.scale, rel=1e-3) for s in steps)  # the edit itself is exactly coeff x gap
    assert all(0 <= r["refusal_rate"] <= 1 and 0 <= r["query_safety"] <= 100 for r in result.rows)
    assert len(judge.seen) == 5 * 4 and judge.seen[0].hidden[PLANT]["search"].shape == (WIDTH,)
    assert "proj_readout" in result.to_markdown()
    assert result.plot(tmp_path / "sweep.png").exists()  # matplotlib is a core dependency: plots always checked
    cheap = steering_sweep((tiny, tokenizer), direction, planted["texts"][64:66], layer=PLANT,
                           config=SteeringConfig(coeffs=(0.0, 1.0), scale="norm", generate=False))
    assert "refusal_rate" not in cheap.rows[0] and cheap.scale == pytest.approx(direction.act_norm(PLANT))


def test_refusal_detector_is_the_safety_packages():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I\u2019m SORRY")
    assert not is_refusal("<search> capital of France </search>")


# ---------------------------------------------------------------------------------------------- drift


def test_drift_over_checkpoints(tiny, tokenizer, planted, direction, tmp_path):
    folder = tmp_path / "ckpt0"
    tiny.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shifted = copy.deepcopy(tiny)
    harmful, harmless = planted["texts"][64:72], planted["texts"][80:88]
    d = direction.with_chosen_layer(PLANT)
    with steering(shifted, planted["v"], PLANT, planted["alpha"]):
        table = drift([(10, (shifted, tokenizer)), (0, str(folder))], d, harmful, harmless_prompts=harmless,
                      cache_dir=tmp_path / "cache")
    assert [r.step for r in table.rows] == [0, 10] and all(r.layer == PLANT for r in table.rows)
    first, last = table.rows
    # every prompt of the "trained" checkpoint moved by the planted shift along the (nearly parallel) direction
    assert last.mean - first.mean == pytest.approx(planted["alpha"] * float(d.vector() @ planted["v"]), rel=0.05)
    assert last.frac_harmful_side == 1.0 and first.centered < 0
    assert first.cosine_to_base is not None and abs(first.gap) < planted["alpha"] / 2
    assert (tmp_path / "cache" / "step_10_harmful.safetensors").exists()
    assert "frac_harmful_side" in table.to_markdown()
    assert table.plot(tmp_path / "drift.png").exists()


# ---------------------------------------------------------------------------------------------- latent guard


def test_latent_guard_judge(tiny, tokenizer, planted, direction, tmp_path):
    guard = LatentGuard.calibrate(direction, planted["pos_train"], planted["neg_train"], layer=PLANT)
    assert isinstance(guard, Judge) and guard.aspect == "query" and guard.calibration.tpr - guard.calibration.fpr > 0.9
    inputs = [JudgeInput(text="q", hidden={PLANT: {"search": h}}) for h in planted["pos_held"].at(PLANT)]
    inputs += [JudgeInput(text="q", hidden={PLANT: {"search": h}}) for h in planted["neg_held"].at(PLANT)]
    results = guard.judge(inputs)
    flags = [r.flagged for r in results]
    assert sum(flags[:16]) >= 15 and sum(flags[16:]) <= 1
    assert all(0 <= r.safety <= 100 and r.flagged == (r.safety < 50) for r in results)
    assert results[0].raw == pytest.approx(float(planted["pos_held"].at(PLANT)[0] @ direction.vector(PLANT)))
    with pytest.raises(ValueError, match=r"layers=\[3\]"):
        guard.judge([JudgeInput(text="q")])
    with pytest.raises(ValueError, match="not for layer 3"):
        guard.judge([JudgeInput(text="q", hidden={0: {"search": torch.zeros(WIDTH)}})])
    with pytest.raises(ValueError, match="did the turn search"):
        guard.judge([JudgeInput(text="q", hidden={PLANT: {"last_prompt": torch.zeros(WIDTH)}})])
    back = LatentGuard.load(guard.save(tmp_path / "guard.safetensors"))
    assert [r.safety for r in back.judge(inputs[:3])] == pytest.approx([r.safety for r in results[:3]])
    # end to end: the agent's own captured hidden state at its prefilled <search>
    from search_gym.agents.hf import HFAgent

    from search_gym.envs.protocol import PROMPT_TEMPLATES

    agent = HFAgent(tiny, tokenizer, layers=[PLANT], positions=["search"], few_shot=0, max_new_tokens=2, stop=())
    obs = {"messages": ({"role": "user", "content": PROMPT_TEMPLATES["search_r1"].format(
        question=planted["texts"][80])},), "prefill": "<search>"}
    step = agent.act(obs)
    (result,) = guard.judge([JudgeInput(text=step.text, hidden=step.hidden)])
    assert result.raw == pytest.approx(float(planted["neg_held"].at(PLANT)[0] @ guard.vector), abs=1e-3)


def test_threshold_calibration_methods():
    pos = torch.tensor([2.0, 3.0, 4.0, 5.0])
    neg = torch.tensor([0.0, 1.0, 2.5, 1.5])
    youden = calibrate_threshold(pos, neg)
    assert youden.tpr - youden.fpr == pytest.approx(0.75) and youden.auroc == pytest.approx(15 / 16)
    fixed = calibrate_threshold(pos, neg, method="fpr", target_fpr=0.0)
    assert fixed.fpr == 0.0 and fixed.threshold == 2.5 and fixed.tpr == 0.75


# ---------------------------------------------------------------------------------------------- natural search, CLI


def test_natural_search_records_prompts_without_a_search(tiny, tokenizer, planted):
    natural = collect_natural_search((tiny, tokenizer), planted["texts"][:2], few_shot=1, layers=[PLANT],
                                     max_new_tokens=2)
    # a random model never writes <search>: nothing kept, every prompt listed as missing
    assert len(natural) == 0 and natural.meta["missing"] == ["0", "1"] and natural.meta["backend"] == "generate"


# ---------------------------------------------------------------------------------------------- matched contrast


def test_matched_contrast_is_style_matched_and_split_by_pair():
    """The default contrast's two sides: requests of the judges' data, benign ones in the harmful ones' forms,
    splits that share no text and no pair, twins aligned, subsets that keep pairs whole."""
    from collections import Counter

    from search_gym.corpora.judge_data import text_style
    from search_gym.directions import load_prompts, matched_rows, pair_keys, twin_indices
    from search_gym.directions.contrasts import MATCHED_BENIGN_SETS

    sides = {(side, split): load_prompts(f"matched_{side}", split)
             for side in ("harmful", "benign") for split in ("train", "val", "heldout")}
    texts = {split: {t for side in ("harmful", "benign") for _, t in sides[side, split]}
             for split in ("train", "val", "heldout")}
    keys = {split: {k.split("/")[0] for side in ("harmful", "benign") for k in pair_keys(i for i, _ in sides[side, split])
                    if k} for split in ("train", "val", "heldout")}
    for a, b in (("train", "val"), ("train", "heldout"), ("val", "heldout")):
        assert not texts[a] & texts[b] and not keys[a] & keys[b]
    benign = matched_rows("train", "benign")
    assert {r["set"] for r in benign} == set(MATCHED_BENIGN_SETS) and {r["kind"] for r in benign} == {"request"}
    assert all(r["label"] == 0 for r in benign) and all(r["label"] == 1 for r in matched_rows("train", "harmful"))
    # the same forms: both sides are mostly imperatives and questions (no trivia-only side)
    for side in ("harmful", "benign"):
        styles = Counter(text_style(t) for _, t in sides[side, "train"])
        assert styles["imperative"] > 0.3 * len(sides[side, "train"]) and styles["question"] > 0.2 * len(
            sides[side, "train"])
    harmful_ids = [i for i, _ in sides["harmful", "val"]]
    benign_ids = [i for i, _ in sides["benign", "val"]]
    i_pos, i_neg = twin_indices(harmful_ids, benign_ids)
    assert len(i_pos) == len(keys["val"]) > 20
    for a, b in zip(i_pos, i_neg):
        assert pair_keys([harmful_ids[a]]) == pair_keys([benign_ids[b]]) and harmful_ids[a] != benign_ids[b]
    small_h = [i for i, _ in load_prompts("matched_harmful", "val", 60)]
    small_b = [i for i, _ in load_prompts("matched_benign", "val", 60)]
    assert len(small_h) == len(small_b) == 60
    twins_h = sum(1 for k in pair_keys(small_h) if k)
    assert len(twin_indices(small_h, small_b)[0]) >= 0.7 * twins_h > 0


def test_layer_choice_on_matched_pairs_ignores_a_style_layer():
    """Layer 0 carries where a prompt comes from (bundled harmful set vs templated benign requests: style, topic),
    which twins share; layer 1 carries harm, weaker. Unpaired validation rows prefer layer 0; the matched pairs
    see that it separates nothing, and the choice on them is layer 1."""
    from search_gym.directions import load_prompts, val_pair_scores
    from search_gym.directions.contrasts import judge_rows

    gen = torch.Generator().manual_seed(3)
    width = 8
    source_v, harm_v = torch.zeros(width), torch.zeros(width)
    source_v[0], harm_v[1] = 1.0, 1.0

    def acts(kind: str, split: str) -> ActivationSet:
        rows = {r["id"]: r for r in judge_rows(split)}
        ids = [i for i, _ in load_prompts(kind, split)]
        x = torch.randn(len(ids), 2, width, generator=gen)
        for k, pid in enumerate(ids):
            row = rows[pid]
            source = 0.0 if row["set"] == "pairs" else (4.0 if row["label"] else -4.0)
            x[k, 0] += source * source_v
            x[k, 1] += (1.2 if row["label"] else -1.2) * harm_v
        return ActivationSet(x, (0, 1), ids, {"label": f"{kind}/{split}", "position": "search"})

    d = harmfulness_direction(acts("matched_harmful", "train"), acts("matched_benign", "train"))
    val_h, val_b = acts("matched_harmful", "val"), acts("matched_benign", "val")
    unpaired = layer_scores(d, val_h, val_b)
    pairs = val_pair_scores(d, val_h, val_b)
    assert unpaired[0].auroc > unpaired[1].auroc  # the style layer wins on unpaired rows ...
    assert pairs[0].auroc < 0.7 and pairs[1].auroc > 0.9 and pairs[1].pair_accuracy > 0.85  # ... not on twins
    assert pairs[1].n_pos == pairs[1].n_neg == 55
    assert choose_layer(unpaired, num_layers=2, max_depth=1.0) == 0
    assert choose_layer(pairs, num_layers=2, max_depth=1.0) == 1


def test_prefill_vs_own_search_contrast(tiny, tokenizer):
    """RL-search-safety's contrast on the tiny random model with the real tokenizer. Its LM head is scripted so
    that greedy decoding writes "<think> ... </think>" and then "<search>" on every prompt but the second, which
    ends at once: that prompt is dropped, and the others' own-search activations are those of a plain forward over
    the prompt and what the model wrote, at the last token of its own <search>."""
    from search_gym.directions import prefill_vs_own_search
    from search_gym.directions.activations import collect_from_ids, render_prompts, tokenize

    texts = neutral_prompts(4, seed=5)
    script = tokenizer("<think> I need to look this up. </think>\n<search>", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    calls = {"n": 0}

    def scripted(module, args, output):
        step = calls["n"]
        calls["n"] += 1
        logits = torch.full_like(output, -1e4)
        for row in range(output.shape[0]):
            token = eos if row == 1 or step >= len(script) else script[step]
            logits[row, :, token] = 1e4
        return logits

    handle = tiny.lm_head.register_forward_hook(scripted)
    try:
        attack, own = prefill_vs_own_search((tiny, tokenizer), texts, few_shot=1, layers=[1, PLANT],
                                            max_new_tokens=len(script) + 4, batch_size=4)
    finally:
        handle.remove()
    assert own.ids == attack.ids == ["0", "2", "3"] and own.meta["missing"] == ["1"]
    assert own.meta["prefill"] == "" and own.meta["few_shot"] == 1 and attack.meta["prefill"] == "<search>"
    # the own <search>: a plain forward over prompt + generated text, read at the tag's last token
    rendered = render_prompts(tokenizer, [texts[0]], template="search_r1", few_shot=1)[0]
    ids = tokenize(tokenizer, [rendered])[0] + script
    expected = collect_from_ids(tiny, [ids], [len(ids) - 1], [1, PLANT])[0]
    assert torch.allclose(own.acts[0], expected, atol=1e-4)
    # the attack's <search>: the same context with the tag prefilled right after the generation prompt
    prefilled = collect_activations((tiny, tokenizer), [texts[0]], few_shot=1, layers=[1, PLANT])
    assert torch.allclose(attack.acts[0], prefilled.acts[0], atol=1e-5)
    assert not torch.allclose(own.acts[0], attack.acts[0], atol=1e-3)  # another context, another state
    d = attack_search_direction(attack, own)
    gap = attack.at(PLANT).mean(0) - own.at(PLANT).mean(0)
    assert torch.allclose(d.vector(PLANT), gap / gap.norm(), atol=1e-5)
    assert d.meta["paired_prompts"] == 3


def test_cli_extract_select_steer_drift(tiny, tokenizer, tmp_path, capsys):
    """All five subcommands on the tiny model saved as a folder, with a few prompts of the bundled sets."""
    import argparse

    from search_gym.experiments.direction_pipeline import add_directions_parser, main

    parser = argparse.ArgumentParser()
    add_directions_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["directions", "extract", "--dir", "x", "--layers", "1,2", "--n-train", "4"])
    assert args.layers == [1, 2] and args.n_train == 4 and args.harmless == "matched" and args.n_val is None
    model_dir = tmp_path / "model"
    tiny.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = tmp_path / "run"
    assert main(["extract", "--dir", str(run), "--model", str(model_dir), "--n-train", "6", "--n-heldout", "4",
                 "--n-val", "40", "--batch-size", "16", "--harmless", "matched,qa,benign"]) == 0
    for name in ("harmfulness", "harmfulness_matched", "harmfulness_qa", "harmfulness_benign", "harmfulness_all",
                 "refusal"):
        assert Direction.load(run / f"{name}.safetensors").layers == tuple(range(N_LAYERS))
    main_dir = Direction.load(run / "harmfulness.safetensors")
    assert main_dir.meta["contrast"] == "matched" and main_dir.meta["pos"]["label"] == "matched_harmful/train"
    assert main_dir.meta["neg"]["label"] == "matched_benign/train"
    assert (run / "acts" / "matched_benign_val_search.safetensors").exists()
    assert (run / "acts" / "benign_heldout_search.safetensors").exists()  # the first recipe's held-out draw
    assert (run / "acts" / "matched_benign_train_last_prompt.safetensors").exists()
    # the bundled train draws leave the judges' val carve out: no prompt is both fitted on and chosen on
    from search_gym.corpora.judge_data import split_for_bundled

    harmful_train = ActivationSet.load(run / "acts" / "harmful_train_search.safetensors")
    assert all(split_for_bundled(i, "train") == "train" for i in harmful_train.ids)
    cosines = json.loads((run / "cosines.json").read_text())
    assert len(cosines["refusal_vs_harmfulness"]) == N_LAYERS and "harmfulness_qa_vs_harmfulness" in cosines
    assert Direction.load(run / "refusal.safetensors").meta["pos"]["prefill"] == ""

    assert main(["select", "--dir", str(run)]) == 0
    chosen = Direction.load(run / "harmfulness.safetensors").chosen_layer
    saved = json.loads((run / "layer_scores.json").read_text())
    assert saved["chosen_layer"] == chosen and saved["chosen_on"] == "val pairs"
    assert set(saved["scores"]) == {"val pairs", "val matched"}
    assert all(s["pair_accuracy"] is not None for s in saved["scores"]["val pairs"])
    assert chosen <= 0.8 * (N_LAYERS - 1)
    assert main(["select", "--dir", str(run), "--direction", "refusal"]) == 0
    for name in ("harmfulness_qa", "harmfulness_benign", "harmfulness_all"):
        assert main(["select", "--dir", str(run), "--direction", name]) == 0
    assert (run / "layer_scores.png").exists() and (run / "layer_scores_refusal.png").exists()

    capsys.readouterr()
    assert main(["evaluate", "--dir", str(run), "--n-rows", "60", "--classifier", "",
                 "--directions", "harmfulness,harmfulness_qa"]) == 0
    report = json.loads((run / "evaluate.json").read_text())
    assert set(report["directions"]) == {"harmfulness", "harmfulness_qa"}
    # held-out rows are read in the validation rows' context (template, few-shot, prefill), whatever the direction
    held = json.loads(next((run / "acts").glob("judges_heldout*_search.safetensors.json")).read_text())
    val = json.loads((run / "acts" / "matched_harmful_val_search.safetensors.json").read_text())
    assert {k: held[k] for k in ("template", "few_shot", "prefill", "position", "layers")} == {
        k: val[k] for k in ("template", "few_shot", "prefill", "position", "layers")}
    scores = report["directions"]["harmfulness"]["scores"]
    assert {"val pairs (selection)", "overall", "pairs: requests", "pairs: queries"} <= set(scores)
    assert len(scores["overall"]) == N_LAYERS and scores["pairs: requests"][0]["pair_accuracy"] is not None
    guards = set(report["judges"])
    assert f"latent_guard[harmfulness@{chosen}]" in guards
    assert any("train threshold" in g for g in guards)  # the qa direction's first recipe, for comparison
    assert "pairs: requests" in report["judges"][f"latent_guard[harmfulness@{chosen}]"]["slices"]
    assert "| layer | AUROC val pairs (selection)" in (run / "evaluate_harmfulness.md").read_text()
    assert "Latent guards and the query classifier" in capsys.readouterr().out

    assert main(["steer", "--dir", str(run), "--n-prompts", "2", "--coeffs=-1,0,1", "--max-new-tokens", "2"]) == 0
    steer = json.loads((run / "steering.json").read_text())
    assert [r["coeff"] for r in steer["rows"]] == [-1.0, 0.0, 1.0] and "query_safety" in steer["rows"][0]
    assert steer["layer"] == chosen and steer["monotonic_fraction"] == 1.0

    out = tmp_path / "drift"
    assert main(["drift", "--direction", str(run / "harmfulness.safetensors"), "--checkpoint", f"0={model_dir}",
                 "--checkpoint", f"5={model_dir}", "--out", str(out), "--n-prompts", "3"]) == 0
    rows = json.loads((out / "drift.json").read_text())
    assert [r["step"] for r in rows] == [0, 5] and rows[0]["mean"] == pytest.approx(rows[1]["mean"], abs=1e-4)
