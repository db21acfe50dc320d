"""Hidden-state capture with forward hooks: which token positions to keep, and how to keep only those.

Conventions (shared by every agent that returns hidden states):

- **Layers.** Layer ``L`` is the output of decoder block ``L`` (0-based), i.e. the residual stream after that
  block. With ``model(..., output_hidden_states=True)``, HF's ``hidden_states[0]`` is the embedding output, so our
  layer ``L`` equals HF ``hidden_states[L + 1]`` for every block but the last: HF replaces the last entry with the
  output of the final norm, while ours stays the raw residual stream of the last block. Negative layers count
  from the end (``-1`` is the last block).
- **Positions** (per turn; a position that does not occur in a turn is simply missing from the dict):

  - ``"last_prompt"``: the last prompt token, ``[d]``.
  - ``"search"``: the last token of this turn's ``<search>`` tag, ``[d]``. When the prompt (the observation's
    prefill) ends with an open ``<search>`` (an unclosed tag after the last ``</search>`` and ``</information>``),
    that tag is in the prompt; otherwise it is the first ``<search>`` in the completion.
  - ``"query_mean"``: the mean over the query's tokens, strictly between that tag and the ``</search>`` that
    closes it in the completion, ``[d]``. Missing when the completion never closes the query or it is empty.
  - ``"generated"``: every completion token, ``[T, d]`` with ``T = len(completion_ids)``.

  The hidden state "at" a token is the one computed with that token as input (what a probe or a steering
  direction reads at that position).
- Returned tensors are float32 on the CPU, detached.

Two capture paths produce the same numbers (up to float error):

- :class:`GenerationCapture` hooks the decoder blocks *during* ``generate``: the prompt pass keeps only the prompt
  positions asked for, each decoding step keeps one ``[B, d]`` row per hooked layer when completion positions are
  asked for (smaller than the KV cache the step already writes), and nothing is captured when no layers are asked
  for (no hooks are registered at all).
- :func:`forward_hidden` runs ONE batched forward over given prompt+completion token ids (e.g. produced by vLLM,
  which does not expose hidden states), keeping only the chosen positions and stopping after the deepest
  requested block.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

POSITIONS: tuple[str, ...] = ("last_prompt", "search", "query_mean", "generated")

SEARCH_OPEN, SEARCH_CLOSE, INFORMATION_CLOSE = "<search>", "</search>", "</information>"


# ---------------------------------------------------------------------------------------------- layers & options


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks (``model.model.layers`` for Llama/Qwen/Mistral-style models)."""
    for path in (
        "model.layers",
        "model.language_model.layers",
        "model.decoder.layers",
        "transformer.h",
        "gpt_neox.layers",
        "transformer.layers",
    ):
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text_config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and n_layers is not None and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


def normalize_layers(layers: int | Iterable[int] | str | None, num_layers: int) -> tuple[int, ...]:
    """Sorted unique non-negative layer indices; ``"all"`` is every block, negatives count from the end."""
    if layers is None:
        return ()
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be ints or 'all', not {layers!r}")
        return tuple(range(num_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = set()
    for layer in layers:
        index = int(layer) + num_layers if int(layer) < 0 else int(layer)
        if not 0 <= index < num_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {num_layers} decoder blocks")
        out.add(index)
    return tuple(sorted(out))


def normalize_positions(
    positions: str | Iterable[str] | None, *, default: Sequence[str] = POSITIONS
) -> tuple[str, ...]:
    """Validated position names; None means ``default``."""
    if positions is None:
        return tuple(default)
    if isinstance(positions, str):
        positions = [positions]
    positions = tuple(dict.fromkeys(positions))
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise ValueError(f"unknown positions {unknown}; choose from {POSITIONS}")
    return positions


def _block_hidden(output: Any) -> torch.Tensor:
    """The residual-stream tensor in a decoder block's output (a tensor, or a tuple whose first item is)."""
    return output[0] if isinstance(output, (tuple, list)) else output


# ---------------------------------------------------------------------------------------------- steering


@contextmanager
def steering(model: torch.nn.Module, direction: Any, layer: int, coeff: float = 1.0):
    """Add ``coeff * direction`` to the output of decoder block ``layer`` at every position while active.

    The hook is registered first among the block's hooks, so hidden-state capture on the same block sees the
    steered residual stream. It is removed on exit, also when the body raises.
    """
    blocks = decoder_layers(model)
    (index,) = normalize_layers(layer, len(blocks))
    param = next(model.parameters())
    vector = torch.as_tensor(direction).detach().to(device=param.device, dtype=param.dtype).reshape(-1)
    hidden_size = _block_width(model)
    if hidden_size is not None and vector.numel() != hidden_size:
        raise ValueError(f"steering direction has {vector.numel()} entries, the model's width is {hidden_size}")
    delta = vector * float(coeff)

    def hook(_module, _args, output):
        if isinstance(output, (tuple, list)):
            return type(output)((output[0] + delta, *output[1:]))
        return output + delta

    handle = blocks[index].register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _block_width(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "hidden_size", None)


# ---------------------------------------------------------------------------------------------- positions from ids


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_at_char(tokenizer, ids: Sequence[int], char_index: int) -> int:
    """Index of the token of ``ids`` whose decoded text covers character ``char_index`` of ``decode(ids)``.

    Binary search on the length of decoded prefixes: exact for byte-level BPE and SentencePiece alike, since it
    only relies on decoding, and O(log n) decodes.
    """
    lo, hi = 0, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_decode(tokenizer, ids[: mid + 1])) > char_index:
            hi = mid
        else:
            lo = mid + 1
    return lo


def open_search_in_prompt(prompt_text: str) -> int | None:
    """Character index of this turn's still-open ``<search>`` at the end of the prompt, else None.

    Open means: after the last ``</search>`` and the last ``</information>`` (earlier turns, few-shot examples and
    the environment's correction message only contain closed tags).
    """
    start = prompt_text.rfind(SEARCH_OPEN)
    if start < 0:
        return None
    if start < prompt_text.rfind(SEARCH_CLOSE) or start < prompt_text.rfind(INFORMATION_CLOSE):
        return None
    return start


def prompt_positions(tokenizer, prompt_ids: Sequence[int], positions: Sequence[str]) -> dict[str, list[int]]:
    """The prompt-side indices needed for ``positions``: everything knowable before generation starts.

    Keys: ``"last_prompt"``, ``"search"`` (tag token, when the prompt holds this turn's open tag) and
    ``"query_prefix"`` (query tokens already in the prompt after that tag).
    """
    out: dict[str, list[int]] = {}
    if not prompt_ids:
        return out
    if "last_prompt" in positions:
        out["last_prompt"] = [len(prompt_ids) - 1]
    if "search" in positions or "query_mean" in positions:
        text = _decode(tokenizer, prompt_ids)
        start = open_search_in_prompt(text)
        if start is not None:
            tag = token_at_char(tokenizer, prompt_ids, start + len(SEARCH_OPEN) - 1)
            out["search"] = [tag]
            out["query_prefix"] = list(range(tag + 1, len(prompt_ids)))
    return out


def locate_positions(
    tokenizer, prompt_ids: Sequence[int], completion_ids: Sequence[int], positions: Sequence[str]
) -> dict[str, list[int]]:
    """Absolute indices into ``prompt_ids + completion_ids`` for each requested position present in this turn.

    ``"query_mean"`` and ``"generated"`` map to several indices (averaged / stacked later); the others to one.
    """
    n_prompt = len(prompt_ids)
    pre = prompt_positions(tokenizer, prompt_ids, positions)
    out: dict[str, list[int]] = {}
    if "last_prompt" in pre:
        out["last_prompt"] = pre["last_prompt"]
    need_tags = "search" in positions or "query_mean" in positions
    if need_tags:
        completion_text = _decode(tokenizer, completion_ids) if completion_ids else ""
        tag_index: int | None = None
        query_from, search_from_char = 0, 0  # completion-relative
        query_prefix: list[int] = []
        if "search" in pre:
            tag_index = pre["search"][0]
            query_prefix = pre["query_prefix"]
        else:
            start = completion_text.find(SEARCH_OPEN)
            if start >= 0:
                local = token_at_char(tokenizer, completion_ids, start + len(SEARCH_OPEN) - 1)
                tag_index = n_prompt + local
                query_from, search_from_char = local + 1, start + len(SEARCH_OPEN)
        if tag_index is not None and "search" in positions:
            out["search"] = [tag_index]
        if tag_index is not None and "query_mean" in positions:
            close = completion_text.find(SEARCH_CLOSE, search_from_char)
            if close >= 0:
                close_token = token_at_char(tokenizer, completion_ids, close)
                query = query_prefix + [n_prompt + i for i in range(query_from, close_token)]
                if query:
                    out["query_mean"] = query
    if "generated" in positions and completion_ids:
        out["generated"] = list(range(n_prompt, n_prompt + len(completion_ids)))
    return out


class IndexedRows(Mapping):
    """One layer's captured rows for one sequence: a read-only ``{abs_index: [d] tensor}`` over one ``[n, d]`` tensor.

    Behaves like a dict of rows and also selects many rows at once (:meth:`select`) without per-row Python work.
    """

    __slots__ = ("_position", "values")

    def __init__(self, indices: Sequence[int], values: torch.Tensor):
        self._position = {int(i): k for k, i in enumerate(indices)}
        self.values = values

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.values[self._position[index]]

    def __iter__(self):
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)

    def select(self, indices: Sequence[int]) -> torch.Tensor:
        """``[len(indices), d]``, a new tensor."""
        return self.values[torch.tensor([self._position[i] for i in indices], dtype=torch.long)]


def assemble(
    located: dict[str, list[int]], rows: Mapping[int, Mapping[int, torch.Tensor]]
) -> dict[int, dict[str, torch.Tensor]]:
    """Turn per-index rows ``{layer: {abs_index: [d]}}`` into ``{layer: {position: tensor}}``.

    Every requested layer is a key; positions absent from this turn are absent from its dict. The tensors are
    copies: keeping one position does not keep the whole batch's rows alive.
    """
    hidden: dict[int, dict[str, torch.Tensor]] = {}
    for layer, by_index in rows.items():
        select = (
            by_index.select
            if isinstance(by_index, IndexedRows)
            else (lambda ix, m=by_index: torch.stack([m[i] for i in ix]))
        )
        entry: dict[str, torch.Tensor] = {}
        for name, indices in located.items():
            if not indices:
                continue
            if name == "generated":
                entry[name] = select(indices)
            elif name == "query_mean":
                entry[name] = select(indices).mean(0)
            else:
                entry[name] = by_index[indices[0]].clone()
        hidden[layer] = entry
    return hidden


# ---------------------------------------------------------------------------------------------- capture during generate


class GenerationCapture:
    """Forward hooks on decoder blocks that keep chosen positions while ``model.generate`` runs.

    Use as a context manager around one ``generate`` call on a left-padded batch. The first call of each hooked
    block is the prompt pass: only ``prompt_indices[b]`` (unpadded prompt coordinates) are kept. Later calls are
    decoding steps feeding one token each; with ``keep_completion`` their ``[B, d]`` rows are kept, so that
    completion positions (unknown until the text exists) can be picked afterwards with :meth:`rows`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[int],
        prompt_indices: Sequence[Sequence[int]],
        pad_lengths: Sequence[int],
        keep_completion: bool,
    ):
        self.blocks = decoder_layers(model)
        self.layers = tuple(layers)
        self.prompt_indices = [list(ix) for ix in prompt_indices]
        self.pad_lengths = list(pad_lengths)
        self.keep_completion = keep_completion
        self.prompt_rows: dict[int, torch.Tensor] = {}
        self.steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._handles: list[Any] = []
        batch = [b for b, ix in enumerate(self.prompt_indices) for _ in ix]
        flat = [self.pad_lengths[b] + i for b, ix in enumerate(self.prompt_indices) for i in ix]
        self._batch_index = torch.tensor(batch, dtype=torch.long)
        self._pos_index = torch.tensor(flat, dtype=torch.long)
        self._offsets = [0]
        for ix in self.prompt_indices:
            self._offsets.append(self._offsets[-1] + len(ix))

    def _hook(self, layer: int):
        def hook(_module, _args, output):
            h = _block_hidden(output)
            if layer not in self.prompt_rows:
                device = h.device
                self.prompt_rows[layer] = h[self._batch_index.to(device), self._pos_index.to(device)].detach()
            elif self.keep_completion:
                self.steps[layer].append(h[:, -1].detach())

        return hook

    def __enter__(self) -> GenerationCapture:
        self._handles = [self.blocks[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def completion_steps(self) -> int:
        """How many completion tokens have been fed through the model (their hidden states exist)."""
        return len(self.steps[self.layers[0]]) if self.layers else 0

    def gather(self, wanted: Sequence[tuple[int, Iterable[int]]]) -> list[dict[int, IndexedRows]]:
        """Rows for every sample: ``wanted[b] = (prompt length, absolute indices)``.

        Returns per sample ``{layer: IndexedRows}`` (float32, CPU), with one device gather and one host copy per
        layer for the whole batch.
        """
        requests = [(b, n_prompt, sorted(set(ix))) for b, (n_prompt, ix) in enumerate(wanted)]
        # Where each wanted row sits in cat([prompt rows, step rows]), per sample, in sorted index order.
        prompt_pick, step_b, step_k, flat_positions = [], [], [], []
        for b, n_prompt, indices in requests:
            position = {i: self._offsets[b] + k for k, i in enumerate(self.prompt_indices[b])}
            for i in indices:
                if i < n_prompt:
                    prompt_pick.append(position[i])
        n_from_prompt = len(prompt_pick)
        p_next = 0
        for b, n_prompt, indices in requests:
            mine = []
            for i in indices:
                if i < n_prompt:
                    mine.append(p_next)
                    p_next += 1
                else:
                    mine.append(n_from_prompt + len(step_b))
                    step_b.append(b)
                    step_k.append(i - n_prompt)
            flat_positions.append(torch.tensor(mine, dtype=torch.long))
        out: list[dict[int, IndexedRows]] = [{} for _ in requests]
        for layer in self.layers:
            prompt_block = self.prompt_rows[layer]
            device = prompt_block.device
            parts = [prompt_block[torch.tensor(prompt_pick, dtype=torch.long, device=device)]]
            if step_b:
                stacked = torch.stack(self.steps[layer], dim=1)  # [B, steps, d]
                b_index = torch.tensor(step_b, dtype=torch.long, device=stacked.device)
                k_index = torch.tensor(step_k, dtype=torch.long, device=stacked.device)
                parts.append(stacked[b_index, k_index])
            flat = torch.cat(parts).float().cpu()
            for (b, _, indices), positions in zip(requests, flat_positions):
                out[b][layer] = IndexedRows(indices, flat[positions])
        return out


# ---------------------------------------------------------------------------------------------- one batched forward


class _StopForward(Exception):
    """Raised by the deepest hook: blocks after the last requested layer are never computed."""


def capture_rows(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 flat_rows: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """THE hidden-state capture of one forward pass: ``[L, R, d]`` rows of the decoder blocks ``layers``, on the
    model's device, in the model's dtype.

    ``flat_rows`` indexes the flattened ``[B * S]`` positions of ``input_ids`` (``row * S + position``). Forward hooks
    keep only those rows (one ``index_select`` per block, on the device: a copy to the host inside every hook would
    make the host wait for each block in turn and expose its kernel-launch time, +15-38% on an H100 for a 1.5B
    model); the LM head is never run, there is no KV cache, and the pass stops after the deepest requested block.
    :func:`forward_hidden` and the direction toolkit's ``collect_from_ids`` are both built on this.
    """
    layers = tuple(int(x) for x in layers)
    blocks = decoder_layers(model)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_module, _args, output):
            h = _block_hidden(output)
            captured[layer] = h.reshape(-1, h.shape[-1]).index_select(0, flat_rows)
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        _run_backbone(model, input_ids, attention_mask)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([captured[layer] for layer in layers])


@torch.no_grad()
def forward_hidden(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    indices: Sequence[Iterable[int]],
    layers: Sequence[int],
    *,
    batch_size: int | None = None,
) -> list[dict[int, Mapping[int, torch.Tensor]]]:
    """Hidden states of ``layers`` at ``indices[b]`` of ``sequences[b]``, from one batched forward pass.

    Sequences are right-padded (causal attention: padding after a token never changes it) and run together
    (``batch_size`` splits very large batches) through :func:`capture_rows`; each batch crosses to the host once.
    Returns per sequence ``{layer: {index: [d] float32 cpu}}`` (the inner mappings are :class:`IndexedRows`).
    """
    layers = tuple(layers)
    results: list[dict[int, Mapping[int, torch.Tensor]]] = [{layer: {} for layer in layers} for _ in sequences]
    if not layers or not sequences:
        return results
    device = next(model.parameters()).device
    wanted = [sorted(set(ix)) for ix in indices]
    step = batch_size or len(sequences)
    for start in range(0, len(sequences), step):
        chunk = range(start, min(start + step, len(sequences)))
        width = max(len(sequences[b]) for b in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, b in enumerate(chunk):
            input_ids[row, : len(sequences[b])] = torch.as_tensor(list(sequences[b]), dtype=torch.long)
            mask[row, : len(sequences[b])] = 1
        flat = torch.tensor([row * width + i for row, b in enumerate(chunk) for i in wanted[b]], dtype=torch.long)
        rows = capture_rows(model, input_ids.to(device), mask.to(device), flat.to(device), layers)
        on_host = dict(zip(layers, rows.float().cpu()))
        offset = 0
        for b in chunk:
            for layer in layers:
                results[b][layer] = IndexedRows(wanted[b], on_host[layer][offset : offset + len(wanted[b])])
            offset += len(wanted[b])
    return results


def _run_backbone(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Run the decoder stack without the LM head (no [B, S, vocab] logits) and without a KV cache."""
    backbone = getattr(model, "base_model", model)
    backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def hidden_for_completions(
    model: torch.nn.Module,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    positions: Sequence[str],
    *,
    batch_size: int | None = None,
) -> list[dict[int, dict[str, torch.Tensor]]]:
    """``AgentStep.hidden`` for finished turns given only token ids: locate positions, then one batched forward.

    This is how backends that generate elsewhere (vLLM, a server) get hidden states from an HF copy of the model.
    """
    located = [locate_positions(tokenizer, p, c, positions) for p, c in zip(prompt_ids, completion_ids)]
    # A forward only needs tokens up to the last chosen index.
    sequences, wanted = [], []
    for p, c, loc in zip(prompt_ids, completion_ids, located):
        ix = sorted({i for v in loc.values() for i in v})
        wanted.append(ix)
        sequences.append((list(p) + list(c))[: (ix[-1] + 1) if ix else 1])
    rows = forward_hidden(model, sequences, wanted, layers, batch_size=batch_size)
    return [assemble(loc, r) for loc, r in zip(located, rows)]
