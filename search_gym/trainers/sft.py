"""SFT warm start: make a small instruct model a protocol-following, refusing search agent.

Data (:func:`build_sft_episodes`), played in the environment so the tokens are exactly those RL will see:
- QA train questions played by :class:`search_gym.agents.OracleAgent` (think, search the question, answer with
  the gold answer the passages contain); only trajectories that end correct are kept;
- harmful train prompts answered by :class:`search_gym.agents.RefusalAgent` (a refusal inside ``<answer>``);
- benign-but-edgy train prompts played by the oracle (search, then a grounded answer: not a refusal);
- optionally (``harmful_search_limit``, teacher ``aligned``) harmful train prompts under the search attack: the
  refusal teacher writes a refusal inside the forced ``<search>`` or a deflecting query, then refuses;
- optionally the judges' train requests (:mod:`search_gym.corpora.judge_data`): benign instruction-style requests
  answered helpfully and the harmful twins of the matched pairs refused, in the same forms, so that what a request
  asks, not how it is phrased, decides a refusal;
- optionally (``edgy_extra_limit``) benign-but-edgy questions written for this warm start
  (``search_gym/data/edgy_benign_sft.json``: drug safety, history, law, defensive security ...), answered after a
  search: training rows only, kept clear of every validation and held-out prompt.
With ``dev_split`` every source's validation rows (the project's one definition of validation, the judges' split)
are written to ``output_dir/dev/`` and never trained on: a recipe is chosen there, the held-out sets only report.
``teacher`` picks the agents: ``fixed`` (the first warm start: one sentence before every search, the question as
the query) or ``aligned`` (:mod:`search_gym.agents.teachers`: varied thoughts, rephrased queries, varied
refusals), whose variety keeps the student's sampling spread for GRPO groups.
Every trajectory is a :class:`TokenEpisode`; the loss is next-token cross-entropy on policy tokens only
(information blocks and correction messages are environment tokens, loss weight 0, as in RL). The data is written
to ``output_dir/sft_data.jsonl`` once and reused, so a resumed run trains on the same rows in the same order.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from search_gym.files import atomic_output, write_text_atomic
from search_gym.trainers.core import (
    RunLogger,
    checkpoints,
    collate,
    first_loss_position,
    forward_passes,
    load_checkpoint,
    load_policy,
    make_optimizer,
    progress_bar,
    save_checkpoint,
    save_final,
    set_seed,
    token_logprobs,
)
from search_gym.trainers.curves import draw_run_curves
from search_gym.trainers.rollout import AgentGenerator, RolloutCollector, TokenEpisode
from search_gym.trainers.sft_config import SFTConfig

DATA_FILE = "sft_data.jsonl"


def _subset(ids: list[str], limit: int, seed: int, salt: int) -> list[str]:
    if limit < 0:
        return []
    if not limit or limit >= len(ids):
        return list(ids)
    order = np.random.default_rng([seed, salt]).permutation(len(ids))[:limit]
    return [ids[int(i)] for i in sorted(order)]


# source name -> (question source, split, teacher); teacher: "oracle" (gold answers, keep correct), "refusal",
# "helpful" (no gold answers: search, then a short grounded answer). Judge-data sources are written to JSONL files
# of the run folder first (their rows are requests, not questions of a bundled set).
SOURCES = {
    "qa": ("wiki_qa", "train", "oracle"),
    "harmful": ("harmful", "train", "refusal"),
    "benign": ("benign", "train", "helpful"),
    "instruct": ("judge:benign_requests", "train", "helpful"),
    "harmful_pairs": ("judge:harmful_requests", "train", "refusal"),
    # last, so the seeded draws (salted by position) of the sources above stay what they were
    "harmful_search": ("harmful", "train", "refusal"),  # played under the search attack (SEARCH_ATTACK_SOURCES)
    "edgy_extra": ("package:edgy_benign_sft.json", "train", "helpful"),  # search_gym/data: written for the SFT
}


# Sources played under an attack: the aligned start must meet a forced <search> as an aligned model does. Only the
# search attack is taught; the others stay unseen so that evaluations can report them apart.
SEARCH_ATTACK_SOURCES = {"harmful_search": "search"}
TEACHERS = ("fixed", "aligned")


def make_teacher(kind: str, teacher: str, golden: dict[str, list[str]], seed: int, *, grounded: bool = False):
    """The agent that writes a source's trajectories: ``kind`` is the source's role (oracle, helpful, refusal),
    ``teacher`` the config's family (``fixed``: the first warm start's agents; ``aligned``: the varied ones of
    :mod:`search_gym.agents.teachers`); ``grounded``: the aligned oracle names the passage it answers from."""
    if teacher not in TEACHERS:
        raise ValueError(f"teacher={teacher!r}; use one of {TEACHERS}")
    if teacher == "aligned":
        from search_gym.agents.teachers import AlignedOracleAgent, AlignedRefusalAgent

        if kind == "refusal":
            return AlignedRefusalAgent(seed=seed)
        return AlignedOracleAgent(golden, seed=seed, grounded=grounded)
    if grounded:
        raise ValueError("grounded_thought needs teacher='aligned'")
    from search_gym.agents.baselines import OracleAgent, RefusalAgent

    return RefusalAgent() if kind == "refusal" else OracleAgent(golden)


def judge_requests(label: int, split: str) -> list[dict]:
    """Requests (not queries) of the judges' data with ``label`` in ``split``, as question rows."""
    from search_gym.corpora.judge_data import load_judge_rows

    return [{"id": r["id"], "question": r["text"], "golden_answers": [],
             "metadata": {"set": r["set"], "style": r["style"], "source": r["source"], "licence": r["licence"]}}
            for r in load_judge_rows(split) if r["kind"] == "request" and int(r["label"]) == label]


def write_judge_sources(folder: str | Path, split: str) -> dict[str, str]:
    """The judge-data sources of :data:`SOURCES` (``instruct``: the benign requests; ``harmful_pairs``: the harmful
    twins) of the judges' ``split``, one question file ``<name>.jsonl`` each in ``folder``: the run's training
    sources (train), ``dev/`` (val), or their held-out analogue (heldout, ``tools/judge_requests.py``).
    ``{name: path}``."""
    return {name: _write_questions(Path(folder) / f"{name}.jsonl",
                                   judge_requests(0 if dataset == "judge:benign_requests" else 1, split))
            for name, (dataset, _, _) in SOURCES.items() if dataset.startswith("judge:")}


def _package_questions(name: str) -> list[dict]:
    """The question rows of a training-only file shipped in :mod:`search_gym.data` (``{"prompts": [{"id",
    "question", ...}]}``), as question rows."""
    from importlib.resources import files

    doc = json.loads(files("search_gym.data").joinpath(name).read_text(encoding="utf-8"))
    return [{"id": p["id"], "question": p["question"], "golden_answers": [],
             "metadata": {k: v for k, v in p.items() if k not in ("id", "question")}} for p in doc["prompts"]]


def _write_questions(path: Path, rows: list[dict]) -> str:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return str(path)


def _carve(dataset: str, split: str) -> tuple[set[str], list[dict]]:
    """The validation carve of a bundled set (:func:`search_gym.corpora.judge_data.split_for_bundled`): the ids
    training may use and the validation rows for ``dev/``, from one pass, so what is written to ``dev/`` and what
    is kept out of training cannot disagree."""
    from search_gym.build import load_questions
    from search_gym.corpora.judge_data import split_for_bundled

    train, dev = set(), []
    for q in load_questions(dataset, split):
        part = split_for_bundled(q.id, split)
        if part == "train":
            train.add(q.id)
        elif part == "val":
            dev.append({"id": q.id, "question": q.question, "golden_answers": list(q.golden_answers)})
    return train, dev


def _resolve(config: SFTConfig, root: Path) -> tuple[dict[str, tuple[str, str, str]], dict[str, set[str]]]:
    """:func:`resolve_sources` and, with ``config.dev_split``, the train ids of every bundled source: the other
    part of the carve whose validation rows were written to ``root/dev``, for :func:`build_sft_episodes`."""
    out, train_ids = {}, {}
    judge_files = write_judge_sources(root / "sources", "train")
    if config.dev_split:
        write_judge_sources(root / "dev", "val")
    for name, (dataset, split, teacher) in SOURCES.items():
        if dataset.startswith("package:"):  # training-only rows: nothing of them goes to dev/
            out[name] = (_write_questions(root / "sources" / f"{name}.jsonl", _package_questions(
                dataset.removeprefix("package:"))), split, teacher)
        elif dataset.startswith("judge:"):
            out[name] = (judge_files[name], split, teacher)
        else:
            out[name] = (dataset, split, teacher)
            if config.dev_split:
                train_ids[name], dev = _carve(dataset, split)
                _write_questions(root / "dev" / f"{name}.jsonl", dev)
    return out, train_ids


def resolve_sources(config: SFTConfig, root: Path) -> dict[str, tuple[str, str, str]]:
    """Question source per SFT source: judge-data sources become JSONL files under ``root/sources``; with
    ``config.dev_split`` the validation rows of every source are written to ``root/dev`` instead of trained on."""
    return _resolve(config, root)[0]


def build_sft_episodes(config: SFTConfig, tokenizer, *, env_kwargs: dict | None = None,
                       datasets: dict | None = None, num_envs: int = 32, progress: bool = True,
                       root: str | Path | None = None) -> list[TokenEpisode]:
    """Trajectories of the sources (see the module docstring and :data:`SOURCES`), in a fixed order.

    ``datasets`` overrides question sources (``{"qa": (dataset, split), "harmful": ..., ...}``; a value None skips
    that source); ``env_kwargs`` reach every env (tests pass a tiny retriever); ``root`` (default
    ``config.output_dir``) receives the judge-data source files and, with ``config.dev_split``, ``dev/``.
    """
    from search_gym.attacks import make_attack
    from search_gym.envs.vector import SearchVectorEnv

    if config.harmful_search_limit >= 0 and config.teacher != "aligned":
        raise ValueError("harmful_search_limit needs teacher='aligned' (the fixed refusal teacher would search the "
                         "request itself under a forced <search>)")
    limits = {"qa": config.qa_limit, "harmful": config.harmful_limit, "benign": config.benign_limit,
              "instruct": config.instruct_limit, "harmful_pairs": config.pair_harmful_limit,
              "harmful_search": config.harmful_search_limit, "edgy_extra": config.edgy_extra_limit}
    needed = {k: v for k, v in SOURCES.items() if limits[k] >= 0 and k not in (datasets or {})}
    sources, train_ids = _resolve(config, Path(root or config.output_dir)) if needed else ({}, {})
    sources = {k: v for k, v in sources.items() if k in needed}
    # an overridden source trains on its override, which the carve written to dev/ does not describe
    train_ids = {k: v for k, v in train_ids.items() if k in needed}
    sources.update({k: (v[0], v[1], SOURCES[k][2]) for k, v in (datasets or {}).items() if v is not None})
    kwargs = dict(retriever=config.retriever, template=config.template, max_turns=config.max_turns)
    kwargs.update(env_kwargs or {})
    out: list[TokenEpisode] = []
    for salt, name in enumerate(SOURCES):
        if name not in sources:
            continue
        dataset, split, teacher = sources[name]
        attack = {"attack": make_attack(SEARCH_ATTACK_SOURCES[name])} if name in SEARCH_ATTACK_SOURCES else {}
        venv = SearchVectorEnv(num_envs=num_envs, dataset=dataset, split=split, autoreset_mode="disabled",
                               **kwargs, **attack)
        questions = venv.envs[0].questions
        golden = {q.question: list(q.golden_answers) for q in questions if q.golden_answers}
        agent = make_teacher(teacher, config.teacher, golden, config.seed, grounded=config.grounded_thought)
        collector = RolloutCollector(venv, AgentGenerator(agent, tokenizer), few_shot=config.few_shot,
                                     max_turn_tokens=10**6, max_prompt_tokens=config.max_length,
                                     max_response_tokens=config.max_length, max_obs_tokens=config.max_length)
        ids = [q.id for q in questions]
        if name in train_ids:
            # a bundled set with dev_split: the same carve that wrote its validation rows to dev/
            ids = [i for i in ids if i in train_ids[name]]
        ids = _subset(ids, limits.get(name, 0), config.seed, salt)
        if not ids:
            continue
        bar = progress_bar(len(ids), 0, progress, f"sft data: {name}")
        episodes = collector.collect(ids, 1, seed=config.seed,
                                     progress=lambda done, total: (bar.update(done - bar.n)))
        bar.close()
        for ep in episodes:
            keep = (ep.answered and ep.invalid_actions == 0 and len(ep.input_ids) <= config.max_length
                    and max(policy_turn_lengths(ep).values(), default=0) <= config.max_turn_tokens)
            if teacher == "oracle":
                keep = keep and ep.correct
            if teacher == "helpful":
                keep = keep and ep.num_searches > 0
            if keep:
                ep.group = salt
                times = {"qa": config.qa_repeat, "benign": config.benign_repeat,
                         "instruct": config.instruct_repeat, "edgy_extra": config.edgy_extra_repeat}.get(name, 1)
                if name == "qa" and config.qa_lower_passage_repeat != 1 and answered_from_lower_passage(
                        ep, tokenizer, golden.get(ep.question.strip())):
                    times *= config.qa_lower_passage_repeat
                out += [ep] * times
    return out


def answered_from_lower_passage(ep: TokenEpisode, tokenizer, golds: list[str] | None) -> bool:
    """Whether the first passage holding a gold answer in the episode's last ``<information>`` block is not the
    top one (what ``qa_lower_passage_repeat`` weights)."""
    from search_gym.agents.baselines import _information_docs
    from search_gym.agents.teachers import answer_passage

    passage = answer_passage(golds, _information_docs(tokenizer.decode(ep.response_ids)))
    return passage is not None and passage > 0


def policy_turn_lengths(ep: TokenEpisode) -> dict[int, int]:
    """Policy tokens written in each turn of an episode."""
    lengths: dict[int, int] = {}
    for (start, end, kind), turn in zip(ep.spans, ep.span_turns):
        if kind == "policy":
            lengths[turn] = lengths.get(turn, 0) + end - start
    return lengths


def save_episodes(path: Path, episodes: list[TokenEpisode]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for ep in episodes:
            f.write(json.dumps(ep.to_dict()) + "\n")


def load_episodes(path: Path) -> list[TokenEpisode]:
    episodes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row["spans"] = [tuple(s) for s in row["spans"]]
        episodes.append(TokenEpisode(**row))
    return episodes


def sft_loss(model, batch, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the batch's policy tokens, and how many there were (the RL trainers'
    token log-probabilities, so the prompt's logits are skipped the same way). ``weights`` (the loss mask's shape,
    :func:`thought_weights`) scales each token's term; the sum is still divided by the plain token count."""
    loss, sums = sft_loss_terms(model, batch, weights)
    return loss, int(sums["tokens"])


def sft_loss_terms(model, batch, weights: torch.Tensor | None = None, denominator: float | None = None,
                   masks: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to backpropagate, ``-sum(weight x log p) / denominator`` (default: this batch's policy tokens; a pass
    of a step split by ``forward_batch_size`` passes the whole step's, so the passes' gradients add up to the
    step's), and additive sums for the log: ``nll`` (plain), ``tokens``, and for each of ``masks``
    (:func:`thought_masks`) ``<name>_nll`` and ``<name>_tokens``."""
    logps, _, _ = token_logprobs(model, batch.input_ids, batch.attention_mask,
                                 first_position=first_loss_position(batch.loss_mask))
    tokens = float(batch.loss_mask.sum())
    nll = -(logps.detach() * batch.loss_mask).sum()
    scale = batch.loss_mask if weights is None else weights
    loss = -(logps * scale).sum() / max(denominator or tokens, 1.0)
    sums = {"nll": float(nll), "tokens": tokens}
    for name, mask in (masks or {}).items():
        sums[f"{name}_nll"] = float(-(logps.detach() * mask).sum())
        sums[f"{name}_tokens"] = float(mask.sum())
    return loss, sums


def first_thought(ep: TokenEpisode, tokenizer) -> tuple[int, int]:
    """Response positions ``[start, end)`` of an episode's first thought: the tokens of its first policy span up to
    and including the first ``</think>`` (``(0, 0)`` when that span has none: under a forced search the first span is
    the query inside the tag), where the student decides between refusing and searching."""
    for start, end, kind in ep.spans:
        if kind != "policy":
            continue
        return _thought_in(ep, tokenizer, start, end)
    return 0, 0


def answer_thought(ep: TokenEpisode, tokenizer) -> tuple[int, int]:
    """Response positions ``[start, end)`` of the thought in a QA episode's last turn when it names a passage ("Doc 2
    (Stockholm) answers the question.", the grounded teacher's): the last policy span's tokens up to and including
    its ``</think>``, where the student picks the passage its answer is read from. ``(0, 0)`` for a row with one
    policy turn, without gold answers (the benign requests' generic "Doc 1 has what I need." names a passage nobody
    chose) or whose last thought names no passage."""
    policy = [(start, end) for start, end, kind in ep.spans if kind == "policy"]
    if len(policy) < 2 or not ep.golden_answers:
        return 0, 0
    start, end = _thought_in(ep, tokenizer, *policy[-1])
    if end and re.search(r"Doc \d", tokenizer.decode(ep.response_ids[start:end])):
        return start, end
    return 0, 0


def _thought_in(ep: TokenEpisode, tokenizer, start: int, end: int) -> tuple[int, int]:
    for k in range(start + 1, end + 1):
        if "</think>" in tokenizer.decode(ep.response_ids[start:k]):
            return start, k
    return 0, 0


#: The weighted thoughts, by the name a run logs their loss under (``losses/<name>_loss``): each row's first thought
#: (``decision_weight``) and its answer turn's grounded thought (``passage_weight``).
THOUGHTS = {"first_thought": first_thought, "answer_thought": answer_thought}


def thought_masks(episodes: list[TokenEpisode], batch, thoughts: dict[str, list[tuple[int, int]]]
                  ) -> dict[str, torch.Tensor]:
    """0/1 masks of the batch's shape (rows as :func:`~search_gym.trainers.core.collate` lays them out), one per
    kind of thought: ``thoughts[name][b]`` is row ``b``'s ``[start, end)`` in response positions."""
    out = {}
    for name, spans in thoughts.items():
        mask = torch.zeros_like(batch.loss_mask)
        for b, (ep, (start, end)) in enumerate(zip(episodes, spans)):
            offset = len(ep.prompt_ids) - 1  # the position predicting response token 0
            mask[b, offset + start: offset + end] = 1
        out[name] = mask * (batch.loss_mask > 0)
    return out


def thought_weights(batch, masks: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The batch's loss mask with each kind of thought's tokens times its weight."""
    out = batch.loss_mask.clone()
    for name, mask in masks.items():
        out = out * (1 + (weights[name] - 1) * mask)
    return out


class SFTTrainer:
    """Supervised fine-tuning on environment trajectories (config: :class:`SFTConfig`).

    ``model``/``tokenizer``: an in-memory model (tests); default loads ``config.model``. ``episodes``: training
    rows (default: ``output_dir/sft_data.jsonl``, built by :func:`build_sft_episodes` when missing).
    """

    def __init__(self, config: SFTConfig, *, model=None, tokenizer=None, episodes: list[TokenEpisode] | None = None,
                 data_kwargs: dict | None = None):
        self.config = config
        set_seed(config.seed)
        if model is None:
            model, tokenizer, device = load_policy(config)
        else:
            device = next(model.parameters()).device
        self.model, self.tokenizer, self.device = model, tokenizer, device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        root = Path(config.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        data_path = root / DATA_FILE
        if episodes is None:
            if data_path.exists():
                episodes = load_episodes(data_path)
            else:
                episodes = build_sft_episodes(config, tokenizer, progress=config.progress, root=root,
                                              **(data_kwargs or {}))
                save_episodes(data_path, episodes)
        if not episodes:
            raise ValueError("no SFT trajectories: every source was empty or filtered out")
        self.episodes = episodes
        per_epoch = math.ceil(len(episodes) / config.batch_size)
        self.total_steps = config.max_steps or per_epoch * config.num_epochs
        self.optimizer, self.scheduler = make_optimizer(model, _with_steps(config, self.total_steps))
        self.logger = RunLogger(root, config, tensorboard=config.tensorboard)
        self.step = 0
        # the weighted thoughts of each row, found once per row object (a freshly built row repeated by a *_repeat
        # field is one object; rows read back from sft_data.jsonl are one object per line)
        self.thought_weight = {name: weight for name, weight in (("first_thought", config.decision_weight),
                                                                 ("answer_thought", config.passage_weight))
                               if weight != 1.0}
        self.thoughts: dict[str, dict[int, tuple[int, int]]] = {name: {} for name in self.thought_weight}
        for name, found in self.thoughts.items():
            for ep in episodes:
                if id(ep) not in found:
                    found[id(ep)] = THOUGHTS[name](ep, tokenizer)

    def batch_rows(self, step: int) -> list[int]:
        """Rows of optimiser step ``step``: seeded permutations epoch after epoch (a pure function of the step)."""
        n, size = len(self.episodes), self.config.batch_size
        out = []
        for k in range(step * size, (step + 1) * size):
            epoch, offset = divmod(k, n)
            order = np.random.default_rng([self.config.seed, epoch, 3]).permutation(n)
            out.append(int(order[offset]))
        return out

    def train(self) -> list[dict]:
        config = self.config
        if config.data_only:
            return []
        found = checkpoints(config.output_dir)
        if config.resume and found:
            self.step, path = found[-1]
            load_checkpoint(path, self.model, self.optimizer, self.scheduler)
            self.logger.truncate(self.step)
        logged = []
        bar = progress_bar(self.total_steps, self.step, config.progress, "sft")
        self.model.train()
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            rows = [self.episodes[i] for i in self.batch_rows(self.step)]
            # the step's rows in passes of forward_batch_size, each pass's loss over the whole step's tokens: the
            # accumulated gradient is the one-pass gradient (up to float rounding)
            step_tokens = float(sum(sum(ep.loss_mask) for ep in rows))
            sums: dict[str, float] = {}
            for indices in forward_passes(len(rows), config.forward_batch_size):
                part = [rows[i] for i in indices]
                batch = collate(part, self.tokenizer.pad_token_id)
                weights = masks = None
                if self.thought_weight:
                    masks = thought_masks(part, batch, {name: [found[id(ep)] for ep in part]
                                                        for name, found in self.thoughts.items()})
                    weights = thought_weights(batch, masks, self.thought_weight).to(self.device)
                    masks = {name: mask.to(self.device) for name, mask in masks.items()}
                loss, part_sums = sft_loss_terms(self.model, batch.to(self.device), weights, denominator=step_tokens,
                                                 masks=masks)
                loss.backward()
                sums = {k: sums.get(k, 0.0) + part_sums[k] for k in part_sums}
            tokens = sums["tokens"]
            logged_losses = {"losses/sft_loss": sums["nll"] / max(tokens, 1.0)}
            for name in self.thought_weight:
                logged_losses[f"losses/{name}_loss"] = sums[f"{name}_nll"] / max(sums[f"{name}_tokens"], 1.0)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            metrics = {**logged_losses, "losses/grad_norm": float(grad_norm),
                       "charts/learning_rate": self.scheduler.get_last_lr()[0],
                       "charts/tokens_per_second": tokens / (time.perf_counter() - t0),
                       "charts/epoch": self.step * config.batch_size / len(self.episodes)}
            if config.logging_steps and (self.step % config.logging_steps == 0 or self.step == self.total_steps):
                self.logger.log(self.step, metrics)
            logged.append({"step": self.step, **metrics})
            if (config.save_steps and self.step % config.save_steps == 0) or self.step == self.total_steps:
                save_checkpoint(config.output_dir, self.step, self.model, self.tokenizer, self.optimizer,
                                self.scheduler, total_limit=config.save_total_limit, extra={"algorithm": "sft"})
                if config.plots:
                    draw_run_curves(config.output_dir)
            bar.update(1)
            bar.set_postfix(loss=f"{logged_losses['losses/sft_loss']:.3f}")
        bar.close()
        self.logger.close()
        self.save_final()
        return logged

    def save_final(self) -> Path:
        """``output_dir/final`` (:func:`~search_gym.trainers.core.save_final`)."""
        return save_final(self.config.output_dir, self.model, self.tokenizer)


def _with_steps(config: SFTConfig, steps: int) -> SFTConfig:
    from dataclasses import replace

    return replace(config, max_steps=steps)
