"""GPT: a decoder-only Transformer language model (GPT-2 layout), with a preallocated KV cache.

The layout follows GPT-2 / nanoGPT: token (+ learned position) embeddings, `n_layer` pre-LayerNorm
blocks of causal self-attention and a GELU MLP, a final LayerNorm and an lm_head that by default
shares its weight with the token embedding. Rotary positions (GPT-NeoX style) replace the learned
position table when `positions: rotary`.

Weights import from and export to Hugging Face `GPT2LMHeadModel` (gpt_hf.py);
generation lives in forgeml/generation/sampling.py and drives `GPT.forward` with a `KVCache`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.schema import TokenSpec

ROPE_BASE = 10000.0  # the wavelength base of RoPE (Su et al.), as in GPT-NeoX and Llama


class GPTConfig(BaseModel):
    """`model:` section for `name: gpt`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["gpt"] = "gpt"
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)  # n_embd must be a multiple
    n_embd: int = Field(128, ge=1)
    block_size: int = Field(256, ge=1)  # the context: the most positions the model ever sees
    dropout: float = Field(0.0, ge=0, lt=1)  # embeddings, attention weights, residual branches
    bias: bool = True  # biases in every Linear and LayerNorm (GPT-2: True)
    tie_embeddings: bool = True  # lm_head shares the token embedding's weight
    positions: Literal["learned", "rotary"] = "learned"
    # gelu: exact erf GELU; gelu_tanh: the tanh approximation GPT-2 was trained with (HF gelu_new).
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    vocab_size: int | None = Field(None, ge=1)  # None: taken from the tokenizer at build time

    @property
    def generative(self) -> bool:
        return True  # a language model: the language_modeling task trains it

    @model_validator(mode="after")
    def _heads_divide_n_embd(self) -> GPTConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} must be a multiple of model.n_head={self.n_head} "
                "(each head gets n_embd / n_head dims); change one of them"
            )
        if self.positions == "rotary" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(
                f"model.positions=rotary needs an even head dim, but n_embd / n_head = "
                f"{self.n_embd // self.n_head}; change model.n_embd or model.n_head"
            )
        return self


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, preallocated and filled in place.

    `k` and `v` are (n_layer, B, n_head, max_len, head_dim); a forward over T new tokens writes
    slots [length, length + T) of every layer and then advances `length`, so decoding never
    concatenates tensors. `key_mask` (B, max_len) bool, True = a real token, is only set for
    left-padded batches: padded slots are then never attended. Create with `GPT.new_cache`.
    """

    k: Tensor
    v: Tensor
    key_mask: Tensor | None = None
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


class Context(NamedTuple):
    """What every layer's attention of one forward shares."""

    rotary: tuple[Tensor, Tensor] | None  # cos, sin broadcastable to (B, H, T, head_dim)
    attn_mask: Tensor | None  # (B, 1, T, end) bool with a cache; None: plain causal


# One layer's cache: (keys, values) each (B, H, max_len, head_dim), and the first slot to fill.
LayerCache = tuple[Tensor, Tensor, int]


def rotary_tables(length: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos and sin, each (length, head_dim): the angle of pair i at position p is p / base^(2i/d).

    GPT-NeoX layout: dims i and i + head_dim/2 form a pair, so the angles are repeated twice.
    """
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # (length, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (length, D)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) queries or keys; cos/sin broadcast as (1 or B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        # One matmul for q, k and v; the output is [q | k | v], each split into heads (the same
        # layout as GPT-2's c_attn, so imports only transpose the weight).
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, ctx: Context, cache: LayerCache | None) -> Tensor:
        rotary, attn_mask = ctx
        b, t, c = x.shape
        # (B, T, 3C) -> 3 x (B, H, T, head_dim)
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q = apply_rotary(q, *rotary)
            k = apply_rotary(k, *rotary)
        if cache is None:
            # Training and plain forwards: T queries over the same T keys, top-left causal.
            dropout = self.dropout if self.training else 0.0
            if x.device.type == "cpu" and t <= _explicit_attention_max_len(q.dtype):
                y = _explicit_causal_attention(q, k, v, dropout)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k_cache, v_cache, start = cache  # (B, H, max_len, head_dim) each, this layer's
            end = start + t
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            # T queries over the `end` keys so far; GPT.forward built the mask for all layers
            # (None for one unpadded new token: it may attend every key).
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
            if t == 1 and x.device.type == "cpu" and x.dtype != torch.float32:
                y = _one_query_attention(q, keys, values, attn_mask)
            else:
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, H, T, head_dim) -> (B, T, C)
        return self.resid_drop(self.proj(y))


# Up to these context lengths, causal attention on CPU is faster as two matmuls and a masked
# softmax than torch's CPU flash-attention kernel, forward + backward (2 threads, B*H 48-96,
# head dim 32-64; bench/RESULTS.md "attention on CPU"): fp32 1.4x at T=64 but slower at 256;
# bf16 5x at T=64, 2.3x at 256, even at 512, slower at 1024.
_EXPLICIT_MAX_LEN = {torch.float32: 128, torch.bfloat16: 256}


def _explicit_attention_max_len(dtype: torch.dtype) -> int:
    return _EXPLICIT_MAX_LEN.get(dtype, 0)


def _explicit_causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v for (B, H, T, D) q, k, v: what SDPA computes
    with is_causal=True (softmax accumulates in fp32 for bf16, as SDPA's kernels do)."""
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, T, T)
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu_(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    if dropout > 0.0:
        weights = F.dropout(weights, dropout)
    return weights @ v  # (B, H, T, D)


def _one_query_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
    """Attention of one query per row, (B, H, 1, D) over (B, H, L, D) keys/values, in fp32.

    For bf16 decoding on CPU: there torch's flash-attention kernel costs far more per key than
    two small matmuls (measured ~5x at 1024 keys), and fp32 scores match its fp32 accumulation.
    """
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, 1, L)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)  # (B, H, 1, D)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = nn.GELU(approximate="tanh" if cfg.activation == "gelu_tanh" else "none")
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        # eps 1e-5 is both torch's default and GPT-2's layer_norm_epsilon.
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, ctx: Context, cache: LayerCache | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), ctx, cache)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    """Decoder-only Transformer language model: token ids (B, T) -> next-token logits (B, T, V).

    Args:
        cfg: the model config; `cfg.vocab_size` must be set (`build_gpt` fills it in).
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ConfigError(
                "model.vocab_size is not set; build the gpt with build_gpt(cfg, vocab_size) or "
                "set model.vocab_size"
            )
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.positions == "learned" else None
        if cfg.positions == "rotary":
            # Recomputable from the config: non-persistent buffers, not in the state_dict.
            cos, sin = rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, head_dim)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # One (V, C) matrix: the embedding reads its rows, the lm_head scores against them.
            self.lm_head.weight = self.wte.weight
        self.apply(_init_weights)
        # GPT-2: each residual branch's output projection is scaled by 1/sqrt(2 * n_layer) so
        # the residual stream's variance does not grow with depth (2 branches per block).
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        padded: bool = False,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KVCache for `batch_size` rows of up to `max_len` tokens each.

        Args:
            padded: also allocate `key_mask` (all True); set its padded prompt slots to False
                before the first forward.
            dtype: of the keys and values; None: the dtype of the model's weights.
        """
        weight = self.wte.weight
        cfg = self.config
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        dtype = dtype or weight.dtype
        key_mask = None
        if padded:
            key_mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=weight.device)
        return KVCache(
            k=torch.empty(shape, dtype=dtype, device=weight.device),
            v=torch.empty(shape, dtype=dtype, device=weight.device),
            key_mask=key_mask,
        )

    def prepare_for_generation(self) -> GPT:
        """Lay out the matmul weights in memory the way this device and dtype decode fastest.

        Values, shapes, dtypes and state_dict keys do not change, only strides: on CPU in fp32,
        every weight (out, in) becomes the transpose of a contiguous (in, out) tensor, because
        MKL's one-row matmuls read that layout ~1.5x faster (the reason GPT-2's Conv1D layout wins
        there); otherwise (bf16 uses oneDNN, or GPU) weights are made contiguous again. Call it
        after loading and after `.to(dtype)`, on a model used for inference: state_dict tensors
        are then non-contiguous (call `.contiguous()` before saving them with safetensors).

        Returns:
            self.
        """
        weight = self.wte.weight
        column_major = weight.device.type == "cpu" and weight.dtype == torch.float32
        params = {id(m.weight): m.weight for m in self.modules() if isinstance(m, nn.Linear)}
        with torch.no_grad():
            for param in params.values():  # the tied embedding/lm_head matrix once
                data = param.data.contiguous()
                param.data = data.t().contiguous().t() if column_major else data
        return self

    def forward(
        self,
        idx: Tensor | Mapping[str, Tensor],
        past: KVCache | None = None,
        *,
        positions: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Next-token logits for every position (or only the last one).

        Args:
            idx: (B, T) int64 token ids, or forgeml's dict batch `{"tokens": (B, T) int64}` (other
                keys are ignored), so the training loop can call the model like any other.
            past: a KVCache holding earlier positions: the T tokens are appended at slot
                `past.length` and attend to everything cached before them (padded slots
                excepted). None: a plain causal forward over `idx` alone.
            positions: (T,) or (B, T) int64 position of each token; None: `past.length + 0..T-1`
                (0..T-1 without a cache). Left-padded batches pass per-row counts of real tokens.
            last_only: return only the last position's logits, (B, 1, V): during generation the
                full-vocab matmul for the other positions would be thrown away.

        Returns:
            (B, T, V) logits, or (B, 1, V) with `last_only`.
        """
        if isinstance(idx, Mapping):
            idx = idx["tokens"]
        b, t = idx.shape
        start = past.length if past is not None else 0
        if positions is None:
            if start + t > self.config.block_size:
                raise ValueError(
                    f"positions {start}..{start + t - 1} do not fit the context of "
                    f"block_size={self.config.block_size}; crop the input to the last "
                    f"{self.config.block_size} tokens"
                )
            positions = torch.arange(start, start + t, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(positions)  # (T, C) or (B, T, C) broadcasts over the batch
        else:
            # (T, D) -> (1, T, D), or (B, T, D) -> (B, 1, T, D): broadcast over the heads.
            cos = self.rope_cos[positions].unsqueeze(-3)
            sin = self.rope_sin[positions].unsqueeze(-3)
            rotary = (cos.to(x.dtype), sin.to(x.dtype))
        x = self.drop(x)
        if past is None:
            for block in self.blocks:
                x = block(x, Context(rotary, None), None)
        else:
            if start + t > past.max_len:
                raise ValueError(
                    f"the KVCache holds {past.max_len} positions, but {start} are filled and "
                    f"{t} more were given; allocate a larger cache with GPT.new_cache"
                )
            ctx = Context(rotary, _cache_mask(past, start, t, idx.device))
            for i, block in enumerate(self.blocks):
                x = block(x, ctx, (past.k[i], past.v[i], start))
            past.length = start + t
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters, the tied embedding/lm_head matrix counted once.

        Args:
            non_embedding: leave out the lookup tables that cost no FLOPs: the position table,
                and the token table when it is not tied (a tied table is also the lm_head's
                weight, a matmul, so it stays in, as in nanoGPT).
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() dedups tied weights
        if non_embedding:
            if self.wpe is not None:
                total -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.wte.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at a full context of block_size.

        The estimate of Kaplan et al. (2020) and PaLM (Chowdhery et al. 2022, app. B), as in
        nanoGPT's estimate_mfu: 6N + 12·L·H·Q·T, where
        - N = num_params(non_embedding=True): every weight is used in one multiply-add per token
          forward (2 FLOPs) and two backward (4 FLOPs);
        - L layers, H heads, Q = head dim, T = block_size: per layer, the attention scores QK^T
          and the weighted sum of V each cost 2·H·Q·T FLOPs per token forward, times 3 for
          forward + backward.
        Embedding lookups, LayerNorms, softmax and activations are left out.
        """
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        return 6 * self.num_params(non_embedding=True) + (
            12 * cfg.n_layer * cfg.n_head * head_dim * cfg.block_size
        )


def _init_weights(module: nn.Module) -> None:
    # GPT-2: N(0, 0.02) for every matmul and lookup weight, zero biases; LayerNorms stay at 1/0.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def _cache_mask(past: KVCache, start: int, t: int, device: torch.device) -> Tensor | None:
    """Boolean attention mask (True = attend) for T new queries over the `start + T` cached keys.

    Returns None for one new token without padding (it attends every key), else (T, start + T)
    or, for a padded batch, (B, 1, T, start + T).
    """
    end = start + t
    if past.key_mask is None:
        if t == 1:
            return None
        # Query i sits at slot start + i and sees slots 0..start + i: causal, offset by the cache.
        key = torch.arange(end, device=device)
        return key <= torch.arange(start, end, device=device)[:, None]  # (T, end)
    key = torch.arange(end, device=device)
    query = torch.arange(start, end, device=device)[:, None]  # (T, 1)
    # A padded query sees only itself: every query keeps at least one key, so no softmax row is
    # all -inf (nan that would leak into later layers through the padded slots' values).
    visible = past.key_mask[:, None, :end] | (key == query)  # (B, T, end)
    return (visible & (key <= query)).unsqueeze(1)  # (B, 1, T, end)


def build_gpt(cfg: GPTConfig, spec: TokenSpec | int) -> GPT:
    """Build a GPT for a tokenizer of `spec.vocab_size` ids (or `spec` ids, given as a number).

    `cfg.vocab_size` None takes the tokenizer's; a set one may be larger (e.g. padded to a multiple
    of 64 for faster matmuls) but not smaller.

    Raises:
        ConfigError: model.vocab_size is smaller than the tokenizer's vocabulary.
    """
    vocab_size = spec.vocab_size if isinstance(spec, TokenSpec) else int(spec)
    if cfg.vocab_size is None:
        cfg = cfg.model_copy(update={"vocab_size": vocab_size})
    elif cfg.vocab_size < vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {vocab_size} ids; "
            f"set model.vocab_size to at least {vocab_size}, or leave it out"
        )
    return GPT(cfg)
