"""What a config's tensors look like at a given stamp, and the one error that names where a file differs."""

from __future__ import annotations

from collections.abc import Mapping

from xtf_core.checkpoint.layout import diff_layouts
from xtf_core.checkpoint.stamp import Stamp, current_stamp
from xtf_core.errors import ConversionError

Layout = Mapping[str, tuple[int, ...]]


def layout_at(node: Stamp, config: dict) -> dict[str, tuple[int, ...]]:
    """The (name -> shape) layout x-transformers at `node` has for `config`, derived from the chain."""
    import torch

    from xtf_core.chain import default_chain, migrate_in_memory
    from xtf_core.chain.plan import plan_steps
    from xtf_core.spec import build

    current = current_stamp()
    planned = plan_steps(default_chain().route(node, current), config)
    spec_now = planned[-1].spec_after if planned else config
    with torch.device("meta"):
        model = build(spec_now)
    back, _, _ = migrate_in_memory(model.state_dict(), spec_now, current, node)
    return {name: tuple(t.shape) for name, t in back.items()}


def compare_layouts(found: Layout, expected: Layout, where: str, what: str) -> None:
    """Raise naming the first missing, unexpected or mis-shaped tensor (and how many more there are)."""
    diff = diff_layouts(expected, found)
    problems = {
        name: f"missing {name!r} (the config builds it with shape {list(expected[name])})"
        for name in diff.removed
    }
    problems |= {
        name: f"unexpected {name!r} (shape {list(found[name])}; the config builds no such tensor)"
        for name in diff.added
    }
    problems |= {
        name: f"{name!r} has shape {list(shape)}, the config builds {list(built)}"
        for name, (built, shape) in diff.reshaped.items()
    }
    if problems:
        first = problems[min(problems)]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConversionError(
            f"{where}: does not match the config as {what}: {first}{more}; "
            "check dim, depth, heads and options in --config"
        )
