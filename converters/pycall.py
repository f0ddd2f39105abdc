"""Read an x-transformers constructor call, as users write it in Python, into a spec, without running it.

`TransformerWrapper(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=6, heads=8))`
becomes `{"class": "TransformerWrapper", "num_tokens": 256, ..., "attn_layers": {"class": "Decoder", ...}}`.
The text is parsed with `ast` and walked: only literals (numbers, strings, True/False/None, lists, tuples,
dicts), unary minus/plus and arithmetic on numbers, and calls of the allowlisted classes are read. Nothing
is imported, evaluated or looked up; anything else (a variable, another function's call, an attribute, a
comprehension) is refused, naming it and its line.
"""

from __future__ import annotations

import ast
import math
import operator
import os
from pathlib import Path
from typing import Any

from xtf_core.errors import ConversionError

MODEL_CLASSES = ("TransformerWrapper", "ContinuousTransformerWrapper", "XTransformer")
LAYER_CLASSES = ("Encoder", "Decoder", "CrossAttender", "AttentionLayers")
CLASSES = MODEL_CLASSES + LAYER_CLASSES
# the modules a class may be written under: `x_transformers.Decoder`, `x_transformers.x_transformers.Decoder`
MODULE_PATHS = (("x_transformers",), ("x_transformers", "x_transformers"), ("xtf_core",))

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
MAX_EXPONENT = 64  # 2 ** 64 is as large as a size in a config gets; larger powers are refused, not computed
MAX_MAGNITUDE = 2**64


def _dotted(node: ast.expr) -> tuple[str, ...] | None:
    """`a.b.c` -> ('a', 'b', 'c'); None for anything that is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return tuple(reversed(parts))


def class_name(func: ast.expr) -> str | None:
    """The allowlisted class a call's callee names (bare or under an x_transformers module), else None."""
    dotted = _dotted(func)
    if dotted is None or dotted[-1] not in CLASSES:
        return None
    if len(dotted) == 1 or dotted[:-1] in MODULE_PATHS:
        return dotted[-1]
    return None


class _Reader:
    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where

    def _text(self, node: ast.AST) -> str:
        segment = ast.get_source_segment(self.source, node) or ast.unparse(node)
        segment = " ".join(segment.split())
        return segment if len(segment) <= 60 else segment[:57] + "..."

    def refuse(self, node: ast.AST, what: str) -> ConversionError:
        line = getattr(node, "lineno", "?")
        return ConversionError(
            f"{self.where}, line {line}: `{self._text(node)}` is {what}; the config is read, not run: only "
            f"literals (numbers, strings, True/False/None, lists, tuples, dicts), arithmetic on numbers and "
            f"the classes {', '.join(CLASSES)} are allowed"
        )

    def call(self, node: ast.Call) -> dict[str, Any]:
        name = class_name(node.func)
        if name is None:
            raise self.refuse(node, "a call to something other than an x-transformers model class")
        if node.args:
            raise self.refuse(
                node.args[0], f"a positional argument to {name}; write every option as name=value"
            )
        spec: dict[str, Any] = {"class": name}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise self.refuse(keyword.value, "unpacked into keyword arguments (**)")
            if keyword.arg == "class":
                raise self.refuse(keyword, "not an option")
            spec[keyword.arg] = self.value(keyword.value)
        return spec

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is Ellipsis or isinstance(node.value, (bytes, complex)):
                raise self.refuse(node, "not a number, string, True, False or None")
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.value(item) for item in node.elts]
        if isinstance(node, ast.Dict):
            out: dict[str, Any] = {}
            for key, item in zip(node.keys, node.values):
                if key is None:
                    raise self.refuse(item, "unpacked into a dict (**)")
                key_value = self.value(key)
                if not isinstance(key_value, str):
                    raise self.refuse(key, "a dict key that is not a string")
                out[key_value] = self.value(item)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self._number(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return self._arithmetic(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            raise self.refuse(node, "a variable")
        if isinstance(node, ast.Attribute):
            raise self.refuse(node, "an attribute")
        raise self.refuse(node, f"an expression ({type(node).__name__})")

    def _number(self, node: ast.expr) -> int | float:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.refuse(node, "not a number (arithmetic is on numbers only)")
        return value

    def _arithmetic(self, node: ast.BinOp) -> int | float:
        left, right = self._number(node.left), self._number(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise self.refuse(node, f"a power with an exponent above {MAX_EXPONENT}")
        try:
            result = _ARITHMETIC[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as exc:
            raise self.refuse(node, f"arithmetic that fails ({exc})") from exc
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise self.refuse(node, "arithmetic without a finite real result")
        if abs(result) > MAX_MAGNITUDE:
            raise self.refuse(node, "a number too large for a config")
        return result


def _parse(source: str, where: str, mode: str) -> ast.AST:
    try:
        return ast.parse(source, filename=where, mode=mode)
    except SyntaxError as exc:
        raise ConversionError(f"{where}, line {exc.lineno}: not valid Python ({exc.msg})") from exc


def parse_call(text: str, where: str = "--config") -> dict[str, Any]:
    """The spec of one constructor call written as a Python expression (e.g. `TransformerWrapper(...)`)."""
    tree = _parse(text.strip(), where, "eval")
    assert isinstance(tree, ast.Expression)
    reader = _Reader(text.strip(), where)
    if not isinstance(tree.body, ast.Call):
        raise reader.refuse(tree.body, "not a constructor call such as TransformerWrapper(...)")
    return reader.call(tree.body)


def outermost_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of allowlisted classes that are not themselves an argument of such a call, in source order."""
    found: list[ast.Call] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Call) and class_name(node.func) is not None:
            found.append(node)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return sorted(found, key=lambda call: (call.lineno, call.col_offset))


def read_python_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec of the one x-transformers constructor call in a Python file (the file is parsed, never run).

    Every call of an allowlisted class that is not nested in another one counts, wherever it sits (module
    level, a function, a class body); the file must hold exactly one."""
    where = str(path)
    try:
        source = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{where}: cannot read the config ({exc})") from exc
    tree = _parse(source, where, "exec")
    calls = outermost_calls(tree)
    if not calls:
        raise ConversionError(
            f"{where}: no constructor call of {', '.join(CLASSES)} found; write e.g. "
            "model = TransformerWrapper(num_tokens=..., max_seq_len=..., attn_layers=Decoder(...))"
        )
    if len(calls) > 1:
        lines = ", ".join(f"line {call.lineno} ({class_name(call.func)})" for call in calls)
        raise ConversionError(
            f"{where}: several constructor calls ({lines}); keep the one of the checkpoint's model in the "
            "file, or pass that call itself as --config 'TransformerWrapper(...)'"
        )
    return _Reader(source, where).call(calls[0])


def looks_like_call(text: str) -> bool:
    """Whether a --config value is a constructor call written inline rather than a path."""
    stripped = text.strip()
    return "(" in stripped and stripped.endswith(")") and not Path(stripped).exists()
