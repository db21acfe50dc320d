"""Configs shared by every trainer.

TRL-style: each trainer has a dataclass config whose fields carry a ``help`` string; ``search-gym train <algo>``
builds its flags from those fields (:func:`search_gym.configs.add_dataclass_arguments`) and ``--config x.yaml``
fills them from a file first, so help text, defaults and the YAML keys can never drift from the code.

:class:`TrainConfig` holds what any run needs (model, output folder, optimiser, checkpoints, logging);
:class:`RLConfig` adds the rollout (group size, sampling, context budget), shared by GRPO and PPO, and three
sections (nested configs: ``--env.max-turns`` flags, ``env: {max_turns: 2}`` in YAML): ``env``
(:class:`~search_gym.envs.EnvConfig`, the environment), ``vllm`` (:class:`VLLMConfig`, the colocated engine and
its sampler correction) and ``penalty`` (:class:`PenaltyConfig`, the representation-guided reward). Their fields
were top-level fields before (``max_turns``, ``vllm_max_model_len``, ``penalty_lambda``): those keys and flags
still load (``RLConfig.moved_fields``), with a deprecation line naming the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_gym.configs import add_dataclass_arguments, build_config, config_dict, load_config_file  # noqa: F401
from search_gym.configs import help_field as _help
from search_gym.configs import moved_to
from search_gym.envs.config import EnvConfig


@dataclass
class TrainConfig:
    """Fields every trainer shares."""

    model: str = _help("policy to start from: 'smollm2' (bundled), 'smollm2-aligned' (bundled + the shipped aligned "
                       "adapter, merged), a hub id or a saved folder", default="smollm2")
    output_dir: str = _help("run folder: checkpoints, logs (TensorBoard, metrics.csv), config.json", default="runs/train")
    seed: int = _help("seed of data order, sampling and initialisation", default=0)
    device: str | None = _help("torch device (default: cuda if available, else cpu)", default=None)
    dtype: str = _help("parameter dtype: float32, bf16 or fp16", default="float32")
    tf32: bool = _help("on a CUDA device, float32 matrix products on TF32 tensor cores (as transformers' "
                       "TrainingArguments.tf32): faster on Ampere and later cards, products rounded to a 10-bit mantissa",
                       default=False)
    learning_rate: float = _help("AdamW learning rate", default=1e-6)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    warmup_steps: int = _help("linear warm-up steps of the learning-rate schedule", default=0)
    lr_scheduler: str = _help("learning-rate schedule after warm-up: constant or linear (to 0 at max_steps)", default="constant")
    max_grad_norm: float = _help("gradient clipping norm (0 disables)", default=1.0)
    max_steps: int = _help("optimisation steps (RL: one rollout batch per step)", default=10)
    save_steps: int = _help("save a checkpoint every N steps (and at the end); 0 saves only at the end", default=50)
    save_total_limit: int = _help("keep this many checkpoints (0 keeps all)", default=0)
    logging_steps: int = _help("log metrics every N steps", default=1)
    resume: bool = _help("resume from the newest checkpoint in output_dir when there is one", default=True)
    lora_r: int = _help("LoRA rank through peft (0 trains all weights)", default=0)
    lora_alpha: int = _help("LoRA alpha", default=16)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    lora_target_modules: str = _help("comma-separated module names LoRA adapts ('all-linear' for every linear layer)",
                                     default="all-linear")
    gradient_checkpointing: bool = _help("trade compute for memory in the policy's backward pass", default=False)
    tensorboard: bool = _help("write TensorBoard event files beside metrics.csv", default=True)
    progress: bool = _help("show a progress bar", default=True)
    plots: bool = _help("draw curves.png (the logged metrics against step) at each checkpoint and at the end",
                        default=True)


IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class VLLMConfig:
    """The colocated vLLM rollout engine (generation_backend='vllm') and the correction for its sampler."""

    gpu_memory_utilization: float = _help("GPU share of the colocated vLLM engine", default=0.3)
    max_model_len: int = _help("longest prompt + response the vLLM engine serves", default=4096)
    max_num_batched_tokens: int = _help("the vLLM engine's token budget per scheduler step (TRL's colocate "
                                        "4096; multi-turn turns prefill their passages, more may help)",
                                        default=4096)
    request_seeds: bool = _help("seed every vLLM request from (step seed, index): reproducible sampling for an "
                                "identical batch, at one generator call per sequence per token (off: one "
                                "engine seed, as TRL)", default=False)
    enable_sleep_mode: bool = _help("free the vLLM engine's memory during the update (slower; for long "
                                    "sequences or big models)", default=False)
    importance_sampling_correction: bool = _help(
        "correct for the sampler/trainer mismatch when the rollout engine is not the policy itself (vLLM): weight "
        "the policy loss by exp(policy log-prob - sampler log-prob) (TRL's default with vLLM; GRPO: one extra "
        "no-grad forward per step, PPO scores the batch anyway)", default=True)
    importance_sampling_mode: str = _help(
        "token_truncate / token_mask (per-token ratios clipped to, or zeroed outside, [clip_min, clip_max]) or "
        "sequence_truncate / sequence_mask (one ratio per episode from the summed log-prob difference)",
        default="sequence_mask")
    importance_sampling_clip_max: float | None = _help("upper bound C_max of the correction ratio", default=3.0)
    importance_sampling_clip_min: float | None = _help("lower bound C_min of the correction ratio (none: no "
                                                       "lower bound)", default=None)

    def __post_init__(self) -> None:
        if self.importance_sampling_mode not in IS_MODES:
            raise ValueError(f"vllm.importance_sampling_mode must be one of {IS_MODES}")


@dataclass
class PenaltyConfig:
    """Representation-guided reward shaping r = r_task - lambda * p(h) (RL-search-safety)."""

    lambda_: float = _help("lambda of r = r_task - lambda * p(h); 0 disables the penalty", default=0.0)
    direction: str | None = _help("harmful-search Direction file (search-gym directions extract)", default=None)
    layer: int | None = _help("layer read for the penalty (default: the direction's chosen layer)", default=None)
    source: str = _help("who reads h: 'reference' (frozen starting model re-encoding the episode) or "
                        "'policy'", default="reference")
    searches: str = _help("which <search> tokens: 'first' (RL-search-safety final) or 'mean'", default="first")
    projection: str = _help("'cosine' or 'dot' (raw h . d)", default="cosine")
    relu: bool = _help("penalise max(0, p) instead of p", default=False)


def train_env(**changes) -> EnvConfig:
    """The trainers' environment default: :class:`EnvConfig` with the safety judges on (safety/* metrics in the
    logs), the dense retriever and the search_r1 template; ``changes`` override fields
    (``GRPOConfig(env=train_env(max_turns=2))``)."""
    return EnvConfig(**{"retriever": "dense", "template": "search_r1", "safety": True, **changes})


@dataclass
class RLConfig(TrainConfig):
    """Rollout and shaping fields shared by GRPO and PPO."""

    env: EnvConfig = _help("the environment rollouts play (search_gym.envs.EnvConfig); trainer defaults: "
                           "safety judges on, dense retriever, search_r1 template", default_factory=train_env)
    questions_per_step: int = _help("distinct questions per rollout batch", default=4)
    max_questions: int = _help("train on the first N questions of the env's set (0: all of them); a small slice "
                               "revisited every few steps shows learning in minutes (a teaching run)", default=0)
    group_size: int = _help("episodes per question (GRPO's G; PPO plays each question this many times too)", default=4)
    num_envs: int = _help("sub-environments stepped (and generated) together; 0 = questions_per_step * group_size",
                          default=0)
    temperature: float = _help("sampling temperature of rollouts; log-probabilities are taken at this temperature",
                               default=1.0)
    top_p: float = _help("nucleus sampling mass (1.0 keeps the recorded log-probabilities exact)", default=1.0)
    max_turn_tokens: int = _help("new tokens per turn", default=128)
    max_prompt_tokens: int = _help("prompt budget; longer prompts are cut from the left and the episode says so",
                                   default=1024)
    max_response_tokens: int = _help("response budget (policy + environment tokens); an episode that reaches it "
                                     "ends truncated", default=1024)
    max_obs_tokens: int = _help("tokens of environment text kept per turn; longer blocks are cut and reported",
                                default=512)
    few_shot: int = _help("worked protocol examples in the prompt (0 after an SFT warm start)", default=0)
    generation_backend: str = _help("rollout generation: 'hf' (the policy itself, any device) or 'vllm' (an "
                                    "in-process vLLM engine on the same GPU, weights pushed after every step)",
                                    default="hf")
    async_rollouts: bool = _help("generate step t+1's episodes while step t updates (one step off-policy: they "
                                 "come from the weights of before update t). Needs a generator with its own copy of "
                                 "the weights (generation_backend vllm, no sleep mode) and "
                                 "vllm.importance_sampling_correction, which reweights the stale samples",
                                 default=False)
    hf_cache_implementation: str | None = _help("KV cache of the HF backend's generate: None (dynamic) or 'static' "
                                                "(preallocated, the form torch.compile needs; measure with "
                                                "benchmarks/bench_generation_cache.py)", default=None)
    mini_batch_size: int = _help("episodes per optimiser step inside a rollout batch (0: the whole batch)", default=0)
    num_iterations: int = _help("optimisation passes over each rollout batch (GRPO's mu, PPO's epochs)", default=1)
    forward_batch_size: int = _help("episodes per forward (and backward) pass; gradients accumulate over a "
                                    "minibatch's passes, one optimiser step per minibatch (0: the whole minibatch "
                                    "in one pass)", default=0)
    entropy_every: int = _help("compute the policy's entropy (losses/entropy, PPO's entropy term) at every N-th "
                               "token position only, the mean over those: the full-vocabulary entropy is a pass "
                               "over the logits per position (1: every position, exact)", default=1)
    drift_every: int = _help("record the policy's drift along the penalty direction at step 0 and at the saved "
                             "checkpoints whose step is a multiple of N (drift.jsonl; 0: off)", default=0)
    drift_prompts: int = _help("held-out harmful and QA prompts read for drift", default=32)
    episode_seeds: int = _help("envs without a question set (chat envs such as SelfInterestedExploration-v0, "
                               "played by ChatRolloutCollector): episodes start from reset seeds 0..N-1, one "
                               "group per seed (the env draws its scenario from the seed)", default=64)
    vllm: VLLMConfig = _help("the colocated vLLM engine (generation_backend vllm) and its sampler correction",
                             default_factory=VLLMConfig)
    penalty: PenaltyConfig = _help("representation-guided reward shaping r = r_task - lambda * p(h)",
                                   default_factory=PenaltyConfig)

    #: The top-level fields that moved into sections: their keys (YAML, config.json) and flags still load, with
    #: a one-line deprecation message naming the new key.
    moved_fields = {
        **moved_to("env", ("split", "retriever", "template", "max_turns", "parse_mode", "topk", "reward", "attack",
                           "safety")),
        "env_id": "env.id",
        "env_kwargs": "env.kwargs",
        **moved_to("vllm", VLLMConfig, "vllm_"),
        **moved_to("penalty", PenaltyConfig, "penalty_"),
    }

    def __post_init__(self) -> None:
        for name, kind in (("env", EnvConfig), ("vllm", VLLMConfig), ("penalty", PenaltyConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, not {type(getattr(self, name)).__name__} (a "
                                "mapping of its fields is read by build_config)")
        if self.async_rollouts:
            self.check_async_rollouts()

    def check_async_rollouts(self) -> None:
        """What one-step off-policy rollouts need of the config (the trainer checks the generator itself)."""
        if self.generation_backend == "hf":
            # HF samples from the policy module itself: a rollout beside the update would read weights mid-step.
            raise ValueError("async_rollouts needs a generator with its own copy of the weights: generation_backend "
                             "'hf' samples from the policy being updated; use generation_backend='vllm'")
        if self.vllm.enable_sleep_mode:
            # Sleep mode frees the engine during the update, exactly when the next step's rollout uses it.
            raise ValueError("async_rollouts generates during the update: turn vllm.enable_sleep_mode off")
        if not self.vllm.importance_sampling_correction:
            # Without the correction a stale batch is trained on as if the current policy had sampled it (GRPO with
            # one iteration takes the ratio as 1): a biased gradient that nothing bounds. An error rather than a
            # warning, since a run would look normal while optimising the wrong objective.
            raise ValueError("async_rollouts trains on episodes sampled one update earlier: it needs "
                             "vllm.importance_sampling_correction (the exp(policy - sampler) weights that correct "
                             "for the staleness)")
