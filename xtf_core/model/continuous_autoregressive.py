"""`ContinuousAutoregressiveWrapper`: next-vector regression (MSE, L1 or Gaussian NLL) and sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import align_right
from .options import parse_options
from .spec_record import SpecRecorder


@dataclass
class ContinuousAutoregressiveOptions:
    use_l1_loss: bool = False
    equal_loss_weight_batch: bool = False


def _sample(mean: Tensor, variance: Tensor, temperature: float = 1.0, eps: float = 1e-5) -> Tensor:
    return torch.normal(mean, variance.clamp(min=eps).sqrt() * temperature)


class ContinuousAutoregressiveWrapper(SpecRecorder, nn.Module):
    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        if kwargs.get("loss_fn") is None:
            kwargs.pop("loss_fn", None)
        self._record_spec({"net": net, **kwargs})
        o = parse_options("ContinuousAutoregressiveWrapper", kwargs, ContinuousAutoregressiveOptions)
        self.net = net
        self.max_seq_len = net.max_seq_len
        self.probabilistic = getattr(net, "probabilistic", False)
        self.use_l1_loss, self.equal_loss_weight_batch = o.use_l1_loss, o.equal_loss_weight_batch

    def loss_fn(self, pred: Any, target: Tensor) -> Tensor:
        """Unreduced loss: Gaussian NLL for probabilistic nets, else L1 or MSE."""
        if self.probabilistic:
            mean, var = pred
            return F.gaussian_nll_loss(mean, target, var, reduction="none")
        if self.use_l1_loss:
            return F.l1_loss(pred, target, reduction="none")
        return F.mse_loss(pred, target, reduction="none")

    @torch.no_grad()
    def generate(
        self,
        start_tokens: Tensor,
        seq_len: int,
        temperature: float = 1.0,
        cache_kv: bool = True,
        **kwargs: Any,
    ) -> Tensor:
        should_cache = cache_kv and self.net.can_cache_kv
        was_training = self.net.training
        unbatched = start_tokens.ndim == 2
        if unbatched:
            start_tokens = start_tokens[None]
        t = start_tokens.shape[1]
        self.net.eval()
        out, cache = start_tokens, None
        for _ in range(seq_len):
            x = out if self.max_seq_len is None else out[:, -self.max_seq_len :]
            net_out, new_cache = self.net(x, cache=cache, return_intermediates=True, **kwargs)
            last = net_out[..., -1:, :]
            if self.probabilistic:
                mean, var = last
                last = _sample(mean, var, temperature=temperature)
            out = torch.cat((out, last), dim=-2)
            if should_cache:
                cache = new_cache
        self.net.train(was_training)
        out = out[:, t:]
        return out[0] if unbatched else out

    def forward_rollout(self, x: Tensor, rollout_steps: int = 2, **kwargs: Any) -> Tensor:
        """Feed the model's own predictions back for `rollout_steps` steps from random start positions."""
        if rollout_steps < 2:
            raise ValueError("rollout_steps must be at least 2")
        if "prepend_embeds" in kwargs:
            raise ValueError("prepend_embeds cannot be used in a rollout")
        lens = kwargs.pop("lens", None)
        kwargs.pop("mask", None)
        batch, seq = x.shape[:2]
        if lens is None:
            lens = torch.full((batch,), seq, device=x.device)
        valid = (lens - rollout_steps).clamp(min=0)
        keep = valid > 0
        x, valid = x[keep], valid[keep]
        batch = x.shape[0]
        seq_start_pos = (torch.rand((batch,), device=x.device) * valid).floor().long()
        seq_end_pos = seq_start_pos + rollout_steps
        x = align_right(x[:, : int(seq_end_pos.amax())], seq_end_pos)
        inp, targets = x[:, :-rollout_steps], x[:, -rollout_steps:]
        preds = []
        for _ in range(rollout_steps):
            out, _ = self.net(inp, seq_start_pos=seq_start_pos, return_intermediates=True, **kwargs)
            last = out[..., -1:, :]
            if self.probabilistic:
                mean, var = last
                inp = _sample(mean, var)
            else:
                inp = last
            preds.append(last)
        return self.loss_fn(torch.cat(preds, dim=1), targets).mean()

    def forward(self, x: Tensor, rollout_steps: int = 1, **kwargs: Any) -> Tensor:
        if rollout_steps > 1:
            return self.forward_rollout(x, rollout_steps=rollout_steps, **kwargs)
        if "prepend_embeds" in kwargs:
            raise ValueError("prepend_embeds cannot be used with the continuous autoregressive loss")
        inp, target = x[:, :-1], x[:, 1:]
        lens = kwargs.pop("lens", None)
        if lens is not None:
            if "mask" in kwargs:
                raise ValueError("pass either `mask` or `lens`, not both")
            kwargs["mask"] = torch.arange(inp.shape[1], device=x.device)[None, :] < lens[:, None]
        mask = kwargs.get("mask")
        if mask is not None and mask.shape[1] == x.shape[1]:
            mask = mask[:, :-1]
            kwargs["mask"] = mask
        loss = self.loss_fn(self.net(inp, **kwargs), target)
        if mask is not None:
            if self.equal_loss_weight_batch:
                weights = mask[..., None].to(loss.dtype)
                loss = (loss * weights).sum(dim=(1, 2)) / mask.sum(dim=-1).clamp(min=1)
            else:
                loss = loss[mask]
        return loss.mean()
