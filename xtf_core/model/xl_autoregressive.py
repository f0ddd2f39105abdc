"""`XLAutoregressiveWrapper`: next-token loss over long sequences cut into `max_seq_len` segments that
carry Transformer-XL memories from one segment to the next, and segment-wise sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError
from .autoregressive import _filter_fn, top_k
from .options import parse_options
from .spec_record import SpecRecorder


@dataclass
class XLAutoregressiveOptions:
    ignore_index: int = -100
    pad_value: int = 0
    tbptt_steps: int = 1
    # test-time training and episodic memories are not implemented: accepted only at these (inert) values
    ttt_module_paths: list = field(default_factory=list)
    ttt_lr: float = 1e-3
    ttt_wd: float = 0.01
    ttt_use_muon: bool = False
    ttt_muon_steps: int = 5
    ttt_muon_lr: float = 1e-2
    ttt_low_rank_paths: list = field(default_factory=list)
    ttt_next_latent_loss: bool = False
    episodic_mem_len: int = 0


_REFUSED_AT_NON_DEFAULT = (
    "ttt_module_paths",
    "ttt_low_rank_paths",
    "ttt_next_latent_loss",
    "episodic_mem_len",
)


class XLAutoregressiveWrapper(SpecRecorder, nn.Module):
    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        owner = "XLAutoregressiveWrapper"
        kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
        if kwargs.get("ttt_custom_loss_module") is None:
            kwargs.pop("ttt_custom_loss_module", None)
        self._record_spec({"net": net, **kwargs})
        o = parse_options(owner, kwargs, XLAutoregressiveOptions)
        for key in _REFUSED_AT_NON_DEFAULT:
            if getattr(o, key) != getattr(XLAutoregressiveOptions(), key):
                from .options import refuse

                refuse(owner, key, getattr(o, key), {"ignore_index", "pad_value", "tbptt_steps"})
        if o.tbptt_steps < 1:
            raise SpecError(f"{owner}: tbptt_steps must be at least 1")
        self.net = net
        self.ignore_index, self.pad_value, self.tbptt_steps = o.ignore_index, o.pad_value, o.tbptt_steps
        self.max_seq_len = net.max_seq_len
        self.output_is_log_prob = getattr(net, "output_is_log_prob", False)

    def _loss_fn(self) -> Callable[..., Tensor]:
        return F.nll_loss if self.output_is_log_prob else F.cross_entropy

    @torch.no_grad()
    def generate(
        self,
        start_tokens: Tensor,
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable[..., Tensor] = top_k,
        filter_kwargs: dict[str, Any] | None = None,
        mems: list[Tensor] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Sample `seq_len` tokens. Whole segments of the prompt only build memories; sampling attends to
        the current segment and the memories of the segments before it (recomputed, without a cache)."""
        was_training = self.training
        self.eval()
        try:
            filter_fn = _filter_fn(filter_logits_fn)
            unbatched = start_tokens.ndim == 1
            if unbatched:
                start_tokens = start_tokens[None]
            t, max_seq_len = start_tokens.shape[1], self.max_seq_len
            *leading, _ = start_tokens.split(max_seq_len, dim=-1)
            for segment in leading:
                _, mems = self.net(segment, mems=mems, return_mems=True, **kwargs)
            pos = len(leading) * max_seq_len
            segment_mems = mems
            out = start_tokens
            for _ in range(seq_len):
                length = out.shape[-1]
                at_boundary = length % max_seq_len == 0
                if at_boundary:
                    pos, segment_mems = length, mems
                x = out[:, pos:]
                if x.shape[-1] == 0:
                    x = out[:, pos - max_seq_len :]
                logits, mems = self.net(x, mems=segment_mems, return_mems=True, **kwargs)
                logits = logits[:, -1]
                if temperature == 0.0:
                    sample = logits.argmax(dim=-1, keepdim=True)
                else:
                    probs = F.softmax(filter_fn(logits, **(filter_kwargs or {})) / temperature, dim=-1)
                    sample = torch.multinomial(probs, 1)
                out = torch.cat((out, sample), dim=-1)
                if eos_token is not None:
                    is_eos = out == eos_token
                    if is_eos.any(dim=-1).all():
                        after = F.pad(is_eos, (1, -1)).float().cumsum(dim=-1) >= 1
                        out = out.masked_fill(after, self.pad_value)
                        break
            out = out[:, t:]
            return out[0] if unbatched else out
        finally:
            self.train(was_training)

    def forward(
        self, x: Tensor, mems: list[Tensor] | None = None, dropout_mems: bool = False, **kwargs: Any
    ) -> Tensor:
        """Mean next-token loss over the segments, each weighted by its share of the sequence."""
        if kwargs.get("ttt_recurrent_steps", 1) != 1:
            from .options import refuse

            refuse(
                "XLAutoregressiveWrapper.forward", "ttt_recurrent_steps", kwargs["ttt_recurrent_steps"], []
            )
        kwargs.pop("ttt_recurrent_steps", None)
        x, labels = x[:, :-1], x[:, 1:]
        seq_len = x.shape[1]
        total: Tensor | float = 0.0
        chunks = zip(x.split(self.max_seq_len, dim=-1), labels.split(self.max_seq_len, dim=-1))
        for index, (chunk, chunk_labels) in enumerate(chunks):
            detach = (index + 1) % self.tbptt_steps == 0
            logits, mems = self.net(
                chunk,
                mems=None if dropout_mems else mems,
                return_mems=True,
                detach_mems=detach,
                **kwargs,
            )
            loss = self._loss_fn()(
                logits.transpose(1, 2), chunk_labels, ignore_index=self.ignore_index, reduction="none"
            )
            keep = (chunk_labels != self.ignore_index).to(loss.dtype)
            per_row = (loss * keep).sum(dim=-1) / keep.sum(dim=-1).clamp(min=1e-5)
            total = total + per_row.mean() * (chunk.shape[-1] / seq_len)
        assert isinstance(total, Tensor)
        return total
