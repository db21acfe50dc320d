"""VLLMAgent without vLLM: positions from token ids, one batched HF forward, and agreement with HFAgent's hooks.

A fake ``LLM`` answers ``generate`` with HFAgent's greedy token ids in vLLM's output shape, so everything VLLMAgent
does after generation (stop/finish handling, logprobs, hidden states from one forward pass) runs for real. The
real-vLLM comparison is the ``gpu`` test at the end.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import observation

from search_gym.agents.hf import HFAgent
from search_gym.agents.hidden import (
    POSITIONS,
    forward_hidden,
    hidden_for_completions,
    locate_positions,
    open_search_in_prompt,
)
from search_gym.agents.vllm_agent import VLLM_INSTALL_HINT, SamplingSpec, VLLMAgent


LAYERS = (0, 8, 15)
HAS_VLLM = importlib.util.find_spec("vllm") is not None




OBSERVATIONS = [
    observation("What is the capital of France?"),
    observation("Who created the Python programming language?", prefill="<search>"),
]


class FakeLLM:
    """Stands in for ``vllm.LLM``: greedy generation by an HFAgent, returned in vLLM's RequestOutput shape."""

    def __init__(self, agent: HFAgent):
        self.agent = agent
        self.calls: list = []
        self.hf_steps: list = []

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        params = sampling_params[0]
        steps = self.agent.generate_ids(
            [p["prompt_token_ids"] for p in prompts], max_new_tokens=params.max_tokens, stop=params.stop
        )
        self.hf_steps = steps
        outputs = []
        for p, step in zip(prompts, steps):
            logprobs = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(step.completion_ids, step.logprobs)]
            stop_reason = step.metadata.get("stop_string")
            finish = "length" if step.finish_reason == "length" else "stop"
            completion = SimpleNamespace(
                text=step.text,
                token_ids=step.completion_ids,
                logprobs=logprobs,
                finish_reason=finish,
                stop_reason=stop_reason,
            )
            outputs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[completion]))
        return outputs


@pytest.fixture(scope="module")
def fake_run(smollm2):
    """VLLMAgent over the fake engine; the engine's HFAgent captures the same layers with hooks."""
    folder, model, tokenizer = smollm2
    hooked = HFAgent(model, tokenizer, layers=LAYERS, few_shot=1, max_new_tokens=24)
    llm = FakeLLM(hooked)
    agent = VLLMAgent(
        str(folder), llm=llm, tokenizer=tokenizer, hidden_model=model, layers=LAYERS, few_shot=1, max_new_tokens=24
    )
    steps = agent.act_batch(OBSERVATIONS)
    return agent, llm, steps


def test_sampling_params_carry_stop_strings_and_logprobs(fake_run):
    _, llm, _ = fake_run
    prompts, params = llm.calls[-1]
    assert all(set(p) == {"prompt_token_ids"} for p in prompts)  # token ids: no second BOS from vLLM
    spec = params[0]
    if not HAS_VLLM:
        assert isinstance(spec, SamplingSpec)
    assert list(spec.stop) == ["</search>", "</answer>"] and spec.include_stop_str_in_output
    assert spec.logprobs == 0 and spec.temperature == 0.0 and spec.max_tokens == 24


def test_steps_match_the_engine_output(fake_run):
    _, llm, steps = fake_run
    for step, hf_step in zip(steps, llm.hf_steps):
        assert step.text == hf_step.text and step.completion_ids == hf_step.completion_ids
        assert step.logprobs == pytest.approx(hf_step.logprobs)
        assert step.finish_reason == hf_step.finish_reason == "stop"
        assert step.metadata["stop_string"] == "</search>"


def test_one_forward_equals_hook_capture_during_generation(fake_run):
    _, llm, steps = fake_run
    for step, hf_step in zip(steps, llm.hf_steps):
        assert set(step.hidden) == set(LAYERS)
        for layer in LAYERS:
            assert set(step.hidden[layer]) == set(hf_step.hidden[layer]) == set(POSITIONS)
            for name in POSITIONS:
                diff = (step.hidden[layer][name] - hf_step.hidden[layer][name]).abs().max().item()
                assert diff <= 1e-4, (layer, name, diff)


def test_forward_hidden_equals_output_hidden_states_and_stops_early(smollm2):
    _, model, tokenizer = smollm2
    sequences = [
        tokenizer("The capital of France is Paris, on the Seine.").input_ids,
        tokenizer("Hello there, how are you?").input_ids,
    ]
    # Position 0 carries the attention-sink activations (|h| ~ 1e3, float error ~1e-4): not a position we capture.
    indices = [[2, 5, len(sequences[0]) - 1], [1, 4]]
    calls = []
    handle = model.model.layers[9].register_forward_hook(lambda *a: calls.append(1))
    try:
        rows = forward_hidden(model, sequences, indices, [2, 7])
    finally:
        handle.remove()
    assert not calls  # blocks after the deepest requested layer never ran
    for seq, ix, row in zip(sequences, indices, rows):
        with torch.no_grad():
            hs = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
        for layer in (2, 7):
            for i in ix:
                assert (row[layer][i] - hs[layer + 1][0, i]).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------- positions from ids


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_positions_when_the_prefill_opens_the_search(smollm2):
    tokenizer = smollm2[2]
    prompt = _ids(
        tokenizer, "<|im_start|>assistant\n<search> Paris </search>\n\n<information>x</information>\n\n<search>"
    )
    completion = _ids(tokenizer, " tallest tower </search>")
    loc = locate_positions(tokenizer, prompt, completion, POSITIONS)
    assert loc["last_prompt"] == [len(prompt) - 1] and loc["search"] == [len(prompt) - 1]
    query = tokenizer.decode((prompt + completion)[loc["query_mean"][0] : loc["query_mean"][-1] + 1])
    assert query.strip() == "tallest tower"
    assert loc["generated"] == list(range(len(prompt), len(prompt) + len(completion)))


def test_positions_when_the_completion_searches(smollm2):
    tokenizer = smollm2[2]
    prompt = _ids(tokenizer, "<|im_start|>assistant\n")
    completion = _ids(tokenizer, "<think> hm </think>\n<search> capital of France </search>")
    loc = locate_positions(tokenizer, prompt, completion, ["search", "query_mean"])
    full = prompt + completion
    assert tokenizer.decode(full[: loc["search"][0] + 1]).endswith("<search>")
    assert tokenizer.decode(full[loc["query_mean"][0] : loc["query_mean"][-1] + 1]).strip() == "capital of France"
    assert set(loc) == {"search", "query_mean"}  # only what was asked for


def test_absent_positions_are_missing(smollm2):
    tokenizer = smollm2[2]
    prompt = _ids(tokenizer, "<|im_start|>assistant\n")
    unclosed = locate_positions(tokenizer, prompt, _ids(tokenizer, "<search> never closed"), POSITIONS)
    assert "search" in unclosed and "query_mean" not in unclosed
    answer = locate_positions(tokenizer, prompt, _ids(tokenizer, "<answer> Paris </answer>"), POSITIONS)
    assert set(answer) == {"last_prompt", "generated"}
    assert "generated" not in locate_positions(tokenizer, prompt, [], POSITIONS)


def test_open_search_ignores_closed_and_earlier_turns():
    assert open_search_in_prompt("a <search> q </search> b") is None
    assert open_search_in_prompt("<search> x\n<information>docs</information>\n\n") is None
    text = "<search> q </search><information>d</information>\n\n<search>"
    assert open_search_in_prompt(text) == len(text) - len("<search>")
    assert open_search_in_prompt("no tags") is None


def test_hidden_for_completions_only_runs_up_to_the_last_needed_token(smollm2):
    _, model, tokenizer = smollm2
    prompt = _ids(tokenizer, "<|im_start|>assistant\n<search>")
    completion = _ids(tokenizer, " Paris </search> and then a long tail that no position needs")
    (hidden,) = hidden_for_completions(model, tokenizer, [prompt], [completion], [3], ["search", "query_mean"])
    assert set(hidden[3]) == {"search", "query_mean"} and hidden[3]["search"].shape == (576,)


# ---------------------------------------------------------------------------------------------- real vLLM


def test_missing_vllm_names_the_extra(smollm2, monkeypatch):
    """Runs with or without vLLM installed: ``sys.modules["vllm"] = None`` makes ``import vllm`` fail as it does
    where vLLM is absent."""
    import sys

    folder, _, tokenizer = smollm2
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install search-gym\[vllm\]"):
        VLLMAgent(str(folder), tokenizer=tokenizer)
    assert "search-gym[vllm]" in VLLM_INSTALL_HINT


NEAR_TIE = 1e-2  # logits this close may be ordered differently by vLLM's and HF's fp32 kernels


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, where) -> None:
    """Hidden states agree to 1e-3, relative to their size for the few large ones (attention-sink rows)."""
    assert torch.allclose(actual, expected, atol=1e-3, rtol=1e-3), (where, (actual - expected).abs().max().item())


def _first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token of two sequences (the shorter length when one is a prefix of the other);
    None when they are equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM or not torch.cuda.is_available(), reason="needs vLLM and a CUDA device")
def test_real_vllm_matches_hf_hooks(smollm2):
    """Real vLLM (fp32, greedy) against the HF model, on checks that never depend on the two producing the same
    tokens (so the test cannot pass while comparing nothing):

    1. teacher-forced: VLLMAgent's hidden states, at the positions located in vLLM's own tokens, equal those of a
       separate HF forward over the same prompt + completion ids (``output_hidden_states``). The agent reads its
       hidden states with this same HF model (``hidden_model``), so this checks where the positions are found in
       vLLM's tokens, not vLLM's numerics; checks 2 and 3 compare vLLM's own numbers;
    2. vLLM's sampled-token log-probabilities equal HF's teacher-forced ones on those ids;
    3. greedy agreement: vLLM's completion equals HF's greedy one, or the first token where they part is a near
       tie of HF's logits (fp32 kernels may order near-equal logits differently); anything else fails;
    4. where the completions are equal, VLLMAgent's hidden states also equal HFAgent's hook capture during
       generation; at least one of the observations must get there, else the test fails with the tokens.
    """
    folder, _, tokenizer = smollm2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    agent = VLLMAgent(
        str(folder),
        tokenizer=tokenizer,
        hidden_model=model,
        layers=LAYERS,
        few_shot=1,
        max_new_tokens=24,
        dtype="float32",
        llm_kwargs={"gpu_memory_utilization": 0.3},
    )
    steps = agent.act_batch(OBSERVATIONS)
    hooked = HFAgent(model, tokenizer, layers=LAYERS, few_shot=1, max_new_tokens=24)
    hf_steps = hooked.generate_ids([s.prompt_ids for s in steps])
    assert len(steps) == len(hf_steps) == len(OBSERVATIONS)  # zip below must not drop an observation
    same_tokens = 0
    for k, (step, hf_step) in enumerate(zip(steps, hf_steps)):
        assert step.text.endswith("</search>"), (k, step.text)
        prompt, completion = list(step.prompt_ids), list(step.completion_ids)
        assert list(hf_step.prompt_ids) == prompt and completion
        with torch.no_grad():
            out = model(torch.tensor([prompt + completion], device="cuda"), output_hidden_states=True)
        # 1. teacher-forced hidden states (HF hidden_states[L + 1] is block L's output; no LAYER is the last block)
        located = locate_positions(tokenizer, prompt, completion, POSITIONS)
        assert set(located) == set(POSITIONS), (k, sorted(located))  # every position checked, none missing
        for layer in LAYERS:
            assert set(step.hidden[layer]) == set(located)
            states = out.hidden_states[layer + 1][0].float().cpu()
            for name, indices in located.items():
                rows = states[indices]
                expected = rows.mean(0) if name == "query_mean" else rows if name == "generated" else rows[0]
                _assert_close(step.hidden[layer][name], expected, (k, layer, name))
        # 2. vLLM's log-probabilities of its own tokens, against HF's on the same ids
        logprobs = torch.log_softmax(out.logits[0, len(prompt) - 1 : -1].float(), dim=-1).cpu()
        hf_logprobs = logprobs[torch.arange(len(completion)), torch.tensor(completion)]
        assert step.logprobs == pytest.approx(hf_logprobs.tolist(), abs=NEAR_TIE), k
        # 3. vLLM's greedy tokens are HF's, up to a near tie
        i = _first_difference(completion, list(hf_step.completion_ids))
        if i is None:
            same_tokens += 1
            # 4. the hook capture during HF's own generation agrees too
            for layer in LAYERS:
                assert set(step.hidden[layer]) == set(hf_step.hidden[layer])
                for name in step.hidden[layer]:
                    _assert_close(step.hidden[layer][name], hf_step.hidden[layer][name], (k, layer, name, "hooks"))
            continue
        assert i < min(len(completion), len(hf_step.completion_ids)), (
            f"observation {k}: one completion stops where the other goes on (vLLM {completion}, HF "
            f"{hf_step.completion_ids})")
        row = out.logits[0, len(prompt) - 1 + i].float()
        gap = (row[hf_step.completion_ids[i]] - row[completion[i]]).item()
        assert abs(gap) <= NEAR_TIE, (
            f"observation {k}: vLLM's greedy token {i} ({completion[i]}) is not HF's argmax "
            f"({hf_step.completion_ids[i]}) and not a near tie: logit gap {gap:.2e}")
    assert same_tokens >= 1, ("vLLM's and HF's greedy completions differ on every observation, so the hook comparison "
                              f"ran on none: {[(s.completion_ids, h.completion_ids) for s, h in zip(steps, hf_steps)]}")
