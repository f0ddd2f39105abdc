"""`AutoregressiveWrapper`: next-token loss and sampling (`generate`) with a key/value cache."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError, UnsupportedOptionError
from .options import parse_options
from .spec_record import SpecRecorder


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


def top_a(logits: Tensor, min_p_pow: float = 2.0, min_p_ratio: float = 0.02) -> Tensor:
    """Drop logits whose probability is below `min_p_ratio * max_prob ** min_p_pow`."""
    probs = logits.softmax(dim=-1)
    limit = probs.amax(dim=-1, keepdim=True).pow(min_p_pow) * min_p_ratio
    return torch.where(probs < limit, float("-inf"), logits)


FILTER_LOGITS_FN["top_a"] = top_a


def identity(t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return t


def gumbel_noise(t: Tensor) -> Tensor:
    u = torch.rand_like(t)
    return -(-(u.clamp(min=1e-20).log())).clamp(min=1e-20).log()


def modify_cached_kv(cache: Any, fn: Callable[[Tensor], Tensor]) -> None:
    """Apply `fn` to every self-attention key/value tensor of a cache, in place."""
    for inter in cache.attn_intermediates:
        if inter.layer_type == "a" and inter.cached_kv is not None:
            inter.cached_kv = tuple(fn(t) for t in inter.cached_kv)


@dataclass
class AutoregressiveOptions:
    """AutoregressiveWrapper options, with x-transformers 2.31's defaults."""

    ignore_index: int = -100
    pad_value: int = 0
    mask_prob: float = 0.0
    add_attn_z_loss: bool = False
    next_embed_loss_weight: float = 0.1
    # the looped LM's exit-gate loss: kept in the spec, inert here (looped TransformerWrappers are refused)
    looped_loss_threshold_exit: float = 0.05
    looped_loss_slope: float = 50
    looped_exit_loss_weight: float = 1.0


class AutoregressiveWrapper(SpecRecorder, nn.Module):
    """Next-token training loss, sampling (`generate`) and beam search around a TransformerWrapper."""

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        self._record_spec({"net": net, **kwargs})
        o = parse_options("AutoregressiveWrapper", kwargs, AutoregressiveOptions)
        if not 0.0 <= o.mask_prob < 1.0:
            raise SpecError(f"AutoregressiveWrapper: mask_prob must be in [0, 1), got {o.mask_prob}")
        self.net = net
        self.options = o
        self.ignore_index, self.pad_value, self.mask_prob = o.ignore_index, o.pad_value, o.mask_prob
        self.add_attn_z_loss = o.add_attn_z_loss
        self.next_embed_loss_weight = o.next_embed_loss_weight
        self.add_continuous_pred_head = getattr(net, "add_continuous_pred_head", False)
        self.max_seq_len = net.max_seq_len

    @torch.no_grad()
    def beam_search(
        self,
        prompts: Tensor,
        seq_len: int,
        beams: int = 4,
        return_beams_and_scores: bool = False,
        eos_token: int | None = None,
        temperature: float = 1.0,
        stochastic: bool = False,
        prompt_lens: Tensor | None = None,
        filter_logits_fn: str | Callable[..., Tensor] = identity,
        restrict_to_max_seq_len: bool = True,
        filter_kwargs: dict[str, Any] | None = None,
        cache_kv: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Keep the `beams` highest-scoring continuations (sum of log-probabilities) at every step."""
        if eos_token is not None:
            raise UnsupportedOptionError(
                "AutoregressiveWrapper.beam_search: keyword 'eos_token' is not supported (nor by x-transformers 2.31)"
            )
        was_training = self.training
        self.eval()
        try:
            return self._beam_search(
                prompts, seq_len, beams, return_beams_and_scores, temperature, stochastic, prompt_lens,
                filter_logits_fn, restrict_to_max_seq_len, filter_kwargs or {}, cache_kv, kwargs,
            )  # fmt: skip
        finally:
            self.train(was_training)

    def _beam_search(self, prompts, seq_len, beams, return_beams_and_scores, temperature, stochastic,
                     prompt_lens, filter_logits_fn, restrict_to_max_seq_len, filter_kwargs, cache_kv, kwargs):  # fmt: skip
        unbatched = prompts.ndim == 1
        if unbatched:
            prompts = prompts[None]
        batch, prompt_len = prompts.shape
        device, max_seq_len = prompts.device, self.max_seq_len
        greedy = temperature == 0.0
        filter_logits_fn = _filter_fn(filter_logits_fn)
        seq_start_pos = None
        if prompt_lens is not None:
            prompts = align_right(prompts, prompt_lens, pad_id=self.pad_value)
            seq_start_pos = prompt_len - prompt_lens
        out, cache = prompts, None
        should_cache = cache_kv and self.net.can_cache_kv
        scores = torch.zeros((batch,), device=device)
        rows = torch.arange(batch, device=device)
        for step in range(seq_len):
            x = out
            if restrict_to_max_seq_len:
                _check_cache_fits(self.net, out, max_seq_len, cache_kv)
                x = x[:, -max_seq_len:]
                if cache is not None:
                    modify_cached_kv(cache, lambda t: t[..., -(max_seq_len - 1) :, :])
            logits, new_cache = self.net(
                x, return_intermediates=True, cache=cache, seq_start_pos=seq_start_pos, **kwargs
            )
            if should_cache:
                cache = new_cache
            logits = logits[:, -1]
            log_probs = logits.log_softmax(dim=-1)
            if stochastic and not greedy:
                logits = filter_logits_fn(logits, **filter_kwargs)
                logits = logits / temperature + gumbel_noise(logits)
            samples = logits.topk(beams, dim=-1).indices
            scores = scores[:, None] + log_probs.gather(-1, samples)  # [rows, beams]
            out = out.repeat_interleave(beams, dim=0)
            if should_cache and step == 0:
                modify_cached_kv(cache, lambda t: t.repeat_interleave(beams, dim=0))
            if seq_start_pos is not None and step == 0:
                seq_start_pos = seq_start_pos.repeat_interleave(beams)
            out = torch.cat((out, samples.reshape(-1, 1)), dim=-1)
            scores = scores.reshape(batch, -1)
            candidates = scores.shape[-1]
            if candidates > beams:
                scores, order = scores.sort(dim=-1, descending=True)
                scores = scores[:, :beams]
                keep = (candidates * rows[:, None] + order[:, :beams]).reshape(-1)
                out = out[keep]
                if should_cache:
                    parents = keep // beams
                    modify_cached_kv(cache, lambda t, p=parents: t[p])
            scores = scores.reshape(-1)
        out = out.reshape(batch, -1, out.shape[-1])[..., prompt_len:]
        if unbatched:
            out = out[0]
        if not return_beams_and_scores:
            return out[..., 0, :]
        scores = scores.reshape(batch, -1).t()
        return out.transpose(-3, -2) if not unbatched else out, scores

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
        self,
        x: Tensor,
        return_outputs: bool = False,
        prepend_embeds: Tensor | None = None,
        lens: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        seq, ignore_index = x.shape[1], self.ignore_index
        if lens is not None:
            keep = torch.arange(seq, device=x.device)[None, :] < lens[:, None]
            x = x.masked_fill(~keep, ignore_index)
        inp, target = x, x[:, 1:]
        inp = torch.where(inp == ignore_index, self.pad_value, inp)
        if self.mask_prob > 0.0:
            # MLM-style noise on the keys (https://arxiv.org/abs/2210.13432); the first token is never hidden
            rand = torch.randn(inp.shape, device=x.device)
            rand[:, 0] = -torch.finfo(rand.dtype).max
            num_mask = min(int(seq * self.mask_prob), seq - 1)
            hidden = rand.topk(num_mask, dim=-1).indices
            kwargs["self_attn_kv_mask"] = ~torch.zeros_like(inp, dtype=torch.bool).scatter(1, hidden, True)
        extra: dict[str, Any] = {}
        if self.add_attn_z_loss:
            extra["return_attn_z_loss"] = True
        if self.add_continuous_pred_head:
            extra["return_next_embed_pred"] = True
        out, cache = self.net(
            inp, return_intermediates=True, prepend_embeds=prepend_embeds, **extra, **kwargs
        )
        if self.add_continuous_pred_head:
            logits, (next_embed_pred, init_embeds) = out
        else:
            logits = out
        if prepend_embeds is not None:
            logits = logits[:, prepend_embeds.shape[1] :]
        logits = logits[:, :-1]
        loss_fn = F.nll_loss if getattr(self.net, "output_is_log_prob", False) else F.cross_entropy
        loss = loss_fn(logits.transpose(1, 2), target, ignore_index=ignore_index)
        if self.add_attn_z_loss:
            loss = loss + cache.attn_z_loss
        if self.add_continuous_pred_head:
            keep = target != ignore_index
            cont = F.l1_loss(next_embed_pred[:, :-1], init_embeds[:, 1:].detach(), reduction="none")
            loss = loss + cont[keep].mean() * self.next_embed_loss_weight
        return (loss, (logits, cache)) if return_outputs else loss


def _filter_fn(fn: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    if isinstance(fn, str):
        if fn not in FILTER_LOGITS_FN:
            raise ValueError(f"filter_logits_fn must be one of {', '.join(FILTER_LOGITS_FN)}")
        return FILTER_LOGITS_FN[fn]
    return fn


def _check_cache_fits(net: nn.Module, out: Tensor, max_seq_len: int, cache_kv: bool) -> None:
    if cache_kv and out.shape[-1] > max_seq_len and not net.can_cache_kv_outside_max_seq_len:
        raise ValueError(
            "cannot decode past max_seq_len with a key/value cache and absolute positions; "
            "use rotary positions or cache_kv=False"
        )
