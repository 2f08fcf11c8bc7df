"""The neural trait-description decoder: a GPT-2-class language model cross-attending to image patch tokens.

Why this shape: the encoder's patch tokens (plus its pooled vector) are projected
into the language model's width and read through GPT-2's cross-attention layers,
so any CLIP-family encoder can feed any GPT-2-class model; the prompt carries the
neighbours' descriptions of the organ being written (see prompts.py). Users start
from a pretrained GPT-2 (`from_pretrained`); tests start from a tiny config on the
same code path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from captioning.base import Encoded, Neighbour, encode
from captioning.decoding import DecodeOptions, Memory, TransformersCacheSteps, generate
from captioning.prompts import WHOLE, compose, neighbour_context, prompt_text
from captioning.tokenization import byte_level_tokenizer
from retrieval.vectors import ClipEncoder, ImageInput, create_encoder, pick_device, pick_dtype
from retrieval.errors import BadInput, HerbariaError, NetworkUnavailable

log = logging.getLogger(__name__)

FORMAT = 1
META_FILE = "captioner.json"
WEIGHTS_FILE = "model.safetensors"


class CaptionDecoder(nn.Module):
    """GPT-2 with cross-attention, plus the bridge from image features to its width."""

    def __init__(self, lm: GPT2LMHeadModel, *, image_width: int, pooled_dim: int) -> None:
        super().__init__()
        if not lm.config.add_cross_attention:
            raise HerbariaError("the language model must be built with add_cross_attention=True")
        self.lm = lm
        width = lm.config.n_embd
        self.image_norm = nn.LayerNorm(image_width)
        self.image_proj = nn.Linear(image_width, width)
        self.pooled_proj = nn.Linear(pooled_dim, width)

    def memory(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, width): the pooled vector as a first token, then the projected patch tokens."""
        dtype = self.image_proj.weight.dtype
        patches = self.image_proj(self.image_norm(tokens.to(dtype)))
        return torch.cat([self.pooled_proj(pooled.to(dtype))[:, None], patches], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced loss over the target tokens (labels -100 elsewhere)."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                      encoder_hidden_states=self.memory(pooled, tokens), labels=labels, use_cache=False)
        return out.loss


class DecoderSteps(TransformersCacheSteps):
    """`StepModel` for CaptionDecoder: the loop's view of GPT-2 with a transformers cache.

    With `int8`, decoding runs on an int8 copy of the language model (see quantize.py).
    """

    def __init__(self, model: CaptionDecoder, eos_token_id: int, pad_token_id: int, vocab: int, *,
                 int8: bool = False) -> None:
        self.model, self.eos_token_ids, self.pad_token_id = model, (eos_token_id,), pad_token_id
        self.vocab = vocab  # an LM may have a padded vocabulary: never emit ids the tokenizer lacks
        self.transformer: nn.Module = model.lm.transformer
        self.head: nn.Module = model.lm.lm_head
        self.int8 = False
        if int8:
            from captioning.quantize import Int8Linear, quantized_copy

            try:
                self.transformer = quantized_copy(model.lm.transformer)
                self.head = Int8Linear(model.lm.lm_head.weight, None)  # the whole head: its cost is real
                self.int8 = True
            except (RuntimeError, AttributeError, NotImplementedError) as err:  # a torch without quantized kernels
                log.info("int8 decoding unavailable (%s); decoding in %s", err, next(model.parameters()).dtype)

    def forward_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     memory: Memory, cache: Any, use_cache: bool) -> tuple[torch.Tensor, Any]:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               encoder_hidden_states=memory["image"], past_key_values=cache, use_cache=use_cache)
        logits = self.head(out.last_hidden_state[:, -1])[:, : self.vocab]
        return logits.float(), out.past_key_values if use_cache else None


PRECISIONS = ("auto", "int8", "fp32", "bf16", "fp16")


def decoder_precision(device: torch.device, precision: str) -> tuple[bool, torch.dtype]:
    """(int8 decoding?, dtype of the stored weights). auto: int8 on CPUs with fbgemm, else the encoder's rule."""
    from captioning.quantize import int8_available

    if precision not in PRECISIONS:
        raise BadInput(f"unknown decoder precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision in ("auto", "int8") and int8_available(device):
        return True, torch.float32
    if precision == "int8":
        raise BadInput("int8 decoding needs a CPU with fbgemm kernels; use --precision auto, bf16 or fp32")
    return False, pick_dtype(device, precision)


def image_dims(encoder: ClipEncoder) -> tuple[int, int]:
    visual = encoder.model.visual
    width = getattr(getattr(visual, "transformer", None), "width", None)
    if width is None:
        size = encoder.image_size
        _, tokens = encoder.image_features(torch.zeros(1, 3, size, size))
        width = tokens.shape[-1]
    return int(width), int(encoder.dim)


def _offline(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(s in text for s in ("connection", "offline", "resolve", "network", "max retries", "hub",
                                   "couldn't find", "not find", "does not appear to have"))


class NeuralCaptioner:
    """A trained (or freshly initialised) decoder with its tokenizer, encoder name and organ list."""

    kind = "decoder"

    def __init__(self, model: CaptionDecoder, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any], *,
                 device: str | None = None, precision: str = "auto") -> None:
        self.tokenizer, self.meta = tokenizer, meta
        self.name = meta["name"]
        self.encoder_name: str = meta["encoder"]["name"]
        self.organs: list[str] = list(meta.get("organs") or [WHOLE])
        self.device = pick_device(device)
        self.int8, self.dtype = decoder_precision(self.device, precision)
        self.precision = "int8" if self.int8 else str(self.dtype).replace("torch.", "")
        self.encoder_precision = "auto" if precision in ("auto", "int8") else precision
        self.model = model.to(self.device, self.dtype).eval()
        self._steps: DecoderSteps | None = None
        self._encoder: ClipEncoder | None = None

    @property
    def steps(self) -> DecoderSteps:
        if self._steps is None:
            tok = self.tokenizer
            self._steps = DecoderSteps(self.model, tok.eos_token_id, tok.pad_token_id, len(tok), int8=self.int8)
        return self._steps

    def refresh(self) -> None:
        """Forget derived inference state (the int8 copy) after the weights changed."""
        self._steps = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, encoder: str | None = None, device: str | None = None,
                  precision: str = "auto", texts: Sequence[str] = ()) -> NeuralCaptioner:
        """A fresh decoder from a preset: pretrained LM (`lm`) or tiny config (`lm_config`); `texts` train
        the byte-level tokenizer of a config-built LM."""
        enc = create_encoder(encoder or spec.get("encoder", "bioclip"), device=device,
                             precision="auto" if precision in ("auto", "int8") else precision)
        image_width, pooled_dim = image_dims(enc)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.get("seed", 0)))
            if spec.get("lm"):
                try:
                    tokenizer = AutoTokenizer.from_pretrained(spec["lm"])
                    lm = GPT2LMHeadModel.from_pretrained(spec["lm"], add_cross_attention=True)
                except OSError as err:
                    if _offline(err):
                        raise NetworkUnavailable(
                            f"cannot load captioner {spec['name']!r} ({spec['lm']}): its weights are not cached here "
                            "and the network is unreachable; use --captioner tiny-test or grounded") from err
                    raise HerbariaError(f"cannot load captioner {spec['name']!r} ({spec['lm']}): {err}") from err
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
            else:
                tokenizer = byte_level_tokenizer(texts, vocab_size=int(spec.get("vocab_size", 1024)))
                lm_config = dict(spec.get("lm_config", {}))
                vocab = max(len(tokenizer), int(lm_config.pop("vocab_size", 0)))
                config = GPT2Config(**lm_config, vocab_size=vocab,
                                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                    add_cross_attention=True)
                lm = GPT2LMHeadModel(config)
            model = CaptionDecoder(lm, image_width=image_width, pooled_dim=pooled_dim)
        meta = {"format": FORMAT, "kind": cls.kind, "name": spec["name"], "base": spec["name"],
                "lm": spec.get("lm") or "config",
                "encoder": {"name": enc.name, "fingerprint": enc.fingerprint, "width": image_width, "dim": pooled_dim},
                "organs": list(spec.get("organs") or [WHOLE]), "context_taxa": int(spec.get("context_taxa", 3)),
                "max_context_tokens": int(spec.get("max_context_tokens", 160)), "trained": False}
        captioner = cls(model, tokenizer, meta, device=device, precision=precision)
        captioner._encoder = enc
        return captioner

    @classmethod
    def load(cls, folder: str | Path, *, device: str | None = None, precision: str = "auto") -> NeuralCaptioner:
        """A checkpoint written by `save` (safetensors weights, no pickles)."""
        from safetensors.torch import load_model

        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.exists():
            raise BadInput(f"no captioner checkpoint in {folder.name or folder}: {META_FILE} is missing")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("kind") != cls.kind:
            raise BadInput(f"{folder.name}: not a decoder checkpoint of format {FORMAT}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
            config = GPT2Config.from_pretrained(folder / "lm")
            model = CaptionDecoder(GPT2LMHeadModel(config), image_width=meta["encoder"]["width"],
                                   pooled_dim=meta["encoder"]["dim"])
            load_model(model, str(folder / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error type for a torn or foreign file
            raise HerbariaError(f"captioner checkpoint {folder.name} is damaged or incomplete ({err})") from err
        return cls(model, tokenizer, meta, device=device, precision=precision)

    def save(self, folder: str | Path, **extra_meta: Any) -> Path:
        """Write weights, LM config, tokenizer and meta into a new folder, then swap it in:
        a crash mid-save leaves the previous checkpoint as it was."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + ".writing")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.lm.config.save_pretrained(tmp / "lm")
        self.tokenizer.save_pretrained(tmp / "tokenizer")
        save_model(self.model, str(tmp / WEIGHTS_FILE))
        meta = {**self.meta, **extra_meta}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        self.meta = meta
        return folder

    # ------------------------------------------------------------------ captioning
    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            self._encoder = create_encoder(self.encoder_name, device=str(self.device), precision=self.encoder_precision)
            if self._encoder.fingerprint != self.meta["encoder"]["fingerprint"]:
                raise HerbariaError(
                    f"captioner {self.name!r} was trained on encoder {self.encoder_name!r} with other weights "
                    f"({self.meta['encoder']['fingerprint']}, found {self._encoder.fingerprint}); retrain it")
        return self._encoder

    def accepts(self, encoded: Encoded | None) -> bool:
        return encoded is not None and encoded.fingerprint == self.meta["encoder"]["fingerprint"]

    def encode_prompt(self, organ: str, context: str = "") -> list[int]:
        """[end-of-text] + context (cut to max_context_tokens) + organ label."""
        tok = self.tokenizer
        ids: list[int] = []
        if context:
            ids = tok.encode(context, add_special_tokens=False)[: int(self.meta.get("max_context_tokens", 160))]
            ids += tok.encode("\n", add_special_tokens=False)
        ids += tok.encode(prompt_text(organ), add_special_tokens=False)
        return [tok.bos_token_id, *ids]

    def caption(self, images: Sequence[ImageInput] = (), *, encoded: Encoded | None = None,
                neighbours: Sequence[Sequence[Neighbour]] | None = None, organs: Sequence[str] | None = None,
                options: DecodeOptions | None = None) -> list[dict[str, Any]]:
        """One description per image, one section per organ; every (image, organ) prompt decodes in one batch."""
        if not self.accepts(encoded):
            encoded = encode(self.encoder, images)
        organs = list(organs or self.organs)
        if neighbours is not None and len(neighbours) != len(encoded):
            raise BadInput("give one neighbour list per image")
        prompts, rows = [], []
        for i in range(len(encoded)):
            for organ in organs:
                ctx = neighbour_context(neighbours[i], organ, max_taxa=self.meta.get("context_taxa", 3)) if neighbours else ""
                prompts.append(self.encode_prompt(organ, ctx))
                rows.append(i)
        return self._decode(encoded, prompts, rows, organs, options)

    @torch.inference_mode()
    def _decode(self, encoded: Encoded, prompts: list[list[int]], rows: list[int], organs: list[str],
                options: DecodeOptions | None) -> list[dict[str, Any]]:
        memory = self.model.memory(encoded.pooled.to(self.device), encoded.tokens.to(self.device))
        index = torch.as_tensor(rows, device=self.device)
        outs = generate(self.steps, prompts, {"image": memory[index]}, options)
        results = []
        for i in range(len(encoded)):
            sections, tokens = {}, 0
            for j, organ in enumerate(organs):
                out = outs[i * len(organs) + j]
                sections[organ] = self.tokenizer.decode(out["tokens"], skip_special_tokens=True).strip()
                tokens += len(out["tokens"])
            results.append({"text": compose(sections), "sections": sections, "tokens": tokens})
        return results
