"""Off-the-shelf captioners behind our interface, decoded by our loop: BLIP and open_clip CoCa.

Why: a fair comparison needs the same decoding (strategy, repetition control,
length) for every model. BLIP's text decoder takes a transformers cache as it is.
CoCa has no cache at all and its `generate()` does not run with transformers 5,
so its two text towers are stepped here with a KV cache of our own, reading the
weights of open_clip's blocks directly (checked against open_clip's forward in tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from captioning.base import Encoded, Neighbour, load_images
from captioning.decoder import _offline
from captioning.decoding import DecodeOptions, Memory, TransformersCacheSteps, generate
from captioning.tokenization import byte_level_tokenizer
from retrieval.vectors import ImageInput, pick_device, pick_dtype
from retrieval.errors import BadInput, HerbariaError, NetworkUnavailable
from retrieval.registry import preset_path


def _network_error(spec: dict[str, Any], err: Exception) -> HerbariaError:
    if _offline(err):
        return NetworkUnavailable(f"cannot load captioner {spec['name']!r} ({spec.get('model')}): its weights are not "
                                  "cached here and the network is unreachable; use --captioner grounded or tiny-test")
    return HerbariaError(f"cannot load captioner {spec['name']!r} ({spec.get('model')}): {err}")


class _ImageCaptioner:
    """Shared `caption` for captioners with their own vision tower (the request's encoder pass is not reused).

    Subclasses provide `steps` (a StepModel), `memory(images)`, `prompt_ids()` and `decode_text(tokens)`.
    """

    name: str
    kind: str
    encoder_name: str | None = None
    prompt: str = ""
    steps: Any

    def memory(self, images: Sequence[ImageInput]) -> Memory:
        raise NotImplementedError

    def prompt_ids(self) -> list[int]:
        raise NotImplementedError

    def decode_text(self, tokens: list[int]) -> str:
        raise NotImplementedError

    def limit(self, options: DecodeOptions | None) -> DecodeOptions:
        return options or DecodeOptions()

    @torch.inference_mode()
    def caption(self, images: Sequence[ImageInput] = (), *, encoded: Encoded | None = None,
                neighbours: Sequence[Sequence[Neighbour]] | None = None,
                options: DecodeOptions | None = None, **_: Any) -> list[dict[str, Any]]:
        memory = self.memory(images)
        batch = next(iter(memory.values())).shape[0]
        outs = generate(self.steps, [self.prompt_ids()] * batch, memory, self.limit(options))
        return [{"text": self.decode_text(o["tokens"]).strip(), "tokens": len(o["tokens"])} for o in outs]


# --------------------------------------------------------------------------- BLIP
class BlipSteps(TransformersCacheSteps):
    """`StepModel` over BlipTextLMHeadModel: a BERT-style decoder with cross-attention and a transformers cache."""

    def __init__(self, text_decoder: nn.Module, eos: int, pad: int) -> None:
        self.text_decoder, self.eos_token_ids, self.pad_token_id = text_decoder, (eos,), pad

    def forward_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     memory: Memory, cache: Any, use_cache: bool) -> tuple[torch.Tensor, Any]:
        out = self.text_decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                encoder_hidden_states=memory["image"], past_key_values=cache, use_cache=use_cache,
                                logits_to_keep=1)
        return out.logits[:, -1].float(), out.past_key_values if use_cache else None


class BlipCaptioner(_ImageCaptioner):
    """BlipForConditionalGeneration (e.g. Salesforce/blip-image-captioning-base), prompted like BLIP's own demo."""

    kind = "blip"

    def __init__(self, model: Any, processor: Any, tokenizer: Any, *, name: str, prompt: str, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model, self.processor, self.tokenizer = model.to(device, dtype).eval(), processor, tokenizer
        self.name, self.prompt, self.device, self.dtype = name, prompt, device, dtype
        text = model.config.text_config
        self.bos, self.eos, self.pad = int(text.bos_token_id), int(text.sep_token_id), int(text.pad_token_id)
        self.steps = BlipSteps(model.text_decoder, self.eos, self.pad)
        self.trained = True

    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, device: str | None = None, precision: str = "auto") -> BlipCaptioner:
        from transformers import (AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor)

        dev = pick_device(device)
        if spec.get("config"):  # a tiny random BLIP on the same code path, for tests
            tokenizer = byte_level_tokenizer()
            cfg = dict(spec["config"])
            end = tokenizer.eos_token_id
            text_cfg = {**cfg["text_config"], "vocab_size": len(tokenizer) + 1, "bos_token_id": len(tokenizer),
                        "sep_token_id": end, "pad_token_id": end, "eos_token_id": end}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(spec.get("seed", 0)))
                model = BlipForConditionalGeneration(BlipConfig(text_config=text_cfg, vision_config=cfg["vision_config"]))
            size = cfg["vision_config"]["image_size"]
            processor = BlipImageProcessor(size={"height": size, "width": size})
        else:
            try:
                model = BlipForConditionalGeneration.from_pretrained(spec["model"])
                processor = BlipImageProcessor.from_pretrained(spec["model"])
                tokenizer = AutoTokenizer.from_pretrained(spec["model"])
            except OSError as err:
                raise _network_error(spec, err) from err
        captioner = cls(model, processor, tokenizer, name=spec["name"], prompt=spec.get("prompt", ""), device=dev,
                        dtype=pick_dtype(dev, precision))
        captioner.trained = not spec.get("config")  # a tiny random BLIP writes noise
        return captioner

    def memory(self, images: Sequence[ImageInput]) -> Memory:
        size = self.processor.size.get("height", 384)
        pixels = self.processor(images=load_images(images, reduce_to=2 * size), return_tensors="pt")["pixel_values"]
        embeds = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype))[0]
        return {"image": embeds}

    def prompt_ids(self) -> list[int]:
        return [self.bos, *self.tokenizer.encode(self.prompt, add_special_tokens=False)] if self.prompt else [self.bos]

    def decode_text(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return f"{self.prompt} {text}" if self.prompt else text


# --------------------------------------------------------------------------- CoCa
def _block_parts(block: nn.Module) -> tuple[nn.MultiheadAttention, int]:
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
        raise HerbariaError("this CoCa variant uses custom attention blocks the cached decoder does not support")
    return attn, attn.num_heads


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, n, d // n).transpose(1, 2)


def _self_attention_step(block: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                         mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """open_clip's ResidualAttentionBlock on new tokens, with cached keys/values of the earlier ones."""
    attn, heads = _block_parts(block)
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = attn.out_proj(out.transpose(1, 2).reshape(x.shape))
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (k, v)


def _cross_attention_step(block: nn.Module, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    attn, heads = _block_parts(block)
    d = x.shape[-1]
    q = _heads(F.linear(block.ln_1(x), attn.in_proj_weight[:d], attn.in_proj_bias[:d]), heads)
    out = F.scaled_dot_product_attention(q, kv[0], kv[1])
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(x.shape)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _cross_kv(block: nn.Module, image_embs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    attn, heads = _block_parts(block)
    d = image_embs.shape[-1]
    k, v = F.linear(block.ln_1_kv(image_embs), attn.in_proj_weight[d:], attn.in_proj_bias[d:]).chunk(2, dim=-1)
    return _heads(k, heads), _heads(v, heads)


class CocaSteps:
    """`StepModel` over CoCa's unimodal text tower + multimodal decoder; cache = per-layer (k, v) lists."""

    def __init__(self, model: nn.Module, eos: int, pad: int) -> None:
        self.text, self.decoder = model.text, model.text_decoder
        self.eos_token_ids, self.pad_token_id = (eos,), pad
        self.max_positions = int(self.decoder.context_length)

    def forward_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     memory: Memory, cache: Any, use_cache: bool) -> tuple[torch.Tensor, Any]:
        if int(position_ids.max()) >= self.max_positions:
            raise BadInput(f"CoCa decodes at most {self.max_positions} tokens including the prompt")
        cache = cache or {"self": [None] * (len(self.text.transformer.resblocks) + len(self.decoder.resblocks)),
                          "cross": None}
        if cache["cross"] is None:
            cache["cross"] = [_cross_kv(b, memory["image"]) for b in self.decoder.cross_attn]
        new = input_ids.shape[1]
        total = attention_mask.shape[1]
        # key j is visible to new query i when it is not padding and not in the future; each query sees itself
        query_pos = torch.arange(total - new, total, device=input_ids.device)
        key_pos = torch.arange(total, device=input_ids.device)
        causal = key_pos[None, :] <= query_pos[:, None]
        mask = (attention_mask.bool()[:, None, :] & causal[None]) | (key_pos[None, None, :] == query_pos[None, :, None])
        mask = mask[:, None]  # (B, 1, new, total)
        dtype = self.text.token_embedding.weight.dtype
        x = self.text.token_embedding(input_ids).to(dtype) + self.text.positional_embedding[position_ids].to(dtype)
        layer = 0
        for block in self.text.transformer.resblocks:
            x, cache["self"][layer] = _self_attention_step(block, x, cache["self"][layer], mask)
            layer += 1
        for block, cross, kv in zip(self.decoder.resblocks, self.decoder.cross_attn, cache["cross"]):
            x, cache["self"][layer] = _self_attention_step(block, x, cache["self"][layer], mask)
            x = _cross_attention_step(cross, x, kv)
            layer += 1
        logits = self.decoder.ln_final(x[:, -1]) @ self.decoder.text_projection
        return logits.float(), cache if use_cache else None

    def expand_cache(self, cache: Any, repeats: int) -> Any:
        cache["self"] = [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in cache["self"]]
        cache["cross"] = [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in cache["cross"]]
        return cache

    def reorder_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        cache["self"] = [(k[rows], v[rows]) for k, v in cache["self"]]  # cross rows are equal within an image
        return cache


class CocaCaptioner(_ImageCaptioner):
    """open_clip CoCa (e.g. coca_ViT-B-32 mscoco_finetuned_laion2b_s13b_b90k) through our loop."""

    kind = "coca"

    def __init__(self, model: nn.Module, preprocess: Any, tokenizer: Any, *, name: str, prompt: str,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.preprocess, self.tokenizer = model.to(device, dtype).eval(), preprocess, tokenizer
        self.name, self.prompt, self.device, self.dtype = name, prompt, device, dtype
        self.sot, self.eot = int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)
        self.steps = CocaSteps(model, self.eot, int(getattr(model, "pad_id", 0)))
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple) else size)
        self.trained = True

    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, device: str | None = None, precision: str = "auto") -> CocaCaptioner:
        import open_clip

        dev = pick_device(device)
        if spec.get("config"):
            open_clip.add_model_config(preset_path(spec["config"]))
        with torch.random.fork_rng(devices=[]):
            if spec.get("seed") is not None:
                torch.manual_seed(int(spec["seed"]))
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(spec["model"], pretrained=spec.get("pretrained"))
            except Exception as err:  # open_clip raises plain RuntimeErrors for download failures
                raise _network_error(spec, err) from err
            if not spec.get("pretrained"):  # open_clip leaves the decoder's output projection uninitialised
                proj = model.text_decoder.text_projection
                nn.init.normal_(proj, std=proj.shape[0] ** -0.5)
        tokenizer = open_clip.get_tokenizer(spec["model"])
        captioner = cls(model, preprocess, tokenizer, name=spec["name"], prompt=spec.get("prompt", ""), device=dev,
                        dtype=pick_dtype(dev, precision))
        captioner.trained = bool(spec.get("pretrained"))  # random weights: speed benchmarks and tests only
        return captioner

    def memory(self, images: Sequence[ImageInput]) -> Memory:
        pixels = torch.stack([self.preprocess(im) for im in load_images(images, reduce_to=2 * self.image_size)])
        _, embs = self.model._encode_image(pixels.to(self.device, self.dtype))
        return {"image": embs}

    def prompt_ids(self) -> list[int]:
        return [self.sot, *self.tokenizer.encode(self.prompt)] if self.prompt else [self.sot]

    def decode_text(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens).replace("<start_of_text>", "").replace("<end_of_text>", "").strip()
        return f"{self.prompt} {text}" if self.prompt else text

    def limit(self, options: DecodeOptions | None) -> DecodeOptions:
        options = options or DecodeOptions()
        room = self.steps.max_positions - len(self.prompt_ids())
        return options.with_(max_new_tokens=min(options.max_new_tokens, room),
                             min_new_tokens=min(options.min_new_tokens, room))
