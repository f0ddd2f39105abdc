"""A config converts as its release built it: what the release silently ignored is ignored (and recorded),
what it refused is refused, and options it knew under an older name are read under that name.

Proved against the real releases: the kwarg table (converters/release_kwargs.json, derived from each
release's code by scripts/release_kwargs.py) must classify each probe as the release itself behaved, and a
model built by the release with ignored kwargs converts to what the release computed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from packaging.version import Version
from safetensors.torch import load_file
from xt_releases import run_in_release

from xtf_cli.cli import main
from xtf_converters.release_kwargs import RENAMES, as_release_built, rules_for, table
from xtf_core import load
from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.errors import ConversionError

# name -> (wrapper kwargs, Decoder kwargs)
PROBES: dict[str, tuple[dict, dict]] = {
    "stray dim_head": ({}, {"dim_head": 8}),
    "use_abs_pos_emb on Decoder": ({}, {"use_abs_pos_emb": False}),
    "flash_attn": ({}, {"flash_attn": True}),
    "num_mem_kv": ({}, {"num_mem_kv": 2}),
    "typo": ({}, {"rotary_pos_embb": True}),
    "attn_ typo": ({}, {"attn_dim_headd": 8}),
    "ff_ typo": ({}, {"ff_glue": True}),
    "attn_flash": ({}, {"attn_flash": True}),
    "attn_num_mem_kv": ({}, {"attn_num_mem_kv": 2}),
    "attn_heads (passed by the stack itself)": ({}, {"attn_heads": 2}),
    "ff_glu": ({}, {"ff_glu": True}),
    "cross_attn_ without cross_attend": ({}, {"cross_attn_dim_head": 8}),
    "causal on Decoder": ({}, {"causal": False}),
    "use_pos_emb": ({"use_pos_emb": False}, {}),
    "wrapper typo": ({"emb_dropoutt": 0.1}, {}),
}
PROBE_RELEASES = ["0.0.20", "0.25.7", "0.27.1", "1.0.4", "1.26.0", "1.29.0"]

PROBE_SCRIPT = """
import json, sys, torch
from x_transformers import TransformerWrapper, Decoder

def make(wrapper_kwargs, layer_kwargs):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=32, max_seq_len=16, **wrapper_kwargs,
                              attn_layers=Decoder(dim=16, depth=1, heads=2, **layer_kwargs)).eval()

def layout(model):
    return sorted((k, list(v.shape)) for k, v in model.state_dict().items())

base = make({}, {})
tokens = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    expected = base(tokens)
found = {}
for name, (wrapper_kwargs, layer_kwargs) in json.loads(sys.argv[1]).items():
    try:
        model = make(wrapper_kwargs, layer_kwargs)
    except Exception as exc:
        found[name] = "raised " + type(exc).__name__
        continue
    if layout(model) != layout(base):
        found[name] = "differs"
        continue
    model.load_state_dict(base.state_dict())
    with torch.no_grad():
        found[name] = "same" if torch.equal(model(tokens), expected) else "differs"
print(json.dumps(found))
"""


def _ours(release: str, wrapper_kwargs: dict, layer_kwargs: dict) -> str:
    config = {
        "class": "TransformerWrapper",
        "num_tokens": 32,
        "max_seq_len": 16,
        **wrapper_kwargs,
        "attn_layers": {"class": "Decoder", "dim": 16, "depth": 1, "heads": 2, **layer_kwargs},
    }
    try:
        _, ignored, _ = as_release_built(config, release, "probe")
    except ConversionError:
        return "refused"
    return "ignored" if ignored else "accepted"


@pytest.mark.parametrize("release", PROBE_RELEASES)
def test_the_table_classifies_each_kwarg_as_the_real_release_behaved(release: str) -> None:
    result = run_in_release(release, textwrap.dedent(PROBE_SCRIPT), json.dumps(PROBES))
    real = json.loads(result.stdout.strip().splitlines()[-1])
    wrong = {}
    for name, (wrapper_kwargs, layer_kwargs) in PROBES.items():
        ours = _ours(release, wrapper_kwargs, layer_kwargs)
        agrees = {
            "refused": real[name].startswith("raised"),
            "ignored": real[name] == "same",
            "accepted": not real[name].startswith("raised"),
        }[ours]
        if not agrees:
            wrong[name] = f"xtf says {ours}, x-transformers {release}: {real[name]}"
    assert not wrong, wrong


def test_no_release_took_both_an_old_name_and_its_new_one() -> None:
    every = {release: rules_for(release) or {} for release in table()["releases"]}
    for owners, old, new in RENAMES:
        for owner in owners:
            took_old = [r for r, rules in every.items() if owner in rules and _takes(rules[owner], old)]
            took_new = [
                r
                for r, rules in every.items()
                if owner in rules and all(_takes(rules[owner], n) for n in new)
            ]
            assert took_old and took_new, (owner, old)
            assert max(took_old, key=Version) < min(took_new, key=Version), (owner, old)


def _takes(rule: dict, name: str) -> bool:
    if name in rule["params"]:
        return True
    return any(
        name.startswith(prefix) and names != "unused" and (names == "*" or name[len(prefix) :] in names)
        for prefix, names in rule["routes"].items()
    )


def test_strict_releases_refuse_what_lenient_ones_ignored() -> None:
    config = {
        "class": "TransformerWrapper",
        "num_tokens": 32,
        "max_seq_len": 16,
        "attn_layers": {"class": "Decoder", "dim": 16, "depth": 1, "heads": 2, "flash_attn": True},
    }
    built, ignored, _ = as_release_built(config, "1.28.2", "c.json")
    assert "flash_attn" not in built["attn_layers"]
    assert ignored == [
        {
            "at": "attn_layers",
            "option": "flash_attn",
            "value": True,
            "why": "its Decoder dropped keyword arguments it did not know",
        }
    ]
    with pytest.raises(ConversionError, match=r"1\.29\.0 refused the option 'attn_layers\.flash_attn'"):
        as_release_built(config, "1.29.0", "c.json")
    assert rules_for("0.0.1") is not None and rules_for("99.0.0") is None


# ------------------------------------------------------------------------------- conversion, end to end

CALL = (
    "TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=2, heads=4, "
    "attn_dim_head=16, dim_head=64, use_abs_pos_emb=False, flash_attn=True, num_mem_kv=2))"
)
IGNORED = ["dim_head", "use_abs_pos_emb", "flash_attn", "num_mem_kv"]

BUILD_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from x_transformers import TransformerWrapper, Decoder
torch.manual_seed(0)
model = {call}
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
model.eval()
tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(tokens)
torch.save(model.state_dict(), sys.argv[1] + "/model.pt")
save_file({{"tokens": tokens, "logits": logits.contiguous()}}, sys.argv[1] + "/io.safetensors")
"""


def _convert_from_release(tmp_path: Path, release: str, call: str) -> tuple[str, Path]:
    """Build `call` in the real `release` (BUILD_SCRIPT) and convert its state dict with `xtf convert --from`;
    returns the command's output and the converted file."""
    run_in_release(release, textwrap.dedent(BUILD_SCRIPT.format(call=call)), str(tmp_path))
    out = tmp_path / "model.safetensors"
    result = CliRunner().invoke(
        main,
        [
            "convert",
            str(tmp_path / "model.pt"),
            "--from",
            f"x-transformers=={release}",
            "--config",
            call,
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output, out


def _assert_release_outputs(tmp_path: Path, out: Path) -> None:
    """The converted file computes what the release computed on the tokens BUILD_SCRIPT saved."""
    io = load_file(tmp_path / "io.safetensors")
    with torch.no_grad():
        ours = load(out)(io["tokens"])
    assert (ours - io["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("release", ["0.27.1", "1.0.4", "1.26.0"])
def test_a_config_with_ignored_kwargs_converts_with_the_releases_outputs(
    tmp_path: Path, release: str
) -> None:
    output, out = _convert_from_release(tmp_path, release, CALL)
    assert f"ignored, as x-transformers {release} did:" in output
    for name in IGNORED:
        assert f"attn_layers.{name}=" in output
    cli = CliRunner()
    recorded = json.loads(read_checkpoint_headers(out).metadata["xtf.ignored"])
    assert [item["option"] for item in recorded] == IGNORED
    shown = cli.invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0 and "attn_layers.flash_attn=True" in shown.output
    assert json.loads(cli.invoke(main, ["inspect", str(out), "--json"]).output)["ignored"] == recorded
    _assert_release_outputs(tmp_path, out)


def test_an_old_name_converts_under_it(tmp_path: Path) -> None:
    call = (
        "TransformerWrapper(num_tokens=64, max_seq_len=32, use_pos_emb=False, "
        "attn_layers=Decoder(dim=32, depth=2, heads=4, attn_talking_heads=False))"
    )
    output, out = _convert_from_release(tmp_path, "0.25.7", call)
    assert "read 'use_pos_emb' as use_abs_pos_emb" in output
    _assert_release_outputs(tmp_path, out)


def test_a_stacks_own_dim_head_converts_as_attn_dim_head(tmp_path: Path) -> None:
    """Before 0.0.22 (Encoder) / 0.0.26 (Decoder) the head size was the stack's own `dim_head`."""
    call = "TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=2, heads=4, dim_head=16))"
    output, out = _convert_from_release(tmp_path, "0.0.20", call)
    assert "read 'dim_head' as attn_dim_head" in output
    _assert_release_outputs(tmp_path, out)
