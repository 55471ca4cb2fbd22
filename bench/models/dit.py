"""The embedded family's networks in plain torch (docs/performance.md#start-up-the-lean-embedded-model):
a PixArt-style DiT, a small CLIP text encoder, the word-level tokenizer and the two schedulers,
loaded from the same model folder diffusers and transformers write and computing the same
numbers bit for bit.

Importing diffusers and transformers costs ~2 s of CPU in every job (both import `torch._dynamo`,
and sympy with it); these classes import torch, numpy, safetensors and tokenizers only. They
mirror, op for op and in the same order, what diffusers' `PixArtTransformer2DModel` (norm type
`ada_norm_single`, attention through `F.scaled_dot_product_attention` as its `AttnProcessor2_0`
does), transformers' `CLIPTextModel` (SDPA attention), `PreTrainedTokenizerFast`,
`DDIMScheduler` and `FlowMatchEulerDiscreteScheduler` compute for the configurations the embedded
models use, with the same module tree, so the shipped weights load under their own names, a
saved denoiser is a diffusers checkpoint, and LoRA (peft) finds the same target modules.
tests/test_dit_equivalence.py checks outputs and gradients with `torch.equal`; a configuration
outside what is mirrored fails on loading, naming the key."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONFIG = "config.json"
DENOISER_WEIGHTS = "diffusion_pytorch_model.safetensors"
TEXT_ENCODER_WEIGHTS = "model.safetensors"


class Config(dict):
    """A model's config.json, read as attributes (`config.sample_size`), like diffusers' FrozenDict."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def _read_config(folder: Path, expected: dict[str, Any], what: str) -> Config:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {folder}: not a {what} folder")
    config = Config(json.loads(path.read_text()))
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ValueError(
                f"{path}: {key}={config[key]!r}; the lean {what} ({__name__}) mirrors {key}={value!r} only "
                "(load this model with the diffusers/transformers classes)"
            )
    return config


def _load_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    state = load_file(path)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")


@dataclass
class DenoiserOutput:
    sample: torch.Tensor


@dataclass
class TextOutput:
    last_hidden_state: torch.Tensor


# ------------------------------------------------------------------------------------------------
# the denoiser: diffusers' PixArtTransformer2DModel, norm_type ada_norm_single


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding, cos first (diffusers' get_timestep_embedding with flip_sin_to_cos=True,
    downscale_freq_shift=0, scale=1, max_period=10000), in its op order."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / half
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = 1 * emb
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, base_size: int, interpolation_scale: float) -> torch.Tensor:
    """(grid_size**2, embed_dim) fixed 2-D sin-cos positions (diffusers' get_2d_sincos_pos_embed)."""
    grid_h = torch.arange(grid_size, dtype=torch.float32) / (grid_size / base_size) / interpolation_scale
    grid_w = torch.arange(grid_size, dtype=torch.float32) / (grid_size / base_size) / interpolation_scale
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0).reshape([2, 1, grid_size, grid_size])

    def one_axis(dim: int, pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = torch.outer(pos.reshape(-1), omega)
        return torch.concat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.concat([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, size: int, patch_size: int, in_channels: int, dim: int, interpolation_scale: float):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=(patch_size, patch_size), stride=patch_size, bias=True)
        self.patch_size = patch_size
        self.grid = grid = size // patch_size
        pos = sincos_pos_embed_2d(dim, grid, base_size=grid, interpolation_scale=interpolation_scale)
        self.register_buffer("pos_embed", pos.float().unsqueeze(0), persistent=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.shape[-2] // self.patch_size != self.grid or latent.shape[-1] // self.patch_size != self.grid:
            size = self.grid * self.patch_size
            raise ValueError(f"input of {tuple(latent.shape[-2:])} pixels; the model's sample_size is {size}")
        latent = self.proj(latent).flatten(2).transpose(1, 2)  # (B, N, D)
        return (latent + self.pos_embed).to(latent.dtype)


class TimestepEmbedder(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim, True)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim, True)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class CombinedTimestepEmbeddings(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(256, dim)

    def forward(self, timestep: torch.Tensor, hidden_dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_embedding(timestep, 256).to(dtype=hidden_dtype))  # (B, D)


class AdaLayerNormSingle(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.emb = CombinedTimestepEmbeddings(dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 6 * dim, bias=True)

    def forward(self, timestep: torch.Tensor, hidden_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.emb(timestep, hidden_dtype)
        return self.linear(self.silu(embedded)), embedded


class CaptionProjection(nn.Module):
    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features=in_features, out_features=dim, bias=True)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(in_features=dim, out_features=dim, bias=True)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(caption)))


class Attention(nn.Module):
    """Multi-head attention with diffusers' `Attention` parameter names and `AttnProcessor2_0`'s ops."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=True)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=True)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=True), nn.Dropout(dropout)])

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        # bias: (B, 1, L) additive (0 keep, -10000 drop)
        batch_size, sequence_length, _ = hidden_states.shape if context is None else context.shape
        if bias is not None:
            if bias.shape[-1] != sequence_length:
                raise ValueError(f"attention mask of {bias.shape[-1]} tokens for {sequence_length} tokens")
            if bias.shape[0] < batch_size * self.heads:
                bias = bias.repeat_interleave(self.heads, dim=0, output_size=bias.shape[0] * self.heads)
            bias = bias.view(batch_size, self.heads, -1, bias.shape[-1])
        query = self.to_q(hidden_states)
        context = hidden_states if context is None else context
        key = self.to_k(context)
        value = self.to_v(context)
        head_dim = key.shape[-1] // self.heads
        query = query.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, self.heads * head_dim).to(query.dtype)
        return self.to_out[1](self.to_out[0](out))  # diffusers then divides by 1.0: the same floats


class GELUProjection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class Block(nn.Module):
    """diffusers' BasicTransformerBlock with norm_type 'ada_norm_single' (PixArt-alpha)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, eps: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.attn1 = Attention(dim, heads, head_dim, None, dropout)
        self.norm2 = nn.LayerNorm(dim, eps, False)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, dropout)
        self.ff = FeedForward(dim, dropout)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        context_bias: torch.Tensor | None,
        timestep: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch_size = hidden_states.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + timestep.reshape(batch_size, 6, -1)
        ).chunk(6, dim=1)  # each (B, 1, D)
        norm_hidden_states = self.norm1(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
        attn_output = self.attn1(norm_hidden_states, bias=bias)
        attn_output = gate_msa * attn_output
        hidden_states = attn_output + hidden_states
        attn_output = self.attn2(hidden_states, context, context_bias)
        hidden_states = attn_output + hidden_states
        norm_hidden_states = self.norm2(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_mlp) + shift_mlp
        ff_output = self.ff(norm_hidden_states)
        ff_output = gate_mlp * ff_output
        return ff_output + hidden_states


PIXART_MIRRORED = {
    "_class_name": "PixArtTransformer2DModel",
    "norm_type": "ada_norm_single",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_type": "default",
    "norm_elementwise_affine": False,
    "upcast_attention": False,
    "use_additional_conditions": False,
    "num_embeds_ada_norm": 1000,
}
PIXART_DEFAULTS = {"dropout": 0.0, "norm_eps": 1e-6, "interpolation_scale": None, "out_channels": None}


class PixArtDiT(nn.Module):
    """diffusers' PixArtTransformer2DModel for the embedded family's configs (PIXART_MIRRORED),
    parameter for parameter: `from_pretrained` reads a diffusers folder, `save_pretrained` writes one."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config = Config({**PIXART_DEFAULTS, **config})
        for key, value in PIXART_MIRRORED.items():
            if key != "_class_name" and config.get(key, value) != value:
                raise ValueError(f"PixArtDiT mirrors {key}={value!r} only, got {config[key]!r}")
        if config.get("caption_channels") is None or config.get("cross_attention_dim") is None:
            raise ValueError("PixArtDiT needs caption_channels and cross_attention_dim (a text-conditioned model)")
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        dim = heads * head_dim
        self.out_channels = config.in_channels if config.out_channels is None else config.out_channels
        scale = config.interpolation_scale
        scale = scale if scale is not None else max(config.sample_size // 64, 1)
        # registration order = diffusers' (parameters() order: the optimiser's and grad clipping's)
        self.pos_embed = PatchEmbed(config.sample_size, config.patch_size, config.in_channels, dim, scale)
        self.transformer_blocks = nn.ModuleList(
            [
                Block(dim, heads, head_dim, config.cross_attention_dim, config.norm_eps, config.dropout)
                for _ in range(config.num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PixArtDiT:
        """A diffusers PixArtTransformer2DModel folder (config.json + safetensors), in eval mode."""
        folder = Path(folder)
        model = cls(_read_config(folder, PIXART_MIRRORED, "PixArt transformer"))
        _load_weights(model, folder / DENOISER_WEIGHTS)
        model.config["_name_or_path"] = str(folder)  # diffusers records where a model came from
        return model.eval()

    def save_pretrained(self, folder: str | Path) -> None:
        """The diffusers layout, loadable by PixArtTransformer2DModel.from_pretrained."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": PIXART_MIRRORED["_class_name"], **self.config}
        (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, folder / DENOISER_WEIGHTS, metadata={"format": "pt"})

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DenoiserOutput | tuple[torch.Tensor]:
        # hidden_states: (B, C, H, W); encoder_hidden_states: (B, L, caption_channels); masks (B, L) 1 = keep
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = ((1 - attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        batch_size = hidden_states.shape[0]
        p = self.config.patch_size
        height, width = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        hidden_states = self.pos_embed(hidden_states)  # (B, N, D)
        timestep, embedded_timestep = self.adaln_single(timestep, hidden_states.dtype)
        context = self.caption_projection(encoder_hidden_states)
        context = context.view(batch_size, -1, hidden_states.shape[-1])
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, context, encoder_attention_mask, timestep, attention_mask)
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        hidden_states = self.norm_out(hidden_states)
        hidden_states = hidden_states * (1 + scale) + shift
        hidden_states = self.proj_out(hidden_states).squeeze(1)
        hidden_states = hidden_states.reshape(shape=(-1, height, width, p, p, self.out_channels))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        output = hidden_states.reshape(shape=(-1, self.out_channels, height * p, width * p))
        return DenoiserOutput(sample=output) if return_dict else (output,)


# ------------------------------------------------------------------------------------------------
# the text encoder: transformers' CLIPTextModel (SDPA attention)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(max_positions, dim)
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_length = input_ids.shape[-1]
        if seq_length > self.position_embedding.weight.shape[0]:
            raise ValueError(f"{seq_length} tokens; the text encoder has {self.position_embedding.weight.shape[0]}")
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids[:, :seq_length])


class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # mask: (B, 1, L, L) bool (True = attend), or None for the plain causal mask
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        queries = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        values = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        q_length = queries.shape[2]
        out = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=mask,
            dropout_p=0.0,
            scale=self.scale,
            is_causal=mask is None and q_length > 1,
        )
        out = out.reshape(out.shape[0], -1, q_length, values.shape[-1]).transpose(1, 2).contiguous()
        out = out.reshape(*input_shape, -1).contiguous()
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x)  # quick_gelu
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, hidden)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), mask)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    def __init__(self, layers: list[CLIPEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


CLIP_MIRRORED = {"model_type": "clip_text_model", "hidden_act": "quick_gelu", "attention_dropout": 0.0}


class CLIPText(nn.Module):
    """transformers' CLIPTextModel (last_hidden_state; no pooled output) for the configs in CLIP_MIRRORED."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config = Config(config)
        dim = config.hidden_size
        eps = config.get("layer_norm_eps", 1e-5)
        self.embeddings = CLIPTextEmbeddings(config.vocab_size, dim, config.max_position_embeddings)
        self.encoder = CLIPEncoder(
            [
                CLIPEncoderLayer(dim, config.num_attention_heads, config.intermediate_size, eps)
                for _ in range(config.num_hidden_layers)
            ]
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CLIPText:
        folder = Path(folder)
        model = cls(_read_config(folder, CLIP_MIRRORED, "CLIP text encoder"))
        _load_weights(model, folder / TEXT_ENCODER_WEIGHTS)
        return model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextOutput:
        # input_ids, attention_mask: (B, L); 1 = a token, 0 = padding
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        hidden_states = self.embeddings(input_ids)
        length = hidden_states.shape[1]
        mask = None  # all tokens attend: SDPA's causal flag (transformers skips the mask then)
        if attention_mask is not None and not bool(attention_mask.all()):
            causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, L, L)
        for layer in self.encoder.layers:
            hidden_states = layer(hidden_states, mask)
        return TextOutput(last_hidden_state=self.final_layer_norm(hidden_states))


# ------------------------------------------------------------------------------------------------
# the tokenizer: transformers' PreTrainedTokenizerFast over the same tokenizer.json


@dataclass
class Tokens:
    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64


class WordTokenizer:
    """The saved word-level tokenizer (tokenizer.json) through the `tokenizers` library alone,
    padding and truncating on the right as PreTrainedTokenizerFast does."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        self.model_max_length = int(settings["model_max_length"])
        self.pad_token = settings["pad_token"]
        for side in ("padding_side", "truncation_side"):
            if settings.get(side, "right") != "right":
                raise ValueError(f"{folder}: {side}={settings[side]!r}; the lean tokenizer pads and truncates right")
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.pad_token_id = self._tokenizer.token_to_id(self.pad_token)
        if self.pad_token_id is None:
            raise ValueError(f"{folder}: pad token {self.pad_token!r} is not in the vocabulary")

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        texts: list[str],
        padding: str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> Tokens:
        if padding != "max_length" or return_tensors != "pt":
            raise ValueError("the lean tokenizer pads to max_length and returns torch tensors only")
        length = self.model_max_length if max_length is None else int(max_length)
        core = self._tokenizer
        if truncation:
            core.enable_truncation(length, stride=0, strategy="longest_first", direction="right")
        else:
            core.no_truncation()
        core.enable_padding(
            length=length, direction="right", pad_id=self.pad_token_id, pad_type_id=0, pad_token=self.pad_token
        )
        encoded = core.encode_batch(list(texts), add_special_tokens=True)
        return Tokens(
            torch.tensor([e.ids for e in encoded], dtype=torch.long),
            torch.tensor([e.attention_mask for e in encoded], dtype=torch.long),
        )


# ------------------------------------------------------------------------------------------------
# the schedulers: the timesteps and noise levels of diffusers' DDIMScheduler and
# FlowMatchEulerDiscreteScheduler (the samplers in bench/sampling.py do the stepping)


class FlowMatchSchedule:
    """FlowMatchEulerDiscreteScheduler's sigmas and timesteps (static shift; no dynamic shifting,
    terminal stretch, inversion or Karras/exponential/beta spacing)."""

    MIRRORED = {
        "use_dynamic_shifting": False,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
    }

    def __init__(self, config: dict[str, Any]):
        for key, value in self.MIRRORED.items():
            if config.get(key, value) != value:
                raise ValueError(f"FlowMatchSchedule mirrors {key}={value!r} only, got {config[key]!r}")
        self.config = Config({"num_train_timesteps": 1000, "shift": 1.0, **config})
        n, shift = self.config.num_train_timesteps, self.config.shift
        timesteps = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()).to(dtype=torch.float32)
        sigmas = timesteps / n
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = sigmas * n
        self.sigmas = sigmas.to("cpu")
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()

    @property
    def shift(self) -> float:
        return self.config.shift

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.config.num_train_timesteps
        timesteps = np.linspace(self.sigma_max * n, self.sigma_min * n, num_inference_steps)
        sigmas = timesteps / n
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32)
        self.num_inference_steps = num_inference_steps
        self.timesteps = sigmas * n
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])


class DDIMSchedule:
    """DDIMScheduler's alphas_cumprod and timesteps (linear or scaled-linear betas)."""

    def __init__(self, config: dict[str, Any]):
        defaults = {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "trained_betas": None,
            "clip_sample": True,
            "set_alpha_to_one": True,
            "steps_offset": 0,
            "prediction_type": "epsilon",
            "thresholding": False,
            "clip_sample_range": 1.0,
            "timestep_spacing": "leading",
            "rescale_betas_zero_snr": False,
        }
        self.config = config = Config({**defaults, **config})
        for key, value in {"trained_betas": None, "rescale_betas_zero_snr": False, "thresholding": False}.items():
            if config[key] != value:
                raise ValueError(f"DDIMSchedule mirrors {key}={value!r} only, got {config[key]!r}")
        n = config.num_train_timesteps
        if config.beta_schedule == "linear":
            self.betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
        elif config.beta_schedule == "scaled_linear":
            self.betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float32) ** 2
        else:
            raise ValueError(
                f"DDIMSchedule mirrors beta_schedule 'linear' or 'scaled_linear', got {config.beta_schedule!r}"
            )
        if config.timestep_spacing not in ("leading", "linspace", "trailing"):
            raise ValueError(f"timestep_spacing {config.timestep_spacing!r}: 'leading', 'linspace' or 'trailing'")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, n)[::-1].copy().astype(np.int64))

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.config.num_train_timesteps
        if num_inference_steps > n:
            raise ValueError(f"{num_inference_steps} inference steps; the schedule has {n} timesteps")
        self.num_inference_steps = num_inference_steps
        if self.config.timestep_spacing == "linspace":
            timesteps = np.linspace(0, n - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        elif self.config.timestep_spacing == "leading":
            step_ratio = n // num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
            timesteps += self.config.steps_offset
        else:
            step_ratio = n / num_inference_steps
            timesteps = np.round(np.arange(n, 0, -step_ratio)).astype(np.int64)
            timesteps -= 1
        self.timesteps = torch.from_numpy(timesteps)


SCHEDULES = {"FlowMatchEulerDiscreteScheduler": FlowMatchSchedule, "DDIMScheduler": DDIMSchedule}


def load_schedule(folder: str | Path) -> FlowMatchSchedule | DDIMSchedule:
    """The schedule of a diffusers scheduler folder (scheduler_config.json)."""
    path = Path(folder) / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no scheduler_config.json in {folder}")
    config = json.loads(path.read_text())
    name = config.get("_class_name")
    if name not in SCHEDULES:
        raise ValueError(f"{path}: scheduler {name!r}; the lean path mirrors {sorted(SCHEDULES)}")
    return SCHEDULES[name]({k: v for k, v in config.items() if not k.startswith("_")})
