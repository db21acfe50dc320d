"""The lean update's log-probabilities (:func:`search_gym.trainers.core.token_logprobs` on
:func:`~search_gym.trainers.core.selective_logprobs`): the same chosen-token log-probabilities, entropies and
gradients as the full-vocabulary log-softmax they replaced (kept below as the reference), at any temperature and
with the prompt's logits skipped; the entropy's subsample; bf16 logits; chunking changes nothing."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from search_gym.trainers.core import (first_loss_position, masked_mean, sampled_mean, selective_logprobs,
                                      token_logprobs)
from search_gym.trainers.grpo import grpo_loss


def reference_token_logprobs(model, input_ids, attention_mask, *, temperature=1.0, with_entropy=False,
                             with_hidden=False, first_position=0):
    """``token_logprobs`` as it was before the lean update: a float32 ``[B, T, V]`` log-softmax, then gather, and
    the entropy from the whole tensor."""
    seq = input_ids.size(1)
    first = min(max(int(first_position), 0), seq - 1)
    kwargs = {"logits_to_keep": seq - first} if first else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                output_hidden_states=with_hidden, **kwargs)
    logits = out.logits[:, :-1].float()
    if temperature and temperature != 1.0:
        logits = logits / temperature
    logps = torch.log_softmax(logits, dim=-1)
    chosen = logps.gather(-1, input_ids[:, first + 1:].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logps.exp() * logps).sum(-1)
    if first:
        pad = chosen.new_zeros(chosen.size(0), first)
        chosen = torch.cat([pad, chosen], dim=1)
        entropy = None if entropy is None else torch.cat([pad, entropy], dim=1)
    hidden = out.hidden_states[-1] if with_hidden else None
    return chosen, entropy, hidden


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer, seed=5)  # hidden 32, the tokenizer's vocabulary (49,152)


def _batch(tokenizer, prompt: int = 9, seed: int = 0):
    """Right-padded rows of random tokens, a ``prompt``-token prompt each, and the loss mask over the rest."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [26, 21, 17, 26]
    ids = torch.full((len(lengths), max(lengths)), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros(len(lengths), max(lengths) - 1)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(0, len(tokenizer), (n,), generator=gen)
        attention[row, :n] = 1
        mask[row, prompt - 1:n - 1] = 1.0
    return ids, attention, mask


def _close(got, want, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("first", [0, 8])
def test_logprobs_and_entropy_equal_the_full_log_softmax(model, tokenizer, temperature, first):
    ids, attention, _ = _batch(tokenizer)
    with torch.no_grad():
        want, want_entropy, want_hidden = reference_token_logprobs(
            model, ids, attention, temperature=temperature, with_entropy=True, with_hidden=True,
            first_position=first)
        got, entropy, hidden = token_logprobs(model, ids, attention, temperature=temperature, with_entropy=True,
                                              with_hidden=True, first_position=first)
        plain, none, no_hidden = token_logprobs(model, ids, attention, temperature=temperature,
                                                first_position=first)
    assert got.shape == want.shape == (ids.size(0), ids.size(1) - 1) and got.dtype == torch.float32
    _close(got, want)
    _close(entropy, want_entropy)
    _close(hidden, want_hidden, rtol=0, atol=0)
    _close(plain, got, rtol=0, atol=0)
    assert none is None and no_hidden is None
    assert torch.all(got[:, :first] == 0) and torch.all(entropy[:, :first] == 0)
    assert not torch.isnan(entropy).any()


@pytest.mark.parametrize("temperature,first,loss_type", [(1.0, 0, "grpo"), (0.7, 8, "dapo"), (1.3, 8, "bnpo")])
def test_grpo_loss_gradients_equal_the_full_log_softmax(model, tokenizer, temperature, first, loss_type):
    """The gradient of a GRPO loss (clipped ratio against perturbed old log-probs, a k3 KL to a perturbed
    reference) through the lean log-probs equals the one through the full log-softmax."""
    ids, attention, mask = _batch(tokenizer, seed=1)
    assert first_loss_position(mask) == 8 >= first  # first 0: the prompt's logits are computed, and masked
    gen = torch.Generator().manual_seed(2)
    advantages = torch.randn(ids.size(0), 1, generator=gen)
    with torch.no_grad():
        base, _, _ = reference_token_logprobs(model, ids, attention, temperature=temperature, first_position=first)
    old = base + 0.3 * torch.randn(base.shape, generator=gen)  # some ratios outside the clip range
    ref = base + 0.1 * torch.randn(base.shape, generator=gen)

    def gradients(fn):
        model.zero_grad(set_to_none=True)
        logps, entropy, _ = fn(model, ids, attention, temperature=temperature, with_entropy=True,
                               first_position=first)
        loss, _ = grpo_loss(logps, old, ref, advantages, mask, beta=0.04, epsilon_high=0.28, loss_type=loss_type,
                            max_completion_length=ids.size(1))
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), entropy, grads

    want_loss, want_entropy, want = gradients(reference_token_logprobs)
    got_loss, got_entropy, got = gradients(token_logprobs)
    model.zero_grad(set_to_none=True)
    assert not got_entropy.requires_grad
    _close(got_loss, want_loss)
    _close(got_entropy, want_entropy)
    assert sorted(got) == sorted(want) and len(want) > 5
    for name in want:
        assert want[name].abs().max() > 0, name
        _close(got[name], want[name], rtol=1e-4, atol=1e-7)


def test_entropy_on_every_nth_position(model, tokenizer):
    ids, attention, mask = _batch(tokenizer)
    first = first_loss_position(mask)
    with torch.no_grad():
        _, exact, _ = token_logprobs(model, ids, attention, with_entropy=True, first_position=first)
        logps, sampled, _ = token_logprobs(model, ids, attention, with_entropy=True, first_position=first,
                                           entropy_every=3)
        plain, _, _ = token_logprobs(model, ids, attention, first_position=first)
    _close(logps, plain, rtol=0, atol=0)  # the log-probabilities do not depend on it
    columns = torch.arange(ids.size(1) - 1)
    kept = (columns % 3 == 0) & (columns >= first)
    _close(sampled[:, kept], exact[:, kept])
    assert torch.isnan(sampled[:, ~kept & (columns >= first)]).all()
    assert torch.all(sampled[:, :first] == 0)
    # sampled_mean averages the sampled positions under the mask; with nothing sampled out it is masked_mean
    _close(sampled_mean(sampled, mask), masked_mean(exact[:, kept], mask[:, kept]))
    assert float(sampled_mean(exact, mask)) == float(masked_mean(exact, mask))
    assert abs(float(sampled_mean(sampled, mask)) - float(masked_mean(exact, mask))) < 0.05  # near-uniform policy


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("chunk_rows", [1, 4, None])
def test_selective_logprobs_is_log_softmax_then_gather(temperature, chunk_rows):
    """Any chunking gives the log-softmax's values and gradients, entropy included; a bool mask picks rows."""
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(3, 7, 101, generator=gen)).requires_grad_()
    targets = torch.randint(0, 101, (3, 7), generator=gen)
    weights = torch.randn(3, 7, generator=gen)
    full = torch.log_softmax(logits / temperature, -1)
    want = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    want_entropy = -(full.exp() * full).sum(-1).detach()
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    got, entropy = selective_logprobs(logits, targets, temperature=temperature, entropy_rows=True,
                                      chunk_rows=chunk_rows)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), logits)
    _close(got, want)
    _close(entropy, want_entropy)
    _close(got_grad, want_grad)
    rows = torch.rand(3, 7, generator=gen) < 0.4
    plain = selective_logprobs(logits.detach(), targets, temperature=temperature, chunk_rows=chunk_rows)
    _, picked = selective_logprobs(logits.detach(), targets, temperature=temperature, entropy_rows=rows,
                                   chunk_rows=chunk_rows)
    _close(plain, want.detach())
    _close(picked[rows], want_entropy[rows])
    assert torch.isnan(picked[~rows]).all()


def test_selective_logprobs_bf16_logits():
    """bf16 logits are log-softmaxed in float32 (a chunk at a time): the values of the float32 reference, and a
    bf16 gradient equal to the reference's float32 gradient rounded to bf16."""
    gen = torch.Generator().manual_seed(4)
    logits = (4 * torch.randn(2, 5, 300, generator=gen)).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 300, (2, 5), generator=gen)
    weights = torch.randn(2, 5, generator=gen)
    full = torch.log_softmax(logits.float() / 0.8, -1)
    want = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    got = selective_logprobs(logits, targets, temperature=0.8, chunk_rows=3)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), logits)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    _close(got, want)
    _close(got_grad.float(), want_grad.float(), rtol=1e-2, atol=1e-6)
