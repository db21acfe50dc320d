"""Models for the speed benchmarks: the bundled SmolLM2, any hub id / folder, or random weights in a public shape.

Random weights in a published config's shape measure speed honestly and need no download, so the benchmarks run on
a GPU box with no hub access; prompts are then tokenised with the bundled SmolLM2 tokenizer (``--tokenizer`` to
override), whose ids are all valid in the larger vocabularies.
"""

from __future__ import annotations

import sys

import torch
from search_gym.devices import resolve_dtype

# Qwen2.5 shapes from the public config.json files.
_QWEN25 = {
    "model_type": "qwen2", "vocab_size": 151936, "rope_theta": 1_000_000.0, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_dropout": 0.0, "use_sliding_window": False,
    "bos_token_id": 151643, "eos_token_id": 151645,
}
RANDOM_CONFIGS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(_QWEN25, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN25, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=True),
    "qwen2.5-3b": dict(_QWEN25, hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, intermediate_size=11008, tie_word_embeddings=True),
    "qwen2.5-7b": dict(_QWEN25, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, tie_word_embeddings=False),
}
RANDOM_CONFIG_HELP = f"random weights in a known shape: {sorted(RANDOM_CONFIGS)} (a 'Qwen/' prefix and case are ignored)"


def load_model(args):
    """(model, tokenizer, description) for ``args.model`` or ``args.random_config`` on ``args.device`` in
    ``args.dtype`` (``args.tokenizer`` overrides the tokenizer)."""
    from search_gym.agents.gguf import ensure_smollm2
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    if args.random_config:
        key = args.random_config.lower().removeprefix("qwen/")
        if key not in RANDOM_CONFIGS:
            sys.exit(f"--random-config must be one of {sorted(RANDOM_CONFIGS)}")
        spec = dict(RANDOM_CONFIGS[key])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        torch.manual_seed(0)
        with device:  # initialise the weights on the target device (fast on a GPU)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype if dtype != "auto" else torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or ensure_smollm2(progress=True))
        return model.eval(), tokenizer, f"random {key}"
    source = ensure_smollm2(progress=True) if args.model == "smollm2" else args.model
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(args.tokenizer or source), str(args.model)
