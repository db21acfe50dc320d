"""HFAgent on the bundled SmolLM2-135M-Instruct: generation, prefill, logprobs, hidden states, steering.

One model load per module (converted once from the bundled GGUF into pytest's cache folder, so later runs skip the
~20 s conversion); short generations keep the module within a few tens of seconds on 2 CPU cores.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import observation

from search_gym.agents.hf import FEW_SHOT_EXAMPLES, HFAgent, few_shot_messages
from search_gym.agents.hidden import POSITIONS, decoder_layers, locate_positions

from search_gym.envs.protocol import PROMPT_TEMPLATES, parse_tagged_action

WIDTH, N_LAYERS = 576, 30
LAYERS = (0, 8, 15, N_LAYERS - 1)  # the last block checks the final-norm off-by-one




FRANCE = observation("What is the capital of France?")
FRANCE_SEARCH = observation("What is the capital of France?", prefill="<search>")


@pytest.fixture(scope="module")
def capturing(smollm2):
    _, model, tokenizer = smollm2
    return HFAgent(model, tokenizer, layers=LAYERS, few_shot=1, max_new_tokens=24)


@pytest.fixture(scope="module")
def batch_steps(capturing):
    """One batched call: a free turn (the model writes <search> itself) and a <search>-prefilled turn."""
    return capturing.act_batch([FRANCE, FRANCE_SEARCH])


@pytest.fixture(scope="module")
def plain_forwards(smollm2, batch_steps):
    """A plain ``output_hidden_states`` forward over each turn's prompt + completion tokens."""
    model = smollm2[1]
    outputs = []
    for step in batch_steps:
        with torch.no_grad():
            outputs.append(model(torch.tensor([step.prompt_ids + step.completion_ids]), output_hidden_states=True))
    return outputs


# ---------------------------------------------------------------------------------------------- conversion


def test_converted_folder_is_plain_float32_and_answers_sensibly(smollm2):
    folder, model, tokenizer = smollm2
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists()
    agent = HFAgent(model, tokenizer, few_shot=0, max_new_tokens=10, stop=())
    step = agent.act({"messages": ({"role": "user", "content": "What is the capital of France?"},), "prefill": ""})
    assert "Paris" in step.text  # the de-quantised weights still know things


def test_ensure_smollm2_reuses_a_converted_folder(smollm2, tmp_path, monkeypatch):
    from search_gym.agents import gguf

    folder, _, _ = smollm2
    monkeypatch.setenv("SEARCH_GYM_CACHE", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / gguf.SMOLLM2_NAME).symlink_to(folder, target_is_directory=True)
    monkeypatch.setattr(gguf, "convert_gguf", lambda *a, **k: pytest.fail("converted again"))
    assert gguf.ensure_smollm2(progress=False) == tmp_path / "models" / gguf.SMOLLM2_NAME


# ---------------------------------------------------------------------------------------------- generation


def test_prefill_is_continued_not_repeated(batch_steps, capturing):
    free, prefilled = batch_steps
    assert not prefilled.text.lstrip().startswith("<search>")
    assert prefilled.text.endswith("</search>") and prefilled.finish_reason == "stop"
    action = parse_tagged_action("<search>" + prefilled.text, max_chars=10_000, max_tags=8)
    assert action.kind == "search" and action.content
    prompt_text = capturing.tokenizer.decode(prefilled.prompt_ids)
    assert prompt_text.endswith("<|im_start|>assistant\n<search>")
    # the free turn used the protocol thanks to the few-shot example, and stopped at the closing tag
    assert "<search>" in free.text and free.text.endswith("</search>")


def test_logprobs_are_the_raw_policy_logprobs(batch_steps, plain_forwards):
    for step, out in zip(batch_steps, plain_forwards):
        assert len(step.logprobs) == len(step.completion_ids)
        logits = out.logits[0]
        start = len(step.prompt_ids) - 1
        expected = torch.log_softmax(logits[start : start + len(step.completion_ids)].float(), -1)
        expected = expected.gather(1, torch.tensor(step.completion_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(step.logprobs), expected, atol=1e-3)


def test_batched_and_single_greedy_generation_agree(capturing, batch_steps):
    singles = [capturing.act(FRANCE), capturing.act(FRANCE_SEARCH)]
    assert [s.text for s in singles] == [s.text for s in batch_steps]
    assert [s.completion_ids for s in singles] == [s.completion_ids for s in batch_steps]


def test_forced_length_without_stop_strings(smollm2):
    _, model, tokenizer = smollm2
    agent = HFAgent(model, tokenizer, few_shot=0, max_new_tokens=6, min_new_tokens=6, stop=())
    step = agent.act(FRANCE_SEARCH)
    assert len(step.completion_ids) == 6 and step.finish_reason == "length" and step.hidden is None


def test_seeded_sampling_replays_and_leaves_global_rng_alone(smollm2):
    _, model, tokenizer = smollm2
    agent = HFAgent(model, tokenizer, few_shot=0, max_new_tokens=6, temperature=1.0, seed=123, stop=())
    state = torch.random.get_rng_state()
    first = [agent.act(FRANCE_SEARCH).text for _ in range(2)]
    assert torch.equal(state, torch.random.get_rng_state())
    assert first[0] != first[1]  # successive calls draw fresh samples
    agent.seed(123)
    assert agent.act(FRANCE_SEARCH).text == first[0]


# ---------------------------------------------------------------------------------------------- hidden states


def test_hidden_states_cover_every_layer_and_position(smollm2, batch_steps):
    tokenizer = smollm2[2]
    free, prefilled = batch_steps
    for step in batch_steps:
        assert set(step.hidden) == set(LAYERS)
        for layer in LAYERS:
            assert set(step.hidden[layer]) == set(POSITIONS)
            for tensor in step.hidden[layer].values():
                assert tensor.dtype == torch.float32 and tensor.shape[-1] == WIDTH
            assert step.hidden[layer]["generated"].shape == (len(step.completion_ids), WIDTH)
    # <search> came from the completion in one turn and from the prefill in the other
    assert locate_positions(tokenizer, free.prompt_ids, free.completion_ids, POSITIONS)["search"][0] >= len(
        free.prompt_ids
    )
    located = locate_positions(tokenizer, prefilled.prompt_ids, prefilled.completion_ids, POSITIONS)
    assert located["search"] == [len(prefilled.prompt_ids) - 1]


def test_hook_capture_equals_a_plain_output_hidden_states_forward(smollm2, batch_steps, plain_forwards):
    _, model, tokenizer = smollm2
    for step, out in zip(batch_steps, plain_forwards):
        loc = locate_positions(tokenizer, step.prompt_ids, step.completion_ids, POSITIONS)
        assert set(loc) == set(POSITIONS)
        tokens = tokenizer.convert_ids_to_tokens(step.prompt_ids + step.completion_ids)
        assert tokens[loc["search"][0]] == ">" and tokens[loc["search"][0] - 1] == "search"
        for layer in LAYERS:
            if layer == N_LAYERS - 1:
                # HF's last hidden_states entry is after the final norm; ours is the raw residual stream.
                reference = model.model.norm(torch.stack([step.hidden[layer]["last_prompt"]]))[0]
                assert (reference - out.hidden_states[-1][0, loc["last_prompt"][0]]).abs().max() <= 1e-4
                continue
            hs = out.hidden_states[layer + 1][0]  # layer L == HF hidden_states[L + 1]
            expected = {
                "last_prompt": hs[loc["last_prompt"][0]],
                "search": hs[loc["search"][0]],
                "query_mean": hs[loc["query_mean"]].mean(0),
                "generated": hs[loc["generated"]],
            }
            for name, value in expected.items():
                diff = (step.hidden[layer][name] - value).abs().max().item()
                assert diff <= 1e-4, (layer, name, diff)


def hooks_of(model) -> list[list[int]]:
    """Hook ids on each decoder block (transformers installs its own output-capturing hook once, and keeps it)."""
    return [list(block._forward_hooks) for block in decoder_layers(model)]


def test_capture_hooks_are_removed_after_generation_even_on_errors(smollm2, monkeypatch):
    _, model, tokenizer = smollm2
    before = hooks_of(model)
    agent = HFAgent(model, tokenizer, layers=[1, 2], few_shot=0, max_new_tokens=3, stop=())
    assert agent.act(FRANCE_SEARCH).hidden[2]["search"].shape == (WIDTH,)
    assert hooks_of(model) == before

    def broken(*args, **kwargs):
        raise RuntimeError("generation failed")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(RuntimeError, match="generation failed"):
        agent.act(FRANCE_SEARCH)
    assert hooks_of(model) == before


def test_no_layers_means_no_hooks(smollm2, monkeypatch):
    import search_gym.agents.hf as hf

    _, model, tokenizer = smollm2
    before = hooks_of(model)
    monkeypatch.setattr(hf, "GenerationCapture", lambda *a, **k: pytest.fail("capture built without layers"))
    step = HFAgent(model, tokenizer, few_shot=0, max_new_tokens=4, stop=()).act(FRANCE)
    assert step.hidden is None
    assert hooks_of(model) == before


# ---------------------------------------------------------------------------------------------- steering


def test_steering_changes_output_only_when_nonzero_and_always_unhooks(smollm2):
    _, model, tokenizer = smollm2
    before = hooks_of(model)
    agent = HFAgent(model, tokenizer, few_shot=0, max_new_tokens=6, stop=())
    base = agent.act(FRANCE_SEARCH)
    with agent.steer(torch.zeros(WIDTH), layer=5, coeff=10.0):
        zero = agent.act(FRANCE_SEARCH)
    direction = torch.randn(WIDTH, generator=torch.Generator().manual_seed(0))
    with agent.steer(direction / direction.norm(), layer=5, coeff=200.0):
        steered = agent.act(FRANCE_SEARCH)
    assert zero.text == base.text and zero.completion_ids == base.completion_ids
    assert steered.text != base.text
    with pytest.raises(RuntimeError, match="boom"), agent.steer(direction, layer=5, coeff=1.0):
        raise RuntimeError("boom")
    assert hooks_of(model) == before
    with pytest.raises(ValueError, match="width"), agent.steer(torch.ones(3), layer=5):
        pass


# ---------------------------------------------------------------------------------------------- prompts & registry


def test_few_shot_examples_reuse_the_observation_template():
    messages = few_shot_messages(list(FRANCE["messages"]), 2)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    head = PROMPT_TEMPLATES["search_r1"].split("{question}")[0]
    assert messages[0]["content"] == head + FEW_SHOT_EXAMPLES[0][0] + "\n"
    assert "<search>" in messages[1]["content"] and "<information>" in messages[1]["content"]
    tool_obs = [{"role": "user", "content": PROMPT_TEMPLATES["tool_call"].format(question="q")}]
    assert few_shot_messages(tool_obs, 2) == tool_obs


def test_make_agent_builds_every_backend(smollm2):
    from search_gym.agents.baselines import RandomAgent, ScriptedAgent
    from search_gym.agents.registry import agent_names, make_agent

    _, model, tokenizer = smollm2
    assert set(agent_names()) == {"scripted", "random", "hf", "smollm2", "smollm2-aligned", "vllm", "openai"}
    assert isinstance(make_agent("scripted"), ScriptedAgent)
    assert isinstance(make_agent("random", seed=1), RandomAgent)
    assert isinstance(make_agent("hf", model=model, tokenizer=tokenizer), HFAgent)
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("nope")
    with pytest.raises(ValueError, match="hidden states"):
        make_agent("openai", endpoint="chat", layers=[3])


def test_static_kv_cache_generates_what_the_dynamic_one_does(tokenizer):
    """cache_implementation="static" (the trainers' hf_cache_implementation) changes how the cache is held, not
    what is generated: the same greedy ids and log-probabilities, also while hidden states are captured."""
    from conftest import tiny_llama

    model = tiny_llama(tokenizer, 0)
    prompts = [tokenizer("Who wrote the opera Carmen and", add_special_tokens=False)["input_ids"],
               tokenizer("Paris", add_special_tokens=False)["input_ids"]]
    for layers in (None, (0, 1)):
        runs = []
        for cache in (None, "static"):
            agent = HFAgent(model, tokenizer, temperature=0.0, few_shot=0, max_new_tokens=10, layers=layers,
                            cache_implementation=cache)
            runs.append([(s.completion_ids, s.logprobs) for s in agent.generate_ids(prompts)])
        assert runs[0] == runs[1] or all(
            a[0] == b[0] and max(abs(x - y) for x, y in zip(a[1], b[1])) < 1e-5 for a, b in zip(*runs))
