"""Parity of our GRPO objective with TRL's ``GRPOTrainer`` (trl 1.16) on one fixed batch.

A tiny random Llama (SmolLM2's tokenizer and vocabulary, hidden 32, 2 layers) is saved to a temporary folder; TRL's
trainer is built from that path (it builds its reference model from it) and never trained. One hand-made batch, in
TRL's layout (prompts left-padded, completions right-padded, a ``tool_mask`` that zeroes environment tokens inside
the completion, perturbed old/reference log-probabilities so ratios differ from 1 and some clip), goes to
``GRPOTrainer.compute_loss``; our side scores the same weights with :func:`token_logprobs` and aggregates with
:func:`grpo_loss`. Losses and parameter gradients must agree to 1e-5.

Normaliser: ``_compute_loss`` divides grpo/bnpo/dr_grpo by ``current_gradient_accumulation_steps`` in train mode
and dapo by ``num_items_in_batch * current_gradient_accumulation_steps / steps_per_generation`` (trl
grpo_trainer.py, lines 3153-3174). The HF training loop sets ``current_gradient_accumulation_steps`` (it does not
exist before ``train()``); the tests set it to 1, which is what the loop sets with ``gradient_accumulation_steps=1``,
and ``steps_per_generation`` defaults to ``gradient_accumulation_steps`` = 1, so every normaliser is exactly 1 (dapo:
``num_items_in_batch``). Eval mode (no accumulation at all) is checked to give the same loss.

KL: trl 1.16 defaults ``use_bias_correction_kl=True`` (the k3 KL multiplied by the importance ratio, grpo_trainer.py
lines 3103-3105), as does our ``grpo_loss(bias_correction_kl=True)`` / ``GRPOConfig.use_bias_correction_kl``. The
grid below runs both sides with it off; ``test_trl_default_bias_corrected_kl`` checks both defaults agree.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func (advantage test) is marked experimental

# trl (pinned) is in the test extra and datasets a core dependency: imported normally, never skipped
import datasets  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from search_gym.trainers.core import collate, token_logprobs  # noqa: E402
from search_gym.trainers.grpo import group_advantages, grpo_loss  # noqa: E402

TOL = 1e-5
G = 2  # num_generations
MAX_COMPLETION_LENGTH = 8  # wider than the batch's completions (6), so dr_grpo's constant is not the padded width
EPSILON, EPSILON_HIGH = 0.2, 0.28

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
# TRL accepts sequence-level importance sampling with every one of these (bnpo/dr_grpo/dapo only log a warning,
# grpo_trainer.py line 928), so all combinations are valid.
IS_LEVELS = ["token", "sequence"]


# ---------------------------------------------------------------------------------------------- fixtures




@pytest.fixture(scope="module")
def tiny_model_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    # Random init is small (std 0.02); scale the output head up so the distributions are far from uniform and
    # temperature actually changes the log-probabilities.
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def our_model(tiny_model_dir):
    """Our own copy of the weights, loaded independently of TRL (no fused-head patch)."""
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def make_trainer(model_dir, tokenizer, output_dir, *, batch_size, rollout_func=None, reward_func=None, **overrides):
    kwargs = dict(
        output_dir=str(output_dir), report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=batch_size, num_generations=G, gradient_accumulation_steps=1,
        max_completion_length=MAX_COMPLETION_LENGTH, beta=0.0, epsilon=EPSILON, epsilon_high=EPSILON_HIGH,
        loss_type="grpo", temperature=1.0, importance_sampling_level="token", scale_rewards="group",
        use_bias_correction_kl=False, logging_steps=1, seed=0,
    )
    kwargs.update(overrides)
    args = GRPOConfig(**kwargs)
    prompts = [f"question {i}" for i in range(batch_size // args.num_generations)]
    reward_func = reward_func or (lambda completions, **kw: [0.0] * len(completions))
    return GRPOTrainer(model=str(model_dir), reward_funcs=reward_func, args=args,
                       train_dataset=datasets.Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                       rollout_func=rollout_func)


# ---------------------------------------------------------------------------------------------- the fixed batch

PROMPT_LENS = [5, 5, 3, 3]  # rows 0-1 and 2-3 are the two generations of one prompt each
COMPLETION_LENS = [6, 4, 5, 2]
ENV_TOKENS = {0: [2, 3], 2: [1]}  # completion positions that the environment wrote (tool_mask 0)
ADVANTAGES = [1.3, -0.8, 0.6, -1.1]


@pytest.fixture(scope="module")
def batch(tokenizer, our_model):
    """TRL's per-step inputs as ``_generate_and_score_completions`` returns them, hand-made and deterministic."""
    gen = torch.Generator().manual_seed(1234)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    B, P, C = len(PROMPT_LENS), max(PROMPT_LENS), max(COMPLETION_LENS)

    prompts = {}
    prompt_ids = torch.full((B, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    completion_ids = torch.full((B, C), pad, dtype=torch.long)
    completion_mask = torch.zeros((B, C), dtype=torch.long)
    tool_mask = torch.ones((B, C), dtype=torch.long)  # TRL pads tool_mask with 1 (line 2482)
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS)):
        ids = prompts.setdefault(b // G, torch.randint(10, vocab, (p,), generator=gen))
        prompt_ids[b, P - p:] = ids  # left-padded
        prompt_mask[b, P - p:] = 1
        comp = torch.randint(10, vocab, (c,), generator=gen)
        if b % 2 == 0:
            comp[-1] = eos  # some completions terminated, some truncated
        completion_ids[b, :c] = comp  # right-padded
        completion_mask[b, :c] = 1
        for t in ENV_TOKENS.get(b, []):
            tool_mask[b, t] = 0
    loss_mask = completion_mask * tool_mask

    with torch.no_grad():
        current = {}
        for temperature in (1.0, 0.7):
            lp, _, _ = token_logprobs(our_model, torch.cat([prompt_ids, completion_ids], 1),
                                      torch.cat([prompt_mask, completion_mask], 1), temperature=temperature)
            current[temperature] = lp[:, -C:]
    # Perturbations of the current log-probs: |log ratio| up to 0.5 puts many ratios outside [0.8, 1.28].
    old_shift = (torch.rand((B, C), generator=gen) - 0.5)
    ref_shift = 0.6 * (torch.rand((B, C), generator=gen) - 0.5)
    return SimpleNamespace(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, tool_mask=tool_mask, loss_mask=loss_mask,
        advantages=torch.tensor(ADVANTAGES), current=current, old_shift=old_shift, ref_shift=ref_shift,
        num_items_in_batch=loss_mask.sum(),  # as TRL computes it (line 2498), one process
    )


def trl_inputs(batch, temperature, *, beta, on_policy=False):
    inputs = {
        "prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
        "completion_ids": batch.completion_ids, "completion_mask": batch.completion_mask,
        "tool_mask": batch.tool_mask, "advantages": batch.advantages.clone(),
        "num_items_in_batch": batch.num_items_in_batch.clone(),
    }
    if not on_policy:
        inputs["old_per_token_logps"] = batch.current[temperature] + batch.old_shift
    if beta:
        inputs["ref_per_token_logps"] = batch.current[temperature] + batch.ref_shift
    return inputs


def ours_loss(model, batch, inputs, *, loss_type, beta, temperature, level, bias_correction_kl=False):
    C = batch.completion_ids.size(1)
    logps, _, _ = token_logprobs(model, torch.cat([batch.prompt_ids, batch.completion_ids], 1),
                                 torch.cat([batch.prompt_mask, batch.completion_mask], 1), temperature=temperature)
    logps = logps[:, -C:]  # position t scores token t + 1: the last C positions score the C completion tokens
    loss, _ = grpo_loss(
        logps, inputs.get("old_per_token_logps"), inputs.get("ref_per_token_logps"), batch.advantages,
        batch.completion_mask * batch.tool_mask, epsilon_low=EPSILON, epsilon_high=EPSILON_HIGH, beta=beta,
        loss_type=loss_type, importance_sampling_level=level, max_completion_length=MAX_COMPLETION_LENGTH,
        num_items=batch.num_items_in_batch if loss_type == "dapo" else None, bias_correction_kl=bias_correction_kl,
    )
    return loss


def trl_loss(trainer, inputs, *, train=True):
    if train:
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets with gradient_accumulation_steps=1
    else:
        trainer.model.eval()
    return trainer.compute_loss(trainer.model, inputs)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_grad_diff(a, b):
    """Largest gradient difference, relative to each tensor's largest entry where that exceeds 1 (float32 rounding
    of log-probabilities near -12 is ~1e-6 absolute, and the embedding gradients reach ~10)."""
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) / max(1.0, float(a[k].abs().max())) for k in a)


# ---------------------------------------------------------------------------------------------- loss parity


@pytest.mark.parametrize("level", IS_LEVELS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradients_match_trl(tiny_model_dir, tokenizer, our_model, batch, tmp_path, loss_type, beta,
                                      temperature, level):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, batch_size=len(PROMPT_LENS), loss_type=loss_type,
                           beta=beta, temperature=temperature, importance_sampling_level=level)
    assert (trainer.ref_model is not None) == (beta != 0.0)
    inputs = trl_inputs(batch, temperature, beta=beta)

    # The batch is genuinely off-policy: some ratios are clipped on both sides of the trust region.
    log_ratio = batch.current[temperature] - inputs["old_per_token_logps"]
    mask = batch.loss_mask.bool()
    ratio = log_ratio.exp()[mask]
    assert (ratio < 1 - EPSILON).any() and (ratio > 1 + EPSILON_HIGH).any()

    trainer.model.zero_grad(set_to_none=True)
    theirs = trl_loss(trainer, inputs)
    theirs.backward()
    our_model.zero_grad(set_to_none=True)
    ours = ours_loss(our_model, batch, inputs, loss_type=loss_type, beta=beta, temperature=temperature, level=level)
    ours.backward()

    diff = abs(ours.item() - theirs.item())
    assert diff < TOL, f"loss: ours {ours.item():.8f} vs trl {theirs.item():.8f}"
    assert max_grad_diff(grads(our_model), grads(trainer.model)) < TOL

    # Eval mode has no accumulation normaliser at all; with one accumulation step it is the same number.
    with torch.no_grad():
        assert abs(trl_loss(trainer, inputs, train=False).item() - ours.item()) < TOL


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_batch_matches_trl(tiny_model_dir, tokenizer, our_model, batch, tmp_path, loss_type):
    """No ``old_per_token_logps`` (one iteration, aligned steps): both sides use ``logps.detach()``, ratio 1."""
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, batch_size=len(PROMPT_LENS), loss_type=loss_type,
                           beta=0.04, temperature=0.7)
    inputs = trl_inputs(batch, 0.7, beta=0.04, on_policy=True)
    trainer.model.zero_grad(set_to_none=True)
    theirs = trl_loss(trainer, inputs)
    theirs.backward()
    our_model.zero_grad(set_to_none=True)
    ours = ours_loss(our_model, batch, inputs, loss_type=loss_type, beta=0.04, temperature=0.7, level="token")
    ours.backward()
    assert abs(ours.item() - theirs.item()) < TOL
    assert max_grad_diff(grads(our_model), grads(trainer.model)) < TOL


def test_tool_mask_matters(tiny_model_dir, tokenizer, our_model, batch, tmp_path):
    """The environment tokens change TRL's loss, so the agreement above really covers the multi-turn mask."""
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, batch_size=len(PROMPT_LENS), loss_type="grpo",
                           beta=0.04)
    inputs = trl_inputs(batch, 1.0, beta=0.04)
    with torch.no_grad():
        masked = float(trl_loss(trainer, inputs))
        unmasked = float(trl_loss(trainer, {k: v for k, v in inputs.items() if k != "tool_mask"}))
    assert abs(masked - unmasked) > 1e-3


def test_our_collated_layout_matches_trl(tiny_model_dir, tokenizer, our_model, batch, tmp_path):
    """End to end through our own batching: right-padded ``prompt + response`` rows from :func:`collate`, the loss
    mask and sampler log-probs it places, against TRL's left-padded prompts (RoPE is relative, so the shifted
    positions of left padding change the log-probabilities only by rounding)."""
    temperature, beta = 0.7, 0.04
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, batch_size=len(PROMPT_LENS), loss_type="bnpo",
                           beta=beta, temperature=temperature, importance_sampling_level="sequence")
    inputs = trl_inputs(batch, temperature, beta=beta)
    P = batch.prompt_ids.size(1)
    episodes = []
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS)):
        episodes.append(SimpleNamespace(
            prompt_ids=batch.prompt_ids[b, P - p:].tolist(), response_ids=batch.completion_ids[b, :c].tolist(),
            loss_mask=batch.tool_mask[b, :c].tolist(), logprobs=inputs["old_per_token_logps"][b, :c].tolist()))
    tb = collate(episodes, tokenizer.pad_token_id)
    ref = torch.zeros_like(tb.loss_mask)
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS)):
        ref[b, p - 1: p - 1 + c] = inputs["ref_per_token_logps"][b, :c]

    our_model.zero_grad(set_to_none=True)
    logps, _, _ = token_logprobs(our_model, tb.input_ids, tb.attention_mask, temperature=temperature)
    ours, _ = grpo_loss(logps, tb.sampler_logprobs, ref, batch.advantages, tb.loss_mask, epsilon_low=EPSILON,
                        epsilon_high=EPSILON_HIGH, beta=beta, loss_type="bnpo", importance_sampling_level="sequence",
                        bias_correction_kl=False)
    ours.backward()
    trainer.model.zero_grad(set_to_none=True)
    theirs = trl_loss(trainer, inputs)
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < TOL
    assert max_grad_diff(grads(our_model), grads(trainer.model)) < TOL


def test_trl_default_bias_corrected_kl(tiny_model_dir, tokenizer, our_model, batch, tmp_path):
    beta = 0.5  # large enough that the KL term's weighting is visible far above rounding
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, batch_size=len(PROMPT_LENS), loss_type="grpo",
                           beta=beta, use_bias_correction_kl=GRPOConfig.use_bias_correction_kl)
    assert trainer.args.use_bias_correction_kl is True  # TRL's default
    from search_gym.trainers.grpo_config import GRPOConfig as OurGRPOConfig

    assert OurGRPOConfig.use_bias_correction_kl is True  # ours
    inputs = trl_inputs(batch, 1.0, beta=beta)
    with torch.no_grad():
        theirs = trl_loss(trainer, inputs).item()
        ours = ours_loss(our_model, batch, inputs, loss_type="grpo", beta=beta, temperature=1.0, level="token",
                         bias_correction_kl=True).item()
        off = ours_loss(our_model, batch, inputs, loss_type="grpo", beta=beta, temperature=1.0, level="token").item()
    assert abs(ours - theirs) < TOL
    assert abs(off - theirs) > 10 * TOL  # the weighting is visible: the test can fail


# ---------------------------------------------------------------------------------------------- advantages

REWARDS = [1.0, 0.0, 0.5, 0.25,  # a spread group
           0.7, 0.7, 0.7, 0.7,  # a group with zero std: only the 1e-4 keeps it finite (advantage 0)
           2.0, -1.0, 2.0, -1.0]  # two values
ADV_G = 4


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(tiny_model_dir, tokenizer, tmp_path, scale):
    """TRL's own advantage code (``_generate_and_score_completions``, lines 2760-2790, 'sum_then_normalize'), fed a
    fixed reward vector through a ``rollout_func`` that returns fixed tokens instead of generating."""
    n = len(REWARDS)

    def rollout_func(prompts, trainer):
        return {"prompt_ids": [[11, 12, 13]] * len(prompts),
                "completion_ids": [[20 + i, tokenizer.eos_token_id] for i in range(len(prompts))],
                "logprobs": [[-1.0, -1.0]] * len(prompts)}

    def fixed_reward(completions, **kwargs):
        assert len(completions) == n
        return list(REWARDS)

    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, batch_size=n, num_generations=ADV_G,
                           scale_rewards=scale, rollout_func=rollout_func, reward_func=fixed_reward)
    trainer.model.train()
    inputs = [{"prompt": f"question {i // ADV_G}"} for i in range(n)]
    theirs = trainer._generate_and_score_completions(inputs)["advantages"]
    ours = group_advantages(torch.tensor(REWARDS), ADV_G, scale)
    assert theirs.shape == ours.shape == (n,)
    assert float((ours - theirs).abs().max()) < TOL
    assert torch.all(ours[4:8] == 0)


# ---------------------------------------------------------------------------------------------- collate


def test_collate_places_loss_mask_on_response_positions():
    pad = 0
    episodes = [
        SimpleNamespace(prompt_ids=[5, 6, 7], response_ids=[8, 9, 10, 11], loss_mask=[1, 0, 0, 1],
                        logprobs=[-0.1, float("nan"), -0.3, -0.4]),
        SimpleNamespace(prompt_ids=[21, 22], response_ids=[23, 24], loss_mask=[1, 1], logprobs=[-1.0, -2.0]),
    ]
    tb = collate(episodes, pad)
    assert tb.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11], [21, 22, 23, 24, pad, pad, pad]]
    assert tb.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert tb.loss_mask.shape == tb.sampler_logprobs.shape == (2, 6)
    # Position t scores input_ids[:, t + 1]: the first response token is scored at len(prompt) - 1.
    assert tb.loss_mask.tolist() == [[0, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]]
    targets = tb.input_ids[:, 1:]
    for b, e in enumerate(episodes):
        start = len(e.prompt_ids) - 1
        assert targets[b, start: start + len(e.response_ids)].tolist() == e.response_ids
        for i, weight in enumerate(e.loss_mask):
            assert tb.loss_mask[b, start + i] == weight
    # Sampler log-probs sit at the same positions, only on policy tokens (env tokens and NaNs become 0).
    expected = torch.tensor([[0, 0, -0.1, 0, 0, -0.4], [0, -1.0, -2.0, 0, 0, 0]])
    assert torch.allclose(tb.sampler_logprobs, expected)
    assert not torch.isnan(tb.sampler_logprobs).any()


def test_collate_mask_selects_what_token_logprobs_scores(our_model):
    """The collated mask picks exactly the response tokens' log-probabilities out of :func:`token_logprobs`, the same
    numbers as scoring each row alone and reading the response positions."""
    episodes = [
        SimpleNamespace(prompt_ids=[101, 102, 103, 104], response_ids=[105, 106, 107], loss_mask=[1, 0, 1],
                        logprobs=[0.0] * 3),
        SimpleNamespace(prompt_ids=[201, 202], response_ids=[203], loss_mask=[1], logprobs=[0.0]),
    ]
    tb = collate(episodes, 0)
    with torch.no_grad():
        logps, _, _ = token_logprobs(our_model, tb.input_ids, tb.attention_mask)
        for b, e in enumerate(episodes):
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            full = torch.log_softmax(our_model(input_ids=ids).logits[0].float(), -1)
            p = len(e.prompt_ids)
            wanted = [float(full[p - 1 + i, tok]) for i, (tok, w) in enumerate(zip(e.response_ids, e.loss_mask)) if w]
            got = logps[b][tb.loss_mask[b].bool()].tolist()
            assert len(got) == len(wanted) and all(math.isclose(g, w, abs_tol=1e-5) for g, w in zip(got, wanted))
