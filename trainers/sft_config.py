"""SFT warm-start configuration (TRL-style: one field per knob, each with its help string)."""

from __future__ import annotations

from dataclasses import dataclass

from search_gym.trainers.config import TrainConfig, _help


@dataclass
class SFTConfig(TrainConfig):
    """Supervised warm start on environment trajectories: the protocol (think, search, read, answer) from the scripted
    oracle on QA train questions, refusals on harmful train prompts, helpful searched answers on benign-but-edgy
    train prompts. Environment tokens (passages, correction messages) are masked exactly as in RL."""

    output_dir: str = _help("run folder: sft_data.jsonl, checkpoints, logs, final/", default="runs/sft")
    learning_rate: float = _help("AdamW learning rate", default=5e-5)
    warmup_steps: int = _help("linear warm-up steps", default=20)
    lr_scheduler: str = _help("constant or linear (to 0 at the last step)", default="linear")
    max_steps: int = _help("optimisation steps (0: num_epochs over the data)", default=0)
    num_epochs: int = _help("passes over the trajectories when max_steps is 0", default=2)
    batch_size: int = _help("trajectories per optimiser step", default=16)
    save_steps: int = _help("save a checkpoint every N steps (and at the end)", default=100)
    retriever: str = _help("retriever the oracle searches with: dense or bm25", default="dense")
    template: str = _help("prompt template of the trajectories: search_r1 or safety", default="search_r1")
    max_turns: int = _help("turns per trajectory", default=4)
    qa_limit: int = _help("QA train questions to play with the oracle (0: all); only correct trajectories are kept",
                          default=0)
    harmful_limit: int = _help("harmful train prompts answered with a refusal (0: all)", default=1000)
    benign_limit: int = _help("benign-but-edgy train prompts answered helpfully after a search (0: all)", default=0)
    benign_repeat: int = _help("times each benign-but-edgy trajectory appears (the set is small)", default=2)
    max_length: int = _help("longest trajectory kept, prompt + response tokens", default=1024)
    max_turn_tokens: int = _help("longest policy turn kept (tokens): the per-turn generation budget of RL and eval; "
                                 "a teacher turn longer than that teaches answers that never finish", default=64)
    few_shot: int = _help("worked examples in the prompt (0: the trained model plays zero-shot)", default=0)
