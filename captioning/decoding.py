"""Our own decoding loop: greedy, beam search and nucleus sampling over any step model.

Why not `model.generate()`: the captioners we compare (our GPT-2 decoder, BLIP's
text decoder, open_clip's CoCa, whose own `generate()` breaks with transformers 5)
each need their image memory fed differently, and we want one loop that encodes
the image once, keeps a KV cache, batches requests with left padding and applies
the same repetition controls to all of them so their outputs are comparable.

A model plugs in through `StepModel`: one forward call that returns the last
position's logits and the updated cache, plus how to copy and reorder that cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import torch

from retrieval.errors import BadInput

Memory = dict[str, torch.Tensor]  # batch-first tensors the decoder attends to (image tokens, masks)
STRATEGIES = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode; the defaults suit trait descriptions (short, factual, no loops)."""

    strategy: str = "greedy"
    max_new_tokens: int = 60
    min_new_tokens: int = 0
    num_beams: int = 3
    length_penalty: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    temperature: float = 1.0
    repetition_penalty: float = 1.0  # on generated tokens only: copying the retrieved prompt is wanted
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise BadInput(f"unknown decoding strategy {self.strategy!r}; use {', '.join(STRATEGIES)}")
        if self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise BadInput("need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1")
        if self.num_beams < 1:
            raise BadInput("num_beams must be at least 1")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.temperature <= 0:
            raise BadInput("need 0 < top_p <= 1, top_k >= 0 and temperature > 0")
        if self.repetition_penalty <= 0 or self.no_repeat_ngram_size < 0:
            raise BadInput("repetition_penalty must be > 0 and no_repeat_ngram_size >= 0")

    def with_(self, **changes: Any) -> DecodeOptions:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TransformersCacheSteps:
    """Cache handling for steppers over transformers' Cache objects (self- and cross-attention)."""

    def expand_cache(self, cache: Any, repeats: int) -> Any:
        cache.batch_repeat_interleave(repeats)
        return cache

    def reorder_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        # Beams never leave their image's block and cross-attention rows are equal within a
        # block, so only the self-attention half needs reordering.
        getattr(cache, "self_attention_cache", cache).reorder_cache(rows)
        return cache


class StepModel(Protocol):
    """What the loop needs from a decoder."""

    eos_token_ids: tuple[int, ...]
    pad_token_id: int

    def forward_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     memory: Memory, cache: Any, use_cache: bool) -> tuple[torch.Tensor, Any]:
        """Float logits of the last position (B, V) and the cache after `input_ids` (None without caching)."""
        ...

    def expand_cache(self, cache: Any, repeats: int) -> Any:
        """Each row of the cache `repeats` times in a row (beam search after the prompt)."""
        ...

    def reorder_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        """The cache with its rows taken from `rows` (surviving beams)."""
        ...


def expand_memory(memory: Memory, repeats: int) -> Memory:
    return {k: v.repeat_interleave(repeats, dim=0) for k, v in memory.items()} if repeats > 1 else memory


def _left_pad(prompts: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise BadInput("every prompt needs at least one token (a start token)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def process_logits(logits: torch.Tensor, generated: torch.Tensor, step: int, options: DecodeOptions,
                   eos: torch.Tensor) -> torch.Tensor:
    """Repetition penalty, n-gram blocking and minimum length, applied in place to float logits."""
    if options.repetition_penalty != 1.0 and generated.shape[1]:
        picked = logits.gather(1, generated)
        picked = torch.where(picked < 0, picked * options.repetition_penalty, picked / options.repetition_penalty)
        logits.scatter_(1, generated, picked)
    n = options.no_repeat_ngram_size
    if n and generated.shape[1] >= n - 1:
        rows = generated.tolist()
        for r, seq in enumerate(rows):
            prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
            banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix}
            if banned:
                logits[r, list(banned)] = -float("inf")
    if step < options.min_new_tokens:
        logits[:, eos] = -float("inf")
    return logits


def _sample(logits: torch.Tensor, options: DecodeOptions, generator: torch.Generator | None) -> torch.Tensor:
    logits = logits / options.temperature
    if options.top_k:
        kth = torch.topk(logits, min(options.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= options.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _strip(tokens: list[int], eos: set[int]) -> list[int]:
    out = []
    for t in tokens:
        if t in eos:
            break
        out.append(t)
    return out


@torch.inference_mode()
def generate(model: StepModel, prompts: Sequence[Sequence[int]], memory: Memory,
             options: DecodeOptions | None = None) -> list[dict[str, Any]]:
    """Continue each prompt (one row of `memory` per prompt); returns {tokens, score} per prompt.

    `tokens` are the new tokens without the end token; `score` is the sum of their
    log-probabilities (length-normalised for beam search).
    """
    options = options or DecodeOptions()
    if options.strategy == "beam" and options.num_beams > 1:
        return _beam_search(model, prompts, memory, options)
    device = next(iter(memory.values())).device if memory else torch.device("cpu")
    ids, mask = _left_pad(prompts, model.pad_token_id, device)
    eos = torch.tensor(model.eos_token_ids, device=device)
    generator = torch.Generator(device=device).manual_seed(options.seed) if options.seed is not None else None
    batch = ids.shape[0]
    positions = _positions(mask)
    logits, cache = model.forward_step(ids, mask, positions, memory, None, options.use_cache)
    generated = torch.empty((batch, 0), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    scores = torch.zeros(batch, device=device)
    for step in range(options.max_new_tokens):
        logits = process_logits(logits.float(), generated, step, options, eos)
        if options.strategy == "sample":
            nxt = _sample(logits, options, generator)
        else:
            nxt = logits.argmax(-1)
        logp = logits.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
        scores = scores + torch.where(done, 0.0, logp)
        nxt = torch.where(done, torch.full_like(nxt, model.pad_token_id), nxt)
        generated = torch.cat([generated, nxt[:, None]], dim=1)
        done = done | torch.isin(nxt, eos)
        if bool(done.all()) or step == options.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if options.use_cache:
            logits, cache = model.forward_step(nxt[:, None], mask, positions[:, -1:], memory, cache, True)
        else:
            logits, _ = model.forward_step(torch.cat([ids, generated], 1), mask, positions, memory, None, False)
    eos_set = set(model.eos_token_ids)
    return [{"tokens": _strip(row, eos_set), "score": float(s)}
            for row, s in zip(generated.tolist(), scores.tolist())]


def _beam_search(model: StepModel, prompts: Sequence[Sequence[int]], memory: Memory,
                 options: DecodeOptions) -> list[dict[str, Any]]:
    """Standard beam search with per-prompt hypothesis pools; stops a prompt once it has num_beams finished."""
    n = options.num_beams
    device = next(iter(memory.values())).device if memory else torch.device("cpu")
    ids, mask = _left_pad(prompts, model.pad_token_id, device)
    eos = torch.tensor(model.eos_token_ids, device=device)
    eos_set = set(model.eos_token_ids)
    batch = ids.shape[0]
    positions = _positions(mask)
    # The prompt runs once per request; its cache is then copied to the beams.
    logits, cache = model.forward_step(ids, mask, positions, memory, None, options.use_cache)
    if options.use_cache:
        cache = model.expand_cache(cache, n)
    memory = expand_memory(memory, n)
    ids, mask, positions = (t.repeat_interleave(n, dim=0) for t in (ids, mask, positions))
    logits = logits.repeat_interleave(n, dim=0)
    beam_scores = torch.full((batch, n), -float("inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
    beam_scores = beam_scores.view(-1)
    generated = torch.empty((batch * n, 0), dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int], float]]] = [[] for _ in range(batch)]
    done = [False] * batch
    vocab = logits.shape[-1]
    for step in range(options.max_new_tokens):
        logp = process_logits(logits.float(), generated, step, options, eos).log_softmax(-1)
        candidates = (beam_scores[:, None] + logp).view(batch, n * vocab)
        top_scores, top_index = torch.topk(candidates, 2 * n, dim=1)
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            chosen: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank, (score, flat) in enumerate(zip(top_scores[b], top_index[b])):
                    beam, token = divmod(flat, vocab)
                    row = b * n + beam
                    if score == -float("inf"):
                        break
                    if token in eos_set:
                        if rank >= n:  # an end below the top n would displace a better open beam
                            continue
                        length = generated.shape[1] + 1
                        finished[b].append((score / length ** options.length_penalty, generated[row].tolist(), score))
                    else:
                        chosen.append((row, token, score))
                    if len(chosen) == n:
                        break
                if len(finished[b]) >= n or not chosen:
                    done[b] = True
            if done[b]:  # keep the shapes: dead beams carry pad tokens and never win
                chosen = [(b * n, model.pad_token_id, -float("inf"))] * n
            while len(chosen) < n:
                chosen.append((chosen[0][0], model.pad_token_id, -float("inf")))
            for row, token, score in chosen:
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        tokens = torch.tensor(next_tokens, device=device)
        beam_scores = torch.tensor(next_scores, device=device)
        generated = torch.cat([generated[rows], tokens[:, None]], dim=1)
        if step == options.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch * n, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if options.use_cache:
            cache = model.reorder_cache(cache, rows)
            logits, cache = model.forward_step(tokens[:, None], mask, positions[:, -1:], memory, cache, True)
        else:
            logits, _ = model.forward_step(torch.cat([ids, generated], 1), mask, positions, memory, None, False)
    # Beams still open at the length limit compete with the finished ones.
    for b in range(batch):
        if done[b]:
            continue
        for beam in range(n):
            row = b * n + beam
            score = float(beam_scores[row])
            if score > -float("inf"):
                seq = generated[row].tolist()
                finished[b].append((score / max(len(seq), 1) ** options.length_penalty, seq, score))
    results = []
    for pool in finished:
        if not pool:
            results.append({"tokens": [], "score": -float("inf")})
            continue
        best = max(pool, key=lambda h: h[0])
        results.append({"tokens": _strip(best[1], eos_set), "score": best[0]})
    return results
