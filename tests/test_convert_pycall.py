"""`--config` takes the constructor call as users wrote it: read with `ast`, never run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from xtf_cli.cli import main
from xtf_converters import xtransformers
from xtf_converters.pycall import parse_call, read_python_file
from xtf_core import build
from xtf_core.errors import ConversionError

CALL = "TransformerWrapper(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=6, heads=8))"


def test_an_inline_call_reads_as_the_spec_json_would_write_it() -> None:
    assert parse_call(CALL) == {
        "class": "TransformerWrapper",
        "num_tokens": 256,
        "max_seq_len": 1024,
        "attn_layers": {"class": "Decoder", "dim": 512, "depth": 6, "heads": 8},
    }


def test_literals_module_paths_and_arithmetic_on_numbers() -> None:
    spec = parse_call(
        """x_transformers.ContinuousTransformerWrapper(
            dim_in = 2 ** 5, dim_out = 64 * 4 // 2, max_seq_len = -(-1024), emb_dropout = 1 / 10,
            attn_layers = x_transformers.x_transformers.Encoder(
                dim = 512, depth = 6, heads = 8, rotary_pos_emb = True, custom_layers = ('a', 'f'),
                rel_pos_kwargs = {'max_distance': 128}, attn_dim_head = None,
            ),
        )"""
    )
    assert spec["class"] == "ContinuousTransformerWrapper"
    assert (spec["dim_in"], spec["dim_out"], spec["max_seq_len"]) == (32, 128, 1024)
    assert spec["emb_dropout"] == pytest.approx(0.1)
    layers = spec["attn_layers"]
    assert layers["class"] == "Encoder" and layers["custom_layers"] == ["a", "f"]
    assert layers["rel_pos_kwargs"] == {"max_distance": 128} and layers["attn_dim_head"] is None
    assert layers["rotary_pos_emb"] is True


@pytest.mark.parametrize(
    ("text", "named", "line"),
    [
        (
            "TransformerWrapper(num_tokens=n, max_seq_len=8, attn_layers=Decoder(dim=8, depth=1))",
            "`n` is a variable",
            1,
        ),
        (
            "TransformerWrapper(\n num_tokens=8,\n max_seq_len=int('8'), attn_layers=Decoder(dim=8, depth=1))",
            "`int('8')`",
            3,
        ),
        (
            "TransformerWrapper(num_tokens=8, max_seq_len=8, attn_layers=nn.Decoder(dim=8, depth=1))",
            "`nn.Decoder(",
            1,
        ),
        (
            "TransformerWrapper(num_tokens=cfg.tokens, max_seq_len=8, attn_layers=Decoder(dim=8))",
            "an attribute",
            1,
        ),
        ("TransformerWrapper(num_tokens=8, **cfg)", "unpacked", 1),
        ("TransformerWrapper(8, max_seq_len=8)", "positional", 1),
        ("TransformerWrapper(num_tokens=[i for i in range(3)])", "ListComp", 1),
        ("TransformerWrapper(num_tokens=2 ** 1000)", "exponent", 1),
        ("TransformerWrapper(num_tokens='a' * 3)", "not a number", 1),
        ("__import__('os').system('true')", "other than an x-transformers model class", 1),
        ("Decoder", "not a constructor call", 1),
    ],
)
def test_anything_but_literals_and_allowlisted_classes_is_refused_naming_it_and_its_line(
    text: str, named: str, line: int
) -> None:
    with pytest.raises(ConversionError, match=rf"line {line}: .*{__import__('re').escape(named)}"):
        parse_call(text)


def test_a_python_file_gives_its_one_constructor_call(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(
        "import torch\nfrom x_transformers import TransformerWrapper, Decoder\n\nDIM = 512\n\n"
        "class App(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        f"        self.net = {CALL}\n"
    )
    assert read_python_file(path) == parse_call(CALL)


def test_a_python_file_with_none_or_several_calls_is_refused_naming_the_lines(tmp_path: Path) -> None:
    none = tmp_path / "none.py"
    none.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    with pytest.raises(ConversionError, match="no constructor call"):
        read_python_file(none)
    several = tmp_path / "several.py"
    several.write_text(f"a = {CALL}\n\nb = Encoder(dim=8, depth=1)\n")
    with pytest.raises(ConversionError, match=r"line 1 \(TransformerWrapper\), line 3 \(Encoder\)"):
        read_python_file(several)
    broken = tmp_path / "broken.py"
    broken.write_text("model = TransformerWrapper(\n")
    with pytest.raises(ConversionError, match="line 1: not valid Python"):
        read_python_file(broken)


def test_a_file_whose_call_uses_a_variable_is_refused_naming_the_variable_and_its_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.py"
    path.write_text(
        "DIM = 512\nmodel = TransformerWrapper(\n    num_tokens=256,\n    max_seq_len=1024,\n"
        "    attn_layers=Decoder(dim=DIM, depth=6, heads=8),\n)\n"
    )
    with pytest.raises(ConversionError, match=r"model.py, line 5: `DIM` is a variable"):
        read_python_file(path)


def test_the_file_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "model.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('x')\nmodel = {CALL}\n")
    read_python_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("form", ["inline", "py", "json"])
def test_convert_takes_the_call_inline_as_a_py_file_or_as_json(tmp_path: Path, form: str) -> None:
    call = "TransformerWrapper(num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))"
    spec = parse_call(call)
    model = build(spec)
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    config = {"inline": call, "py": tmp_path / "model.py", "json": tmp_path / "model.json"}[form]
    (tmp_path / "model.py").write_text(f"from x_transformers import *\nmodel = {call}\n")
    (tmp_path / "model.json").write_text(json.dumps(spec))
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(
        main,
        ["convert", str(pt), "--from", "x-transformers==2.31.10", "--config", str(config), "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    loaded = __import__("xtf_core").load(out)
    tokens = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(tokens), model.eval()(tokens), atol=1e-5, rtol=0)
    assert xtransformers.read_config(str(config)) == spec


def test_cli_names_the_refused_part_of_an_inline_call(tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(1)}, pt)
    result = CliRunner().invoke(
        main,
        [
            "convert",
            str(pt),
            "--from",
            "x-transformers==2.31.10",
            "-o",
            str(tmp_path / "o.safetensors"),
            "--config",
            "TransformerWrapper(num_tokens=os.environ, max_seq_len=8, attn_layers=Decoder(dim=8, depth=1))",
        ],
    )
    assert result.exit_code == 1
    assert "line 1: `os.environ` is an attribute" in result.output
