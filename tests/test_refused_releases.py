"""Releases refused whole are refused for the reason the real release shows, with that reason in the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xt_releases import run_in_release

from xtf_converters import releases
from xtf_core.errors import ConversionError

PROBE = r"""
import json, torch, x_transformers as xt
try:
    model = xt.TransformerWrapper(
        num_tokens=16, max_seq_len=8, attn_layers=xt.Decoder(dim=8, depth=1, heads=2, attn_dim_head=4)
    )
    model(torch.randint(0, 16, (1, 4)))
    print(json.dumps({"runs": True, "names": sorted(model.state_dict())}))
except Exception as exc:
    print(json.dumps({"runs": False, "error": type(exc).__name__}))
"""


@pytest.mark.parametrize(
    ("release", "shown", "reason"),
    [
        ("1.5.2", {"runs": False, "error": "ZeroDivisionError"}, "ZeroDivisionError"),
        ("1.37.1", {"runs": False, "error": "AssertionError"}, "did not train with recycling"),
        ("1.40.4", "attn_layers.reinject_input_proj.weight", "reinject_input_proj"),
    ],
)
def test_release_is_refused_for_what_it_does(tmp_path: Path, release: str, shown, reason: str) -> None:
    done = run_in_release(release, PROBE)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if isinstance(shown, dict):
        assert result == shown
    else:  # builds, but with a tensor no other release has for this plain decoder
        assert result["runs"] and shown in result["names"]
    with pytest.raises(ConversionError, match=reason):
        releases.check_release(release)


CROSS_PROBE = r"""
import json, torch, x_transformers as xt
stack = xt.Decoder(dim=8, depth=1, heads=2, attn_dim_head=4, cross_attend=True)
print(json.dumps(sorted(k for k in stack.state_dict() if "value_residual_mix" in k)))
"""


def test_1_42_27_cross_attention_is_refused_for_its_one_release_layout() -> None:
    for release, extra in (("1.42.26", []), ("1.42.27", ["layers.1.1.to_value_residual_mix.0.weight"])):
        names = json.loads(run_in_release(release, CROSS_PROBE).stdout.strip().splitlines()[-1])
        assert [n for n in names if n.endswith(".weight")] == extra, release
    config = {"class": "TransformerWrapper", "num_tokens": 16, "max_seq_len": 8,
              "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2, "cross_attend": True}}  # fmt: skip
    from xtf_converters import option_history

    with pytest.raises(ConversionError, match="to_value_residual_mix"):
        option_history.check(config, "1.42.27", "m.pt")
    option_history.check(
        {**config, "attn_layers": {**config["attn_layers"], "cross_attend": False}}, "1.42.27", "m"
    )
