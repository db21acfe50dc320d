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
    forward_batch_size: int = _help("trajectories per forward (and backward) pass; gradients accumulate over a "
                                    "step's passes, so the step is the same as in one pass, in less memory (TRL's "
                                    "per-device batch x gradient accumulation; 0: the whole batch in one pass)",
                                    default=0)
    save_steps: int = _help("save a checkpoint every N steps (and at the end)", default=100)
    retriever: str = _help("retriever the oracle searches with: dense, bm25, hybrid or a server URL", default="dense")
    template: str = _help("prompt template of the trajectories: search_r1 or safety", default="search_r1")
    max_turns: int = _help("turns per trajectory", default=4)
    qa_limit: int = _help("QA train questions to play with the oracle (0: all); only correct trajectories are kept",
                          default=0)
    qa_repeat: int = _help("times each kept QA trajectory appears (more weight on searching and answering from "
                           "the passages)", default=1)
    qa_lower_passage_repeat: int = _help("times each kept QA trajectory whose answer is in passage 2 or later (not "
                                         "the top one) appears, times qa_repeat (more weight on reading past "
                                         "passage 1)", default=1)
    grounded_thought: bool = _help("teacher 'aligned': the thought before a QA answer names the passage that holds "
                                   "it ('Doc 2 (Title) answers the question.') instead of a generic sentence",
                                   default=False)
    harmful_limit: int = _help("harmful train prompts answered with a refusal (0: all)", default=1000)
    benign_limit: int = _help("benign-but-edgy train prompts answered helpfully after a search (0: all)", default=0)
    benign_repeat: int = _help("times each benign-but-edgy trajectory appears (the set is small)", default=2)
    instruct_limit: int = _help("benign instruction-style requests of the judges' train split (imperatives, how-to "
                                "questions, tutorials on everyday, technical and edgy-but-legal topics, the benign "
                                "twins of the matched pairs) answered helpfully after a search, so that the topic "
                                "rather than the form of a request decides a refusal (0: all, -1: none)", default=-1)
    instruct_repeat: int = _help("times each benign instruction-style trajectory appears (more weight on answering "
                                 "benign requests whose form or topic resembles a harmful one)", default=1)
    pair_harmful_limit: int = _help("harmful requests of the judges' train split (the harmful twins of the matched "
                                    "pairs, in the same forms as the benign ones) answered with a refusal "
                                    "(0: all, -1: none)", default=-1)
    teacher: str = _help("SFT teachers: 'fixed' (one sentence before every search, the question as the query, four "
                         "refusals: the first warm start) or 'aligned' (search_gym.agents.teachers: varied thoughts, "
                         "rephrased queries, varied refusals, and under a forced <search> a refusal in the tag or a "
                         "deflecting query)", default="fixed")
    harmful_search_limit: int = _help("harmful train prompts played with the search attack (a forced <search>) and "
                                      "the refusal teacher: what an aligned model writes when made to search "
                                      "(0: all, -1: none; needs teacher 'aligned', whose refusal teacher answers a "
                                      "forced search)", default=-1)
    edgy_extra_limit: int = _help("benign-but-edgy questions written for this warm start (search_gym/data/"
                                  "edgy_benign_sft.json, 144: pharmacology and drug safety, history of atrocities "
                                  "and covert programmes, criminal law, defensive security, toxicology, extremism "
                                  "and weapons as subjects of study, harm reduction) answered after a search; "
                                  "training only, kept clear of every evaluation prompt (0: all, -1: none)",
                                  default=-1)
    edgy_extra_repeat: int = _help("times each of those trajectories appears", default=1)
    decision_weight: float = _help("weight of the loss on each trajectory's first thought (the first policy turn's "
                                   "tokens up to and including its first </think>; none under a forced search), "
                                   "where the student decides between refusing and searching: a few tokens of a "
                                   "hundred; at 1 (every policy token alike) recipe 6c made the other decision than "
                                   "its teacher on at least 4.5-14% of its own training prompts. The loss stays "
                                   "divided by the plain token count, so every other token keeps its gradient",
                                   default=1.0)
    passage_weight: float = _help("weight of the loss on a QA trajectory's answer thought when it names the passage "
                                  "the answer is read from (the grounded teacher's 'Doc 2 (Title) answers the "
                                  "question.', --grounded-thought true: the last policy turn's tokens up to and "
                                  "including its </think>), where the student picks that passage by one digit; at 1, "
                                  "recipe 8a named Doc 1 on every training row whose teacher named Doc 2 or 3 "
                                  "(benchmarks/passage_choice_fit.py). Logged as losses/answer_thought_loss; divided "
                                  "by the plain token count as decision_weight is", default=1.0)
    dev_split: bool = _help("hold the project's validation split out of the trajectories (prompts whose id hashes to "
                            "'val' by search_gym.corpora.judge_data.split_for_bundled, and the judges' val rows) and "
                            "write it to output_dir/dev/*.jsonl, for choosing a recipe without the held-out sets",
                            default=False)
    data_only: bool = _help("build output_dir/sft_data.jsonl (and dev/) and stop without training", default=False)
    max_length: int = _help("longest trajectory kept, prompt + response tokens", default=1024)
    max_turn_tokens: int = _help("longest policy turn kept (tokens): the per-turn generation budget of RL and eval; "
                                 "a teacher turn longer than that teaches answers that never finish", default=64)
    few_shot: int = _help("worked examples in the prompt (0: the trained model plays zero-shot)", default=0)
