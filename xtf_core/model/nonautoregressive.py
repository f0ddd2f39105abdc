"""`NonAutoregressiveWrapper`: masked-token (MaskGIT / MDLM style) training and iterative unmasking."""

from __future__ import annotations

import math
import random
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError
from .options import parse_options
from .spec_record import SpecRecorder

Losses = namedtuple("Losses", ["loss", "generator_loss", "critic_loss"])

SCHEDULES = ("linear", "cosine")


def _schedule(name: str, t: Tensor) -> Tensor:
    """Fraction of tokens masked at time t in [0, 1]."""
    return 1 - t if name == "linear" else torch.cos(t * math.pi / 2)


def _mdlm_weight(name: str, t: Tensor) -> Tensor:
    """MDLM loss weight `schedule'(t) / (1 - schedule(t))` (Sahoo et al. 2024)."""
    if name == "linear":
        return -torch.ones_like(t) / t
    return (-math.pi / 2 * torch.sin(t * math.pi / 2)) / (1 - torch.cos(t * math.pi / 2))


def _gumbel_noise(t: Tensor) -> Tensor:
    u = torch.zeros_like(t).uniform_(0, 1)
    return -torch.log(-torch.log(u + 1e-10) + 1e-10)


def _gumbel_sample(t: Tensor, temperature: float) -> Tensor:
    return (t / max(temperature, 1e-10) + _gumbel_noise(t)).argmax(dim=-1)


def _top_k(logits: Tensor, thres: float) -> Tensor:
    k = math.ceil((1 - thres) * logits.shape[-1])
    val, ind = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(2, ind, val)


def _subset(mask: Tensor, prob: float) -> Tensor:
    """A random `prob` fraction of each row's True positions."""
    batch, seq = mask.shape
    count = mask.sum(dim=-1, keepdim=True) * prob
    logits = torch.rand((batch, seq), device=mask.device).masked_fill(~mask, -1)
    rank = logits.argsort(dim=-1).argsort(dim=-1).float() - (~mask).sum(dim=-1, keepdim=True)
    return (rank < count) & mask


class SelfCritic(nn.Module):
    """A token critic that reuses the generator's stack: one logit per position."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.to_logits = nn.Linear(net.attn_layers.dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_logits(self.net(x, return_embeddings=True))


@dataclass
class NonAutoregressiveOptions:
    mask_id: int
    steps: int = 18
    self_cond: bool = False
    self_cond_train_prob: float = 0.75
    no_replace_prob: float = 0.15
    random_token_prob: float = 0.1
    schedule: str = "linear"
    can_mask_prev_unmasked: bool = False
    self_token_critic: bool = False
    critic_loss_weight: float = 1.0
    use_simple_mdlm_loss_weight: bool = True


class NonAutoregressiveWrapper(SpecRecorder, nn.Module):
    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        owner = "NonAutoregressiveWrapper"
        self._record_spec({"net": net, **kwargs})
        if kwargs.get("token_critic") is None:
            kwargs.pop("token_critic", None)
        o = parse_options(owner, kwargs, NonAutoregressiveOptions)
        if o.schedule not in SCHEDULES:
            raise SpecError(f"{owner}: schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
        self.options = o
        self.net = net
        self.dim = net.emb_dim
        self.num_tokens, self.max_seq_len = net.num_tokens, net.max_seq_len
        self.mask_id, self.steps, self.schedule = o.mask_id, o.steps, o.schedule
        self.self_cond = o.self_cond
        if o.self_cond:
            self.null_embed = nn.Parameter(torch.randn(self.dim))
            self.to_self_cond = nn.Linear(self.dim, self.dim, bias=False)
        self.token_critic: nn.Module | None = SelfCritic(net) if o.self_token_critic else None

    @torch.no_grad()
    def generate(
        self,
        batch_size: int | None = None,
        start_temperature: float = 1.0,
        filter_thres: float | None = 0.7,
        noise_level_scale: float = 1.0,
        **kwargs: Any,
    ) -> Tensor:
        sample_one = batch_size is None
        batch_size = batch_size or 1
        device = next(self.net.parameters()).device
        was_training = self.training
        self.eval()
        times = torch.linspace(0.0, 1.0, self.steps + 1)
        shape = (batch_size, self.max_seq_len)
        seq = torch.full(shape, self.mask_id, device=device)
        mask = torch.full(shape, True, device=device)
        mask_counts = (_schedule(self.schedule, times[1:]) * self.max_seq_len).long().tolist()
        last_embed = self.null_embed if self.self_cond else None
        for count, steps_left in zip(mask_counts, reversed(range(self.steps))):
            cond = self.to_self_cond(last_embed) if self.self_cond else None
            logits, embeds = self.net(seq, sum_embeds=cond, return_logits_and_embeddings=True, **kwargs)
            if self.self_cond:
                last_embed = embeds
            if filter_thres is not None:
                logits = _top_k(logits, filter_thres)
            annealing = steps_left / self.steps
            temperature = start_temperature * annealing
            sampled = _gumbel_sample(logits, max(temperature, 1e-3))
            seq = torch.where(mask, sampled, seq)
            if self.token_critic is not None:
                scores = self.token_critic(seq)[..., 0]
                scores = scores + noise_level_scale * _gumbel_noise(scores) * annealing
            else:
                scores = (1 - logits.softmax(dim=-1)).gather(2, sampled[..., None])[..., 0]
            if not self.options.can_mask_prev_unmasked:
                scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)
            chosen = scores.topk(count, dim=-1).indices
            mask = torch.zeros_like(scores, dtype=torch.bool).scatter(1, chosen, True)
            seq = seq.masked_fill(mask, self.mask_id)
        self.train(was_training)
        return seq[0] if sample_one else seq

    def forward(
        self,
        x: Tensor,
        only_train_generator: bool = False,
        only_train_critic: bool = False,
        generator_sample_temperature: float | None = None,
        **kwargs: Any,
    ) -> Losses:
        o = self.options
        b, n = x.shape
        if n != self.max_seq_len:
            raise ValueError(f"sequences must have length max_seq_len ({self.max_seq_len}), got {n}")
        orig = x.clone()
        times = torch.empty(b, device=x.device).uniform_(0, 1)
        order = torch.rand((b, n), device=x.device).argsort(dim=-1).float()
        num_masked = (_schedule(self.schedule, times) * n).clamp(min=1.0)
        mask = order < num_masked[:, None]
        replace = mask.clone()
        left = 1.0
        if o.no_replace_prob > 0.0 and random.random() < 0.5:
            left -= o.no_replace_prob
            replace &= ~_subset(mask, o.no_replace_prob)
        if o.random_token_prob > 0.0 and random.random() < 0.5:
            swap = _subset(replace, o.random_token_prob * left)
            x = torch.where(swap, torch.randint(0, self.num_tokens, (b, n), device=x.device), x)
            replace &= ~swap
        masked = torch.where(replace, self.mask_id, x)
        if self.self_cond:
            cond = self.null_embed
            if random.random() < o.self_cond_train_prob:
                with torch.no_grad():
                    cond = self.net(masked, return_embeddings=True, **kwargs).detach()
            kwargs["sum_embeds"] = self.to_self_cond(cond)
        with torch.no_grad() if only_train_critic else torch.enable_grad():
            logits = self.net(masked, **kwargs)
        loss_fn = F.nll_loss if getattr(self.net, "output_is_log_prob", False) else F.cross_entropy
        if o.use_simple_mdlm_loss_weight:
            loss = loss_fn(logits.transpose(1, 2), orig, reduction="none")
            loss = (loss * _mdlm_weight(self.schedule, times)[:, None])[mask].mean()
        else:
            loss = loss_fn(logits[mask], orig[mask])
        if self.token_critic is None or only_train_generator:
            return Losses(loss, loss, None)
        temperature = generator_sample_temperature
        sampled = _gumbel_sample(logits, temperature if temperature is not None else random.random())
        generated = torch.where(mask, sampled, orig)
        critic_logits = self.token_critic(generated)[..., 0]
        critic_loss = F.binary_cross_entropy_with_logits(critic_logits, (sampled != orig).float())
        if only_train_critic:
            return Losses(critic_loss, None, critic_loss)
        return Losses(loss + critic_loss * o.critic_loss_weight, loss, critic_loss)
