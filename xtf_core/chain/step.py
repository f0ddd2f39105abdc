"""A migration step: what one step module in `xtf_migrations` declares, read into one value.

A step module holds, in this order: a docstring (first line printed by `xtf history`; then the upstream
release/commit that made it necessary), `revision` and `down_revision` (stamps: the layouts it connects),
`reversible` (and `irreversible_reason` when False; checked against a fixed op list, which must then
run backwards), optional `upgrade_spec(spec)` / `downgrade_spec(spec)`,
and `ops`: a list of ops, or a function of the pre-upgrade spec returning that list. Optionally
`backfill(spec)`: ops run after the derived reverse when migrating down, computed from the newer spec, for
tensors the older layout requires that a newer model may lack (e.g. a zero bias). Optionally
`check_stop_spec(spec)`: raises when a file going down stops at `down_revision` with a spec that release
cannot build (a route passing through to older layouts does not call it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from xtf_core.chain.ops import Op
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import ChainError, IrreversibleStepError, XtfError


def _unchanged(spec: dict) -> dict:
    return spec


@dataclass(frozen=True)
class Step:
    """One edge of the chain: the layout at `down_revision` becomes the layout at `revision`."""

    revision: Stamp
    down_revision: Stamp
    doc: str
    ops: Sequence[Op] | Callable[[dict], Sequence[Op]] = ()
    upgrade_spec: Callable[[dict], dict] = _unchanged
    downgrade_spec: Callable[[dict], dict] = _unchanged
    irreversible_reason: str | None = None
    module: str | None = None
    backfill: Callable[[dict], Sequence[Op]] | None = None
    check_stop_spec: Callable[[dict], None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "revision", Stamp.coerce(self.revision))
        object.__setattr__(self, "down_revision", Stamp.coerce(self.down_revision))

    @property
    def id(self) -> str:
        return str(self.revision)

    @property
    def summary(self) -> str:
        lines = (self.doc or "").strip().splitlines()
        return lines[0].strip() if lines else ""

    @property
    def reversible(self) -> bool:
        return self.irreversible_reason is None

    def to_json(self) -> dict[str, object]:
        """What `xtf history --json` lists for this step."""
        return {
            "id": self.id,
            "from": str(self.down_revision),
            "to": str(self.revision),
            "reversible": self.reversible,
            "irreversible_reason": self.irreversible_reason,
            "summary": self.summary,
            "module": self.module,
        }

    def describe(self) -> str:
        """The step as one `xtf history` line."""
        reversibility = "reversible" if self.reversible else f"irreversible: {self.irreversible_reason}"
        return f"{self.down_revision} -> {self.revision}  {self.id}  ({reversibility})  {self.summary}"

    def upgrade_ops(self, spec: dict) -> list[Op]:
        """The ops that take tensors laid out for `spec` (the pre-step spec) to the new layout."""
        ops = self.ops(copy.deepcopy(spec)) if callable(self.ops) else self.ops
        return list(ops)

    def downgrade_ops(self, old_spec: dict, new_spec: dict | None = None) -> list[Op]:
        """The reverse ops, last first, then any backfill; `old_spec` is the spec after downgrading (the
        pre-upgrade spec), `new_spec` the one before (what the backfill looks at)."""
        if self.irreversible_reason is not None:
            raise IrreversibleStepError(
                f"cannot migrate down through step {self.id} ({self.summary}): {self.irreversible_reason}"
            )
        reversed_ops = []
        for op in reversed(self.upgrade_ops(old_spec)):
            try:
                reversed_ops.append(op.reverse())
            except IrreversibleStepError as exc:
                raise IrreversibleStepError(f"cannot migrate down through step {self.id}: {exc}") from exc
        if self.backfill is not None:
            reversed_ops += list(self.backfill(copy.deepcopy(new_spec if new_spec is not None else old_spec)))
        return reversed_ops

    def apply_upgrade_spec(self, spec: dict) -> dict:
        return self.upgrade_spec(copy.deepcopy(spec))

    def apply_downgrade_spec(self, spec: dict) -> dict:
        return self.downgrade_spec(copy.deepcopy(spec))

    @classmethod
    def from_module(cls, module: ModuleType) -> Step:
        """Read a step module's declarations, naming the module and the missing piece on error."""
        name = module.__name__
        missing = [
            attr for attr in ("revision", "down_revision", "reversible", "ops") if not hasattr(module, attr)
        ]
        if not (module.__doc__ or "").strip():
            missing.insert(0, "docstring")
        if missing:
            raise ChainError(f"step module {name} lacks {', '.join(missing)}; see docs/migrations.md")
        reversible = module.reversible
        reason = getattr(module, "irreversible_reason", None)
        if reversible is not (reason is None):
            raise ChainError(
                f"step module {name}: declare either reversible = True, or reversible = False with "
                "irreversible_reason = '<why it cannot be undone>'"
            )
        # the declaration is checked against the ops: a fixed op list that cannot run backwards makes the
        # step irreversible whatever it says (ops computed from a spec are checked when planned)
        if reversible and not callable(module.ops):
            stuck = [op for op in module.ops if getattr(op, "irreversible_reason", None)]
            if stuck:
                raise ChainError(
                    f"step module {name} declares reversible = True, but {stuck[0].describe()} cannot be "
                    f"reversed ({stuck[0].irreversible_reason}); declare reversible = False with the reason"
                )
        try:
            return cls(
                revision=module.revision,
                down_revision=module.down_revision,
                doc=module.__doc__,
                ops=module.ops,
                upgrade_spec=getattr(module, "upgrade_spec", _unchanged),
                downgrade_spec=getattr(module, "downgrade_spec", _unchanged),
                irreversible_reason=reason,
                module=name,
                backfill=getattr(module, "backfill", None),
                check_stop_spec=getattr(module, "check_stop_spec", None),
            )
        except XtfError as exc:
            raise ChainError(f"step module {name}: {exc}") from exc
