"""`AutoregressiveWrapper`: next-token loss and sampling (`generate`) with a key/value cache."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def top_k(logits: Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> Tensor:
    """Keep the k largest logits (default: 10% of the vocabulary), the rest -inf."""
    num_tokens = logits.shape[-1]
    k = min(k if k is not None else math.ceil(frac_num_tokens * num_tokens), num_tokens)
    val, ind = torch.topk(logits, k)
    return torch.full_like(logits, float("-inf")).scatter_(1, ind, val)


def top_p(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Nucleus filtering: keep the smallest set of logits whose probability mass exceeds `thres`."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cum_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = F.pad(cum_probs > thres, (1, -1), value=False)
    sorted_logits[remove] = float("-inf")
    return sorted_logits.scatter(1, sorted_indices, sorted_logits)


def min_p(logits: Tensor, min_p: float = 0.1) -> Tensor:
    probs = logits.softmax(dim=-1)
    limit = min_p * probs.amax(dim=-1, keepdim=True)
    return torch.where(probs < limit, float("-inf"), logits)


FILTER_LOGITS_FN: dict[str, Callable[..., Tensor]] = {"top_k": top_k, "top_p": top_p, "min_p": min_p}


def align_right(t: Tensor, lens: Tensor, pad_id: int = 0) -> Tensor:
    """Move each row's first `lens[i]` tokens to the right end, padding the left with `pad_id`."""
    batch, seq_len = t.shape[:2]
    pad_lens = seq_len - lens
    max_pad = int(pad_lens.amax())
    t = F.pad(t, (max_pad, 0), value=pad_id)
    offset = max_pad - pad_lens
    rows = torch.arange(batch, device=t.device)[:, None]
    cols = torch.arange(seq_len, device=t.device)[None, :] + offset[:, None]
    return t[rows, cols]


class AutoregressiveWrapper(nn.Module):
    def __init__(self, net: nn.Module, ignore_index: int = -100, pad_value: int = 0) -> None:
        super().__init__()
        self.net = net
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.max_seq_len = net.max_seq_len

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor | list[Tensor],
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        prompt_lens: Tensor | None = None,
        filter_logits_fn: str | Callable[..., Tensor] = top_k,
        restrict_to_max_seq_len: bool = True,
        filter_kwargs: dict[str, Any] | None = None,
        cache_kv: bool = True,
        return_intermediates: bool = False,
        **kwargs: Any,
    ) -> Any:
        was_training = self.training
        self.eval()
        try:
            return self._generate(
                prompts, seq_len, eos_token, temperature, prompt_lens, filter_logits_fn,
                restrict_to_max_seq_len, filter_kwargs or {}, cache_kv, return_intermediates, kwargs,
            )  # fmt: skip
        finally:
            self.train(was_training)

    def _generate(self, prompts, seq_len, eos_token, temperature, prompt_lens, filter_logits_fn,
                  restrict_to_max_seq_len, filter_kwargs, cache_kv, return_intermediates, kwargs):  # fmt: skip
        if isinstance(prompts, list):
            prompt_lens = torch.tensor([p.shape[0] for p in prompts], device=prompts[0].device)
            prompts = nn.utils.rnn.pad_sequence(prompts, batch_first=True)
        unbatched = prompts.ndim == 1
        if unbatched:
            prompts = prompts[None]
        t = prompts.shape[1]
        if isinstance(filter_logits_fn, str):
            if filter_logits_fn not in FILTER_LOGITS_FN:
                raise ValueError(f"filter_logits_fn must be one of {', '.join(FILTER_LOGITS_FN)}")
            filter_logits_fn = FILTER_LOGITS_FN[filter_logits_fn]
        seq_start_pos = None
        if prompt_lens is not None:
            prompts = align_right(prompts, prompt_lens, pad_id=self.pad_value)
            seq_start_pos = t - prompt_lens

        out, cache, max_seq_len = prompts, None, self.max_seq_len
        is_eos = None
        for _ in range(seq_len):
            x = out
            if restrict_to_max_seq_len:
                exceeded = out.shape[-1] > max_seq_len
                if cache_kv and exceeded and not self.net.can_cache_kv_outside_max_seq_len:
                    raise ValueError(
                        "cannot decode past max_seq_len with a key/value cache and absolute positions; "
                        "use rotary positions or cache_kv=False"
                    )
                x = out[:, -max_seq_len:]
                if cache is not None:
                    for inter in cache.attn_intermediates:
                        if inter.layer_type == "a":
                            inter.cached_kv = tuple(c[..., -(max_seq_len - 1) :, :] for c in inter.cached_kv)
            logits, new_cache = self.net(
                x, return_intermediates=True, cache=cache, seq_start_pos=seq_start_pos, **kwargs
            )
            if cache_kv and self.net.can_cache_kv:
                cache = new_cache
            logits = logits[:, -1]
            if temperature == 0.0:
                sample = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = F.softmax(filter_logits_fn(logits, **filter_kwargs) / temperature, dim=-1)
                sample = torch.multinomial(probs, 1)
            out = torch.cat((out, sample), dim=-1)
            if eos_token is None:
                continue
            is_eos = out == eos_token
            if is_eos.any(dim=-1).all():
                break
        if eos_token is not None and is_eos is not None:
            after_eos = F.pad(is_eos, (1, -1)).float().cumsum(dim=-1) >= 1
            out = out.masked_fill(after_eos, self.pad_value)
        out = out[:, t:]
        if unbatched:
            out = out[0]
        return (out, cache) if return_intermediates else out

    def forward(
        self, x: Tensor, return_outputs: bool = False, prepend_embeds: Tensor | None = None, **kwargs: Any
    ) -> Any:
        inp, target = x, x[:, 1:]
        inp = torch.where(inp == self.ignore_index, self.pad_value, inp)
        logits, cache = self.net(inp, return_intermediates=True, prepend_embeds=prepend_embeds, **kwargs)
        if prepend_embeds is not None:
            logits = logits[:, prepend_embeds.shape[1] :]
        logits = logits[:, :-1]
        loss = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=self.ignore_index)
        return (loss, (logits, cache)) if return_outputs else loss
