"""An x-transformers model inside a bigger state dict: taken out by its prefix, and put back by `--into`.

The last two tests are the issue's acceptance: a real 1.26.0 `AutoregressiveWrapper` state dict (every key
under `net.`) and a user module holding a 0.x-era model under `decoder.` (with an optimizer state and an
epoch beside it) convert, and the pickle exported into for 2.31.10 loads into the same application model
built with the real 2.31.10, giving the old release's outputs.
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
from xtf_converters import releases, xtransformers
from xtf_converters.prefix import candidate_prefixes, replace_under
from xtf_core import build, load
from xtf_core.errors import ConversionError

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 32,
    "max_seq_len": 16,
    "attn_layers": {"class": "Decoder", "dim": 16, "depth": 2, "heads": 2},
}
NOW = "2.31.10"


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(SPEC)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _tokens() -> torch.Tensor:
    return torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))


def _convert(tmp_path: Path, obj: object, **kwargs) -> tuple[dict, Path]:
    pt, out = tmp_path / "in.pt", tmp_path / "out.safetensors"
    torch.save(obj, pt)
    return xtransformers.convert(pt, out, release=NOW, config=SPEC, **kwargs), out


def test_the_one_prefix_where_the_layout_fits_is_found(tmp_path: Path) -> None:
    model = _model()
    app = {"net." + k: v for k, v in model.state_dict().items()}
    app["head.weight"] = torch.randn(3, 3)  # the user's own tensor, outside the model
    report, out = _convert(tmp_path, {"model": app, "epoch": 4})
    assert report.prefix == "net." and report.state_dict_at == "key 'model'"
    torch.testing.assert_close(load(out)(_tokens()), model(_tokens()), atol=1e-5, rtol=0)


def test_a_named_prefix_is_used_and_a_missing_one_refused(tmp_path: Path) -> None:
    model = _model()
    app = {"model.decoder." + k: v for k, v in model.state_dict().items()}
    report, _ = _convert(tmp_path, app, prefix="model.decoder")
    assert report.prefix == "model.decoder."
    with pytest.raises(ConversionError, match="no tensor under the prefix 'encoder.'"):
        _convert(tmp_path, app, prefix="encoder.")


def test_several_fitting_prefixes_are_listed_and_the_user_asked_to_choose(tmp_path: Path) -> None:
    a, b = _model(0), _model(1)
    both = {
        **{"teacher." + k: v for k, v in a.state_dict().items()},
        **{"student." + k: v for k, v in b.state_dict().items()},
    }
    with pytest.raises(ConversionError, match=r"several prefixes \('student\.', 'teacher\.'\).*--prefix"):
        _convert(tmp_path, both)
    _, out = _convert(tmp_path, both, prefix="student.")
    torch.testing.assert_close(load(out)(_tokens()), b(_tokens()), atol=1e-5, rtol=0)


def test_a_layout_mismatch_names_the_prefix_it_sees(tmp_path: Path) -> None:
    model = _model()
    wrong = json.loads(json.dumps(SPEC))
    wrong["attn_layers"]["depth"] = 3  # the config is wrong too: nothing fits, under any prefix
    pt = tmp_path / "in.pt"
    torch.save({"net." + k: v for k, v in model.state_dict().items()}, pt)
    with pytest.raises(
        ConversionError, match=r"compared under the prefix 'net\.', where \d+ of the \d+ tensor names"
    ):
        xtransformers.convert(pt, tmp_path / "o.safetensors", release=NOW, config=wrong)


def test_candidate_prefixes_and_replacement_keep_everything_else_in_place() -> None:
    layout = {"token_emb.emb.weight": (4, 2), "to_logits.weight": (4, 2)}
    names = ["opt.x", "a.b.token_emb.emb.weight", "a.b.to_logits.weight", "token_emb.emb.weight"]
    assert candidate_prefixes(names, [layout]) == ["", "a.b."]
    state = {"first": 1, "a.b.token_emb.emb.weight": 2, "mid": 3, "a.b.to_logits.weight": 4, "last": 5}
    replaced = replace_under(state, "a.b.", {"x": 9})
    assert list(replaced.items()) == [("first", 1), ("a.b.x", 9), ("mid", 3), ("last", 5)]


def test_export_into_replaces_only_the_model_and_keeps_every_other_entry(tmp_path: Path) -> None:
    model = _model()
    extra = torch.randn(3, 3)
    original = {
        "model": {"head.weight": extra, **{"net." + k: v for k, v in model.state_dict().items()}},
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "epoch": 7,
    }
    pt = tmp_path / "app.pt"
    torch.save(original, pt)
    stamped = tmp_path / "m.safetensors"
    xtransformers.convert(pt, stamped, release=NOW, config=SPEC)
    out = tmp_path / "new.pt"
    result = CliRunner().invoke(
        main, ["convert", str(stamped), "--to", f"x-transformers=={NOW}", "--into", str(pt), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "tensors under 'net.' replaced" in result.output
    new = torch.load(out, weights_only=True)
    assert new["epoch"] == 7 and new["optimizer"]["param_groups"] == original["optimizer"]["param_groups"]
    assert torch.equal(new["optimizer"]["state"][0]["step"], torch.tensor(3.0))
    assert torch.equal(new["model"]["head.weight"], extra)
    assert set(new["model"]) == set(original["model"])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(new["model"]["net." + name], tensor, atol=0, rtol=0)


def test_cli_prefix_option_and_report(tmp_path: Path) -> None:
    model = _model()
    pt, out = tmp_path / "in.pt", tmp_path / "o.safetensors"
    torch.save({"net." + k: v for k, v in model.state_dict().items()}, pt)
    (tmp_path / "c.json").write_text(json.dumps(SPEC))
    args = ["convert", str(pt), "--from", f"x-transformers=={NOW}", "--config", str(tmp_path / "c.json")]
    result = CliRunner().invoke(main, [*args, "--prefix", "net.", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "prefix 'net.'" in result.output
    result = CliRunner().invoke(main, [*args, "--into", str(pt), "-o", str(out)])
    assert result.exit_code != 0 and "--into goes with --to" in result.output


# ------------------------------------------------------------------------ against the real releases

APP_1_26 = """
import sys, torch
from safetensors.torch import save_file
from x_transformers import TransformerWrapper, Decoder
from x_transformers.autoregressive_wrapper import AutoregressiveWrapper

def zero_biases_2_31_lacks(model):
    # LayerNorm and logit biases: later releases have no such tensors, so an export to 2.31.10 is refused
    # (naming the bias) unless they are zero
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) or name.endswith("to_logits"):
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()

torch.manual_seed(0)
model = AutoregressiveWrapper(TransformerWrapper(num_tokens=64, max_seq_len=32,
    attn_layers=Decoder(dim=32, depth=2, heads=4, rotary_pos_emb=True)))
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    zero_biases_2_31_lacks(model)
model.eval()
tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model.net(tokens)
torch.save(model.state_dict(), sys.argv[1] + "/app.pt")
save_file({"tokens": tokens, "logits": logits.contiguous()}, sys.argv[1] + "/io.safetensors")
"""
SPEC_1_26 = (
    "TransformerWrapper(num_tokens=64, max_seq_len=32, "
    "attn_layers=Decoder(dim=32, depth=2, heads=4, rotary_pos_emb=True))"
)

APP_0X = """
import sys, torch
from torch import nn
from safetensors.torch import save_file
from x_transformers import TransformerWrapper, Decoder

def zero_biases_2_31_lacks(model):
    # LayerNorm and logit biases: later releases have no such tensors, so an export to 2.31.10 is refused
    # (naming the bias) unless they are zero
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) or name.endswith("to_logits"):
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


class App(nn.Module):
    def __init__(self):
        super().__init__()
        self.adapter = nn.Linear(8, 8)
        self.decoder = TransformerWrapper(num_tokens=64, max_seq_len=32,
            attn_layers=Decoder(dim=32, depth=2, heads=4))

torch.manual_seed(0)
app = App()
opt = torch.optim.Adam(app.parameters(), lr=1e-2)
tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
loss = app.decoder(tokens).logsumexp(-1).mean() + app.adapter(torch.ones(1, 8)).sum()
loss.backward()
opt.step()
with torch.no_grad():
    zero_biases_2_31_lacks(app)
app.eval()
with torch.no_grad():
    logits = app.decoder(tokens)
torch.save({"model": app.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, sys.argv[1] + "/app.pt")
save_file({"tokens": tokens, "logits": logits.contiguous()}, sys.argv[1] + "/io.safetensors")
"""
SPEC_0X = "TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=2, heads=4))"

LOAD_2_31 = """
import json, sys, torch
from torch import nn
from safetensors.torch import load_file
import x_transformers
from x_transformers.autoregressive_wrapper import AutoregressiveWrapper

def build(spec):
    kwargs = {k: v for k, v in spec.items() if k != "class"}
    if isinstance(kwargs.get("attn_layers"), dict):
        kwargs["attn_layers"] = build(kwargs["attn_layers"])
    return getattr(x_transformers, spec["class"])(**kwargs)

folder, kind = sys.argv[1], sys.argv[2]
spec = json.load(open(folder + "/new.pt.config.json"))
saved = torch.load(folder + "/new.pt", map_location="cpu", weights_only=True)
if kind == "autoregressive":
    app = AutoregressiveWrapper(build(spec))
    app.load_state_dict(saved, strict=True)
    net = app.net
else:
    class App(nn.Module):
        def __init__(self):
            super().__init__()
            self.adapter = nn.Linear(8, 8)
            self.decoder = build(spec)
    app = App()
    app.load_state_dict(saved["model"], strict=True)
    net = app.decoder
app.eval()
io = load_file(folder + "/io.safetensors")
with torch.no_grad():
    print(json.dumps((net(io["tokens"]) - io["logits"]).abs().max().item()))
"""


def _round_trip(tmp_path: Path, release: str, app_script: str, spec: str, kind: str) -> dict:
    if release != NOW and Version(release) < releases.FIRST_SUPPORTED:
        pytest.skip(f"the chain starts at {releases.FIRST_SUPPORTED}")
    run_in_release(release, textwrap.dedent(app_script), str(tmp_path))
    stamped = tmp_path / "m.safetensors"
    cli = CliRunner()
    result = cli.invoke(
        main,
        [
            "convert",
            str(tmp_path / "app.pt"),
            "--from",
            f"x-transformers=={release}",
            "--config",
            spec,
            "-o",
            str(stamped),
        ],
    )
    assert result.exit_code == 0, result.output
    io = load_file(tmp_path / "io.safetensors")
    with torch.no_grad():
        ours = load(stamped)(io["tokens"])
    assert (ours - io["logits"]).abs().max().item() <= 1e-4
    result = cli.invoke(
        main,
        [
            "convert",
            str(stamped),
            "--to",
            f"x-transformers=={NOW}",
            "--into",
            str(tmp_path / "app.pt"),
            "-o",
            str(tmp_path / "new.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    diff = json.loads(run_in_release(NOW, LOAD_2_31, str(tmp_path), kind).stdout.strip().splitlines()[-1])
    assert diff <= 1e-4, (
        f"x-transformers {NOW} computes something else from the exported app checkpoint: {diff}"
    )
    return {"convert": result.output}


def test_real_1_26_autoregressive_wrapper_converts_and_its_export_loads_in_real_2_31(tmp_path: Path) -> None:
    _round_trip(tmp_path, "1.26.0", APP_1_26, SPEC_1_26, "autoregressive")


@pytest.mark.parametrize("release", ["0.27.1", "0.28.4"])
def test_real_0x_model_inside_a_user_module_converts_and_its_export_loads_in_real_2_31(
    tmp_path: Path, release: str
) -> None:
    _round_trip(tmp_path, release, APP_0X, SPEC_0X, "module")
    original = torch.load(tmp_path / "app.pt", weights_only=True)
    new = torch.load(tmp_path / "new.pt", weights_only=True)
    assert new["epoch"] == 3
    assert new["optimizer"]["param_groups"] == original["optimizer"]["param_groups"]
    for index, state in original["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(new["optimizer"]["state"][index][name], value)
    for name in ("adapter.weight", "adapter.bias"):
        assert torch.equal(new["model"][name], original["model"][name])
