"""A checksum of the installed chain (each step's id and source, in order), and what changed since one was taken.

A lockfile records it so `xtf lock --check` notices a released step that was edited afterwards, or a step
inserted below steps that were already pinned: either would change what a locked checkpoint migrates to.
Steps appended above the pinned ones (a newer xtf release) are not a change. Reads the step files' bytes;
imports nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from xtf_core.chain.graph import Chain
from xtf_core.errors import ChainError


@dataclass(frozen=True)
class ChainSum:
    """(step id, sha256 of its module's source) for every step, oldest first, and a hash over that list."""

    steps: tuple[tuple[str, str], ...]

    @property
    def total(self) -> str:
        lines = "".join(f"{step_id} {digest}\n" for step_id, digest in self.steps)
        return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def _source_digest(module: str | None, step_id: str) -> str:
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.origin:
        raise ChainError(f"step {step_id}: its module source cannot be found to checksum it")
    with open(spec.origin, "rb") as handle:
        text = handle.read().replace(b"\r\n", b"\n")
    return "sha256:" + hashlib.sha256(text).hexdigest()


def chain_sum(chain: Chain) -> ChainSum:
    """The checksum of `chain` as installed now."""
    return ChainSum(tuple((step.id, _source_digest(step.module, step.id)) for step in chain.steps))


def chain_changes(pinned: Sequence[tuple[str, str]], now: ChainSum) -> list[str]:
    """What differs between a pinned checksum and the installed chain, one line per step at fault."""
    current = dict(now.steps)
    order = [step_id for step_id, _ in now.steps]
    problems = []
    for step_id, digest in pinned:
        if step_id not in current:
            problems.append(f"step {step_id} was removed from the installed chain")
        elif current[step_id] != digest:
            problems.append(f"step {step_id} was edited after it was locked")
    pinned_ids = [step_id for step_id, _ in pinned]
    if pinned_ids and pinned_ids[-1] in order:
        newest_pinned = order.index(pinned_ids[-1])
        inserted = [step_id for step_id in order[:newest_pinned] if step_id not in set(pinned_ids)]
        problems += [f"step {step_id} was inserted out of order, below locked steps" for step_id in inserted]
    return problems
