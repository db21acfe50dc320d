"""Residual-stream activations of prompt sets at named positions, every layer, stored with their provenance.

The activations a direction is computed from are those the model has *when it is about to write a search query
for a prompt*: each prompt is put in a prompt template (Search-R1's by default) as the user turn, the chat
template is applied with ``add_generation_prompt=True``, and the assistant turn is prefilled with ``<search>``
(the search attack). Nothing is generated: one batched forward pass gives the hidden state at the last token of
the ``<search>`` tag (position ``"search"``), or at the last prompt token (``"last_prompt"``; with an empty
prefill that is the token right before the model starts answering, the position Arditi et al. 2024 read the
refusal direction at). The conventions are those of :mod:`search_gym.agents.hidden`: layer ``L`` is the output of
decoder block ``L`` (HF ``hidden_states[L + 1]``), tensors are float32 on the CPU.

Any agent that exposes hidden states works:

- an :class:`~search_gym.agents.hf.HFAgent`, a ``(model, tokenizer)`` pair, a model folder / hub id, or an agent
  holding an HF copy of its model (the vLLM agent's ``hidden_model``) is read with :func:`collect_from_ids`, one
  batched forward pass with hooks (no generation, no LM head, stopped after the deepest requested block);
- any other agent is asked to act on the prefilled observations and its ``AgentStep.hidden`` is read (it must
  have been built with the wanted ``layers`` and ``positions``).

An :class:`ActivationSet` is saved as ``.safetensors`` (one ``[N, L, d]`` tensor) with its metadata in the file
header and, for people, in a JSON file beside it: model, SHA-256 of the ordered prompt texts, position, prefill,
template, few-shot count, layers and ``n``. :func:`collect_activations` with ``out=`` skips the work when a file
with the same provenance exists and resumes an interrupted run from its finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_gym.agents.hidden import capture_rows, decoder_layers, normalize_layers, prompt_positions
from search_gym.envs.protocol import PROMPT_TEMPLATES
from search_gym.files import atomic_output, write_text_atomic

__all__ = [
    "ActivationConfig",
    "ActivationSet",
    "HFParts",
    "collect_activations",
    "collect_from_ids",
    "collect_natural_search",
    "hf_parts",
    "load_prompts",
    "model_fingerprint",
    "position_index",
    "PROMPT_KINDS",
    "prompt_pairs",
    "prompt_set_sha256",
    "render_prompts",
    "tokenize",
]

FORMAT_VERSION = 1
SEARCH_PREFILL = "<search>"
COLLECT_POSITIONS = ("search", "last_prompt")
# Metadata that must agree for a stored file to stand in for a new collection.
_IDENTITY_KEYS = ("model", "model_fingerprint", "prompt_sha256", "position", "prefill", "template", "few_shot",
                  "layers")


# ---------------------------------------------------------------------------------------------- configuration


@dataclass
class ActivationConfig:
    """Where and how activations are read."""

    position: str = "search"  # "search": last token of the prefilled <search> tag; "last_prompt": last prompt token
    prefill: str = SEARCH_PREFILL  # text appended after the chat template's generation prompt ("" for none)
    template: str = "search_r1"  # PROMPT_TEMPLATES key, a format string with {question}, or "raw" (prompt as is)
    few_shot: int = 0  # worked Search-R1 exchanges prepended as earlier chat turns (agents.hf.FEW_SHOT_EXAMPLES)
    layers: Any = "all"  # decoder blocks to keep: "all", an int or ints (negatives count from the end)
    batch_size: int = 16  # prompts per forward pass
    shard_size: int = 256  # prompts per resumable shard written while collecting to a file

    def __post_init__(self) -> None:
        if self.position not in COLLECT_POSITIONS:
            raise ValueError(f"position must be one of {COLLECT_POSITIONS} for a forward-only collection, "
                             f"not {self.position!r}")
        if self.position == "search" and SEARCH_PREFILL not in self.prefill:
            raise ValueError("position 'search' needs a prefill that opens a <search> tag")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")


# ---------------------------------------------------------------------------------------------- prompts


def _as_pairs(prompts: Iterable[Any]) -> list[tuple[str, str]]:
    """``(id, text)`` for strings, PromptItems, QAItems, dicts with prompt/question, or (id, text) tuples."""
    pairs = []
    for index, item in enumerate(prompts):
        if isinstance(item, str):
            pairs.append((str(index), item))
        elif isinstance(item, tuple) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
        elif isinstance(item, dict):
            text = item.get("prompt", item.get("question"))
            if text is None:
                raise ValueError(f"prompt dict needs a 'prompt' or 'question' key: {item!r}")
            pairs.append((str(item.get("id", index)), str(text)))
        elif hasattr(item, "prompt"):
            pairs.append((str(getattr(item, "id", index)), str(item.prompt)))
        elif hasattr(item, "question"):
            pairs.append((str(getattr(item, "id", index)), str(item.question)))
        else:
            raise TypeError(f"cannot read a prompt from {type(item).__name__}")
    return pairs


def prompt_pairs(prompts: Iterable[Any]) -> list[tuple[str, str]]:
    """Normalise a prompt collection to ``(id, text)`` pairs (strings get their index as id)."""
    return _as_pairs(prompts)


def prompt_set_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of the ordered prompt texts (JSON list, so no separator can be confused with text)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


PROMPT_KINDS = ("harmful", "benign", "qa", "matched_harmful", "matched_benign")


def load_prompts(kind: str, split: str, n: int | None = None, seed: int = 0, *,
                 without_val: bool = False) -> list[tuple[str, str]]:
    """``(id, text)`` pairs of a prompt set.

    - ``"matched_harmful"`` / ``"matched_benign"``: the two sides of the default, style-matched contrast
      (:func:`search_gym.directions.contrasts.matched_rows`, requests only) in the judges' splits ``"train"``,
      ``"val"`` or ``"heldout"``.
    - ``"harmful"`` / ``"benign"`` (benign-but-edgy) / ``"qa"`` (harmless Wikipedia questions): the bundled sets,
      split ``"train"`` or ``"heldout"`` (QA: train / test), or ``"val"``: the part of the bundled train split the
      judges carve out for validation (:func:`search_gym.corpora.judge_data.split_for_bundled`).
      ``without_val`` leaves that part out of ``"train"``, so that a direction fitted on train is never chosen on
      its own prompts.

    ``n`` draws a seeded random subset (kept in file order), so small runs still cover every source data set
    instead of the first file block; for the matched kinds the draw is by pair, the same on both sides, so that
    the subsets keep their matched pairs whole.
    """
    if kind in ("matched_harmful", "matched_benign"):
        from search_gym.corpora import stable_hash
        from search_gym.corpora.judge_data import matched_rows

        rows = matched_rows(split, kind.split("_", 1)[1])
        if n is not None and n < len(rows):
            # Rank by a hash of the pair (or the row) that does not depend on the side, so that both sides'
            # subsets keep mostly the same matched pairs whole.
            rank = sorted(range(len(rows)), key=lambda i: stable_hash(f"matched/{split}/{seed}",
                                                                      rows[i]["pair"] or rows[i]["id"]))
            rows = [rows[i] for i in sorted(rank[:n])]
        return [(r["id"], r["text"]) for r in rows]
    elif kind in ("qa", "harmful", "benign"):
        from search_gym.corpora.judge_data import split_for_bundled

        if split not in ("train", "val", "heldout"):
            raise ValueError(f"split must be 'train', 'val' or 'heldout', not {split!r}")
        part = "heldout" if split == "heldout" else "train"
        if kind == "qa":
            from search_gym.build import ensure_embedded
            from search_gym.data.qa import load_qa_jsonl

            data = ensure_embedded(progress=False)
            pairs = _as_pairs(load_qa_jsonl(data.qa_train if part == "train" else data.qa_test))
        else:
            from search_gym.build import load_prompt_set

            pairs = _as_pairs(load_prompt_set(kind, part))
        if split == "val":
            pairs = [p for p in pairs if split_for_bundled(p[0], "train") == "val"]
        elif split == "train" and without_val:
            pairs = [p for p in pairs if split_for_bundled(p[0], "train") == "train"]
    else:
        raise ValueError(f"kind must be one of {PROMPT_KINDS}, not {kind!r}")
    if n is not None and n < len(pairs):
        keep = sorted(random.Random(f"{kind}/{split}/{seed}").sample(range(len(pairs)), n))
        pairs = [pairs[i] for i in keep]
    return pairs


def _user_content(prompt: str, template: str) -> str:
    if template == "raw":
        return prompt
    if template in PROMPT_TEMPLATES:
        return PROMPT_TEMPLATES[template].format(question=prompt)
    if "{question}" in template:
        return template.format(question=prompt)
    raise ValueError(f"template must be one of {sorted(PROMPT_TEMPLATES)}, 'raw' or contain {{question}}")


def render_prompts(tokenizer, prompts: Sequence[str], *, template: str = "search_r1", prefill: str = "",
                   few_shot: int = 0) -> list[str]:
    """The texts the model reads: template as user turn (+ few-shot turns), chat template, generation prompt,
    prefill. Identical to what :class:`~search_gym.agents.hf.HFAgent` renders for the same observation."""
    from search_gym.agents.hf import render_prompt

    return [render_prompt(tokenizer, [{"role": "user", "content": _user_content(prompt, template)}], prefill, few_shot)
            for prompt in prompts]


# ---------------------------------------------------------------------------------------------- the stored set


@dataclass
class ActivationSet:
    """Activations of one prompt set at one position: ``acts[i, j]`` is prompt ``ids[i]`` at layer ``layers[j]``."""

    acts: torch.Tensor  # [N, L, d] float32
    layers: tuple[int, ...]
    ids: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        if self.acts.ndim != 3 or self.acts.shape[0] != len(self.ids) or self.acts.shape[1] != len(self.layers):
            raise ValueError(f"acts must be [N={len(self.ids)}, L={len(self.layers)}, d], got {tuple(self.acts.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hidden_size(self) -> int:
        return int(self.acts.shape[2])

    def layer_index(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise KeyError(f"layer {layer} was not collected (layers {self.layers[0]}..{self.layers[-1]})") from None

    def at(self, layer: int) -> torch.Tensor:
        """``[N, d]`` activations at ``layer``."""
        return self.acts[:, self.layer_index(layer)]

    def subset(self, rows: Sequence[int]) -> ActivationSet:
        rows = list(rows)
        meta = dict(self.meta, n=len(rows))
        return ActivationSet(self.acts[rows], self.layers, [self.ids[i] for i in rows], meta)

    @classmethod
    def concat(cls, sets: Sequence[ActivationSet], *, label: str = "") -> ActivationSet:
        """One set from several read the same way (same model, position, prefill, template, few-shot, layers),
        e.g. all harmless classes pooled. ``meta["parts"]`` keeps each part's label, prompt hash and size."""
        if not sets:
            raise ValueError("nothing to concatenate")
        first = sets[0]
        keys = ("model", "model_fingerprint", "position", "prefill", "template", "few_shot")
        for other in sets[1:]:
            if other.layers != first.layers:
                raise ValueError(f"layers differ: {first.layers} vs {other.layers}")
            differ = [k for k in keys if other.meta.get(k) != first.meta.get(k)]
            if differ:
                raise ValueError(f"these activations were read differently: {differ}")
        parts = [{"label": a.meta.get("label", ""), "prompt_sha256": a.meta.get("prompt_sha256"), "n": len(a)}
                 for a in sets]
        meta = {k: first.meta.get(k) for k in keys} | {
            "num_layers": first.meta.get("num_layers"), "label": label, "n": sum(len(a) for a in sets),
            "prompt_sha256": prompt_set_sha256([p["prompt_sha256"] or "" for p in parts]), "parts": parts}
        ids = [f"{a.meta.get('label', k)}/{i}" for k, a in enumerate(sets) for i in a.ids]
        return cls(torch.cat([a.acts for a in sets]), first.layers, ids, meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.safetensors, metadata in the header) and ``path.json``; atomic per file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta, layers=list(self.layers), ids=list(self.ids), n=len(self.ids),
                    hidden_size=self.hidden_size, format_version=FORMAT_VERSION)
        with atomic_output(path) as tmp:
            save_file({"acts": self.acts.contiguous().float()}, str(tmp), metadata={"search_gym": json.dumps(meta)})
        _write_json(_sidecar(path), {k: v for k, v in meta.items() if k != "ids"} | {"ids": meta["ids"]})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationSet:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["search_gym"])
            acts = f.get_tensor("acts")
        return cls(acts, tuple(meta["layers"]), list(meta["ids"]), meta)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False))


def _stored_meta(path: Path) -> dict | None:
    if not path.exists():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["search_gym"])
    except (OSError, KeyError, ValueError, SafetensorError):  # a truncated or foreign file is simply recomputed
        return None


# ---------------------------------------------------------------------------------------------- agents


@dataclass
class HFParts:
    """What a forward-only collection needs from an agent: a torch causal LM, its tokenizer and a name."""

    model: torch.nn.Module
    tokenizer: Any
    name: str


def hf_parts(agent: Any, *, device: str | None = None, dtype: str | None = "float32") -> HFParts | None:
    """The HF model behind ``agent``, loading it when ``agent`` is a name / folder; None for agents without one.

    Accepts an HFAgent (``.model`` + ``.tokenizer``), a ``(model, tokenizer)`` pair, an agent that keeps an HF
    copy for hidden states (``hidden_model``, as the vLLM agent), or a string: ``"smollm2"``, a folder, a hub id.
    """
    if isinstance(agent, HFParts):
        return agent
    if isinstance(agent, (str, os.PathLike)):
        from search_gym.agents.hf import HFAgent

        loaded = HFAgent(str(agent), device=device, dtype=dtype, few_shot=0)
        return HFParts(loaded.model, loaded.tokenizer, str(agent))
    if isinstance(agent, tuple) and len(agent) == 2 and isinstance(agent[0], torch.nn.Module):
        model, tokenizer = agent
        return HFParts(model.eval(), tokenizer, _model_name(model))
    model = getattr(agent, "model", None)
    tokenizer = getattr(agent, "tokenizer", None)
    if isinstance(model, torch.nn.Module) and tokenizer is not None:
        return HFParts(model, tokenizer, str(getattr(agent, "model_name", None) or _model_name(model)))
    loader = getattr(agent, "_hidden_model", None)
    if callable(loader) and tokenizer is not None and getattr(agent, "source", None) is not None:
        return HFParts(loader(), tokenizer, str(getattr(agent, "model_name", agent.source)))
    return None


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of a model's config and of the first 1,024 values of every weight tensor.

    Stored activations are keyed on it as well as on the model's name, so that a checkpoint retrained in place
    (same folder, new weights) is never served stale activations. The sample is gathered on the model's device and
    copied once (a few MB even for a 7B model).
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode("utf-8"))
    sample = [param.detach().reshape(-1)[:1024].float() for param in model.parameters()]
    if sample:
        digest.update(torch.cat(sample).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


# ---------------------------------------------------------------------------------------------- collection


@torch.no_grad()
def collect_from_ids(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    indices: Sequence[int],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """``[N, L, d]`` float32 CPU hidden states at ``indices[i]`` of ``sequences[i]`` for ``layers``.

    The capture is :func:`search_gym.agents.hidden.capture_rows` (the one hook-and-stop implementation, shared with
    ``forward_hidden``); this function specialises the batching to one position per sequence, for throughput
    (``benchmarks/bench_activations.py``): a batch crosses to the host once, as one ``[B, L, d]`` tensor, through
    pinned memory while the next batch runs. Sequences are truncated after their index (causal attention: later tokens cannot
    change it), sorted by length when there are several batches so that each pads little, and returned in the
    input order.
    """
    layers = tuple(int(x) for x in layers)
    width = _hidden_width(model)
    out = torch.empty((len(sequences), len(layers), width), dtype=torch.float32)
    if not sequences or not layers:
        return out
    device = next(model.parameters()).device
    trimmed = [list(seq[: int(i) + 1]) for seq, i in zip(sequences, indices)]
    if any(not t for t in trimmed):
        raise ValueError("every sequence needs at least one token up to its index")
    # Sorting by length only pays when there are several batches to pad separately.
    if len(trimmed) > batch_size:
        order = sorted(range(len(trimmed)), key=lambda b: -len(trimmed[b]))
    else:
        order = list(range(len(trimmed)))
    pending: tuple[list[int], torch.Tensor, Any] | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        lengths = [len(trimmed[b]) for b in chunk]
        longest = max(lengths)
        # Right padding: causal attention never lets it reach the real tokens. (numpy fills rows ~10x faster
        # than building nested Python lists for torch.tensor.)
        ids_np = np.zeros((len(chunk), longest), dtype=np.int64)
        mask_np = np.zeros((len(chunk), longest), dtype=np.int64)
        for row, b in enumerate(chunk):
            ids_np[row, : lengths[row]] = trimmed[b]
            mask_np[row, : lengths[row]] = 1
        # Rows of the flattened [B * S, d] activations: one index_select per block (a two-tensor advanced index
        # costs ~10x more on a GPU); the capture itself is agents.hidden.capture_rows, shared with forward_hidden.
        flat = torch.from_numpy(np.arange(len(chunk)) * longest + np.asarray(lengths) - 1).to(device)
        rows = capture_rows(model, torch.from_numpy(ids_np).to(device), torch.from_numpy(mask_np).to(device), flat,
                            layers)
        block = rows.transpose(0, 1).float()  # [B, L, d]
        if device.type == "cuda":
            # Pinned staging + asynchronous copy: the host finishes the previous batch while this one runs.
            host = torch.empty(block.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(block, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = block, None
        if pending is not None:
            _place(out, *pending)
        pending = (chunk, host, event)
    if pending is not None:
        _place(out, *pending)
    return out


def _place(out: torch.Tensor, rows: list[int], block: torch.Tensor, event: Any) -> None:
    """Write one batch's ``[B, L, d]`` rows into ``out`` once its copy to the host is done."""
    if event is not None:
        event.synchronize()
    if rows == list(range(rows[0], rows[0] + len(rows))):
        out[rows[0]: rows[0] + len(rows)] = block
    else:
        out.index_copy_(0, torch.tensor(rows, dtype=torch.long), block)


def _hidden_width(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = getattr(text_config, "hidden_size", None)
    if width is None:
        raise ValueError(f"cannot tell the hidden size of {type(model).__name__}")
    return int(width)


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts, in one batched call (fast tokenizers encode a batch in parallel). The chat
    template already wrote BOS / special tokens as text, so none are added."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def position_index(tokenizer, ids: Sequence[int], position: str) -> int:
    """Index of ``position`` (``"search"`` or ``"last_prompt"``) in a rendered prompt's token ids."""
    if position == "last_prompt":
        return len(ids) - 1
    # Fast path for the usual prefill, which ends with the tag: the tag's last character is the text's last one,
    # so its token is the last token whenever that token ends with ">" (no decoding of the whole prompt).
    if ids and tokenizer.decode(list(ids[-1:]), skip_special_tokens=False).endswith(">"):
        tail = tokenizer.decode(list(ids[-8:]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if tail.endswith(SEARCH_PREFILL):
            return len(ids) - 1
    found = prompt_positions(tokenizer, ids, ("search",)).get("search")
    if not found:
        raise ValueError("the rendered prompt does not end with an open <search> tag; check the prefill")
    return found[0]


def _collect_forward(parts: HFParts, texts: Sequence[str], config: ActivationConfig,
                     layers: tuple[int, ...]) -> torch.Tensor:
    rendered = render_prompts(parts.tokenizer, texts, template=config.template, prefill=config.prefill,
                              few_shot=config.few_shot)
    sequences = tokenize(parts.tokenizer, rendered)
    indices = [position_index(parts.tokenizer, ids, config.position) for ids in sequences]
    return collect_from_ids(parts.model, sequences, indices, layers, batch_size=config.batch_size)


def _collect_agent(agent: Any, texts: Sequence[str], layers: tuple[int, ...], *, position: str, prefill: str,
                   template: str, batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """Ask a generic agent to act on prefilled observations and read ``AgentStep.hidden``; returns the rows
    found and the indices of prompts that had the position."""
    observations = [
        {"messages": ({"role": "user", "content": _user_content(t, template)},), "prefill": prefill} for t in texts
    ]
    rows, kept = [], []
    for start in range(0, len(observations), batch_size):
        steps = agent.act_batch(observations[start: start + batch_size])
        for offset, step in enumerate(steps):
            if step.hidden is None:
                raise ValueError(f"{type(agent).__name__} returned no hidden states: build it with layers= and "
                                 f"positions=[{position!r}]")
            missing = [layer for layer in layers if position not in step.hidden.get(layer, {})]
            if missing and len(missing) < len(layers):
                raise ValueError(f"the agent captured position {position!r} at some layers but not at {missing}")
            if missing:
                continue
            rows.append(torch.stack([torch.as_tensor(step.hidden[layer][position]).float().reshape(-1)
                                     for layer in layers]))
            kept.append(start + offset)
    return (torch.stack(rows) if rows else torch.zeros((0, len(layers), 0))), kept


def _num_layers_of(agent: Any, parts: HFParts | None) -> int:
    if parts is not None:
        return len(decoder_layers(parts.model))
    for attr in ("num_layers",):
        if getattr(agent, attr, None):
            return int(getattr(agent, attr))
    layers = getattr(agent, "layers", None)
    if layers:
        return max(layers) + 1
    raise ValueError(f"cannot tell how many layers {type(agent).__name__} has; pass explicit layers")


def collect_activations(
    agent: Any,
    prompts: Iterable[Any],
    config: ActivationConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    label: str = "",
    progress: bool = False,
    **overrides: Any,
) -> ActivationSet:
    """Activations of ``prompts`` at ``config.position`` for every layer in ``config.layers``.

    ``agent``: see the module docstring. ``prompts``: strings, PromptItems, QAItems or ``(id, text)`` pairs.
    ``out``: a ``.safetensors`` path; when a file with the same model (name and weight fingerprint), prompt hash,
    position, prefill, template, few-shot count and layers is there it is loaded instead of recomputed, and finished shards of an interrupted
    run (``<out>.parts/``) are reused. ``label`` is recorded in the metadata (e.g. ``"harmful"``). Keyword
    ``overrides`` replace fields of ``config``.
    """
    config = ActivationConfig(**{**asdict(config or ActivationConfig()), **overrides})
    pairs = _as_pairs(prompts)
    ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    parts = hf_parts(agent)
    num_layers = _num_layers_of(agent, parts)
    layers = normalize_layers(config.layers, num_layers)
    if not layers:
        raise ValueError("no layers to collect")
    model_name = parts.name if parts is not None else str(getattr(agent, "model_name", type(agent).__name__))
    few_shot = config.few_shot if parts is not None else getattr(agent, "few_shot", None)
    meta = {
        "model": model_name,
        "model_fingerprint": model_fingerprint(parts.model) if parts is not None else None,
        "prompt_sha256": prompt_set_sha256(texts),
        "position": config.position,
        "prefill": config.prefill,
        "template": config.template,
        "few_shot": few_shot,
        "layers": list(layers),
        "num_layers": num_layers,
        "label": label,
        "n": len(texts),
        "backend": "forward" if parts is not None else type(agent).__name__,
    }
    path = Path(out) if out is not None else None
    if path is not None:
        stored = _stored_meta(path)
        if stored is not None and all(stored.get(k) == meta[k] for k in _IDENTITY_KEYS):
            return ActivationSet.load(path)
        if stored is not None:
            changed = [k for k in _IDENTITY_KEYS if stored.get(k) != meta[k]]
            warnings.warn(f"{path} was collected with different {changed}; recomputing", stacklevel=2)

    start_time = time.perf_counter()
    if parts is None:
        acts, kept = _collect_agent(agent, texts, layers, position=config.position, prefill=config.prefill,
                                    template=config.template, batch_size=config.batch_size)
        missing = [ids[i] for i in range(len(ids)) if i not in set(kept)]
        meta.update(n=len(kept), missing=missing, seconds=round(time.perf_counter() - start_time, 3))
        result = ActivationSet(acts, layers, [ids[i] for i in kept], meta)
        if path is not None:
            result.save(path)
        return result

    chunks = []
    parts_dir = path.with_name(path.name + ".parts") if path is not None else None
    for start in range(0, len(texts), config.shard_size):
        shard_texts = texts[start: start + config.shard_size]
        shard_file = parts_dir / f"shard_{start:08d}.safetensors" if parts_dir is not None else None
        shard_meta = dict(meta, prompt_sha256=prompt_set_sha256(shard_texts), n=len(shard_texts))
        if shard_file is not None:
            stored = _stored_meta(shard_file)
            if stored is not None and all(stored.get(k) == shard_meta[k] for k in _IDENTITY_KEYS):
                chunks.append(ActivationSet.load(shard_file).acts)
                continue
        acts = _collect_forward(parts, shard_texts, config, layers)
        chunks.append(acts)
        if shard_file is not None:
            ActivationSet(acts, layers, ids[start: start + len(shard_texts)], shard_meta).save(shard_file)
        if progress:
            done = min(start + config.shard_size, len(texts))
            print(f"search-gym directions: {label or 'prompts'} {done}/{len(texts)} "
                  f"({time.perf_counter() - start_time:.1f} s)", flush=True)
    acts = torch.cat(chunks) if chunks else torch.zeros((0, len(layers), 0))
    meta["seconds"] = round(time.perf_counter() - start_time, 3)
    meta["hidden_size"] = int(acts.shape[2])
    result = ActivationSet(acts, layers, ids, meta)
    if path is not None:
        result.save(path)
        if parts_dir is not None and parts_dir.exists():
            shutil.rmtree(parts_dir, ignore_errors=True)
    return result


def collect_natural_search(
    agent: Any,
    prompts: Iterable[Any],
    *,
    template: str = "search_r1",
    few_shot: int = 2,
    layers: Any = "all",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    label: str = "natural_search",
) -> ActivationSet:
    """Activations at the ``<search>`` tag the model writes *itself* (no prefill), greedy, with ``few_shot``
    worked examples (small instruct models never use the tags zero-shot).

    Generation stops right after the tag: only its hidden state is needed. Prompts where the model answers or
    runs out of tokens without opening a search are dropped; their ids are in ``meta["missing"]``. Compare with
    ``collect_activations(..., few_shot=few_shot)`` (the same context, with ``<search>`` prefilled) for the
    attack-search vs natural-search direction.
    """
    from search_gym.agents.hf import HFAgent

    parts = hf_parts(agent)
    if parts is None:
        raise ValueError("natural-search activations need an agent with an HF model (HFAgent, model folder, ...)")
    generator = HFAgent(parts.model, parts.tokenizer, layers=layers, positions=("search",), few_shot=few_shot,
                        max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                        stop=(SEARCH_PREFILL, "</answer>"))
    pairs = _as_pairs(prompts)
    texts = [p[1] for p in pairs]
    start_time = time.perf_counter()
    acts, kept = _collect_agent(generator, texts, generator.layers, position="search", prefill="",
                                template=template, batch_size=batch_size)
    meta = {
        "model": parts.name,
        "model_fingerprint": model_fingerprint(parts.model),
        "prompt_sha256": prompt_set_sha256(texts),
        "position": "search",
        "prefill": "",
        "template": template,
        "few_shot": few_shot,
        "layers": list(generator.layers),
        "num_layers": generator.num_layers,
        "label": label,
        "n": len(kept),
        "backend": "generate",
        "max_new_tokens": max_new_tokens,
        "missing": [pairs[i][0] for i in range(len(pairs)) if i not in set(kept)],
        "seconds": round(time.perf_counter() - start_time, 3),
    }
    return ActivationSet(acts, generator.layers, [pairs[i][0] for i in kept], meta)
