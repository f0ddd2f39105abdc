"""Every op forward and back, on float32, bf16, fp16 and int64; refusals name the tensor and the fix."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xtf_core.chain.ops import Add, Drop, Merge, Rename, Reshape, Split, Transpose, ValueTransform
from xtf_core.chain.tensors import GivenTensor, Realiser, Workspace, check_drops
from xtf_core.errors import IrreversibleStepError, MigrationError

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]


def sample(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(-1000, 1000, shape, generator=generator, dtype=dtype)


def run(ops, tensors):
    ws = Workspace({name: GivenTensor.of(tensor) for name, tensor in tensors.items()}, step="test")
    for op in ops:
        op.apply(ws)
    realise = Realiser()
    check_drops(ws.drops, realise)
    return {name: realise(node) for name, node in ws.tensors.items()}


def assert_identical(left, right):
    assert list(left) == list(right)
    for name in left:
        assert left[name].dtype == right[name].dtype and left[name].shape == right[name].shape, name
        assert left[name].contiguous().view(torch.uint8).equal(right[name].contiguous().view(torch.uint8)), (
            name
        )


def round_trip(ops, tensors):
    forward = run(ops, tensors)
    back = run([op.reverse() for op in reversed(ops)], forward)
    assert_identical(back, tensors)
    return forward


@pytest.mark.parametrize("dtype", DTYPES)
def test_rename_with_wildcards(dtype):
    tensors = {
        "layers.0.attn.to_out.weight": sample((2, 3), dtype),
        "layers.1.attn.to_out.weight": sample((2, 3), dtype, 1),
        "emb": sample((4,), dtype),
    }
    forward = round_trip([Rename("layers.*.attn.to_out.weight", "layers.*.attn.out_proj.weight")], tensors)
    assert list(forward) == ["layers.0.attn.out_proj.weight", "layers.1.attn.out_proj.weight", "emb"]
    assert forward["layers.1.attn.out_proj.weight"] is tensors["layers.1.attn.to_out.weight"]


def test_double_star_crosses_dots_and_regex_rename():
    tensors = {"a.b.c.gamma": torch.ones(2), "gamma": torch.zeros(1)}
    assert list(run([Rename("**.gamma", "**.weight")], tensors)) == ["a.b.c.weight", "gamma"]
    op = Rename(r"(.*)\.gamma", r"\1.g", regex=True, reverse_source=r"(.*)\.g", reverse_target=r"\1.gamma")
    assert list(round_trip([op], tensors)) == ["a.b.c.g", "gamma"]
    assert Rename(r"(.*)", r"x\1", regex=True).irreversible_reason


def test_rename_refuses_collisions_and_missing_literal():
    with pytest.raises(MigrationError, match="already exist"):
        run([Rename("a", "b")], {"a": torch.ones(1), "b": torch.ones(1)})
    with pytest.raises(MigrationError, match="no tensor named 'nope'"):
        run([Rename("nope", "x")], {"a": torch.ones(1)})
    with pytest.raises(MigrationError, match="same wildcards"):
        Rename("a.*", "b")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_split_and_merge(dtype, dim):
    tensors = {"l.0.qkv": sample((6, 9), dtype), "l.1.qkv": sample((6, 9), dtype, 1)}
    forward = round_trip([Split("l.*.qkv", ("l.*.q", "l.*.k", "l.*.v"), dim=dim)], tensors)
    assert list(forward) == ["l.0.q", "l.0.k", "l.0.v", "l.1.q", "l.1.k", "l.1.v"]
    assert torch.equal(forward["l.1.k"], tensors["l.1.qkv"].chunk(3, dim=dim)[1])
    merged = round_trip([Merge(("l.*.q", "l.*.k", "l.*.v"), "l.*.qkv", dim=dim)], forward)
    assert_identical(merged, tensors)


def test_split_with_sizes_and_bad_sizes():
    tensors = {"w": sample((7, 2), torch.float32)}
    forward = round_trip([Split("w", ("a", "b"), sizes=(3, 4))], tensors)
    assert forward["a"].shape == (3, 2) and forward["b"].shape == (4, 2)
    with pytest.raises(MigrationError, match="2 equal parts"):
        run([Split("w", ("a", "b"))], tensors)


def test_merge_refuses_unequal_sizes_without_declared_sizes():
    with pytest.raises(MigrationError, match="declare sizes="):
        run([Merge(("a", "b"), "ab")], {"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(MigrationError, match="missing"):
        run([Merge(("a", "b"), "ab")], {"a": torch.ones(2)})


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_transpose(dtype):
    tensors = {"w": sample((4, 6), dtype)}
    forward = round_trip([Reshape("w", (4, 6), (2, 2, 6)), Transpose("w", 0, 2)], tensors)
    assert forward["w"].shape == (6, 2, 2)
    assert torch.equal(forward["w"], tensors["w"].reshape(2, 2, 6).transpose(0, 2))
    with pytest.raises(MigrationError, match=r"expected \[3, 8\]"):
        run([Reshape("w", (3, 8), (24,))], tensors)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_and_drop(dtype):
    code = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}[dtype]
    tensors = {"w": sample((3,), dtype)}
    forward = round_trip([Add("bias", (3,), code, 1.0)], tensors)
    assert torch.equal(forward["bias"], torch.ones(3, dtype=dtype))
    zeros = {"w": sample((3,), dtype), "unused": torch.zeros(2, 2, dtype=dtype)}
    assert list(round_trip([Drop("unused", shape=(2, 2), dtype=code)], zeros)) == ["w"]


def test_drop_refuses_non_zero_naming_tensor_and_max_value():
    tensors = {
        "keep": torch.ones(1),
        "l.0.gate": torch.tensor([0.0, -0.75, 0.25]),
        "l.1.gate": torch.zeros(2),
    }
    with pytest.raises(MigrationError, match=r"'l\.0\.gate' \(max abs value 0\.75") as info:
        run([Drop("l.*.gate")], tensors)
    assert "l.1.gate" not in str(info.value) and "never drop a non-zero tensor silently" in str(info.value)
    with pytest.raises(MigrationError, match="difference from 1.0"):
        run([Drop("keep", fill=1.0), Drop("l.1.gate", fill=1.0)], tensors)


def test_irreversible_ops_say_why():
    assert "shape and dtype" in Drop("x").irreversible_reason
    assert "wildcard" in Drop("a.*", shape=(1,), dtype="F32").irreversible_reason
    with pytest.raises(IrreversibleStepError, match="backward"):
        ValueTransform("x", lambda t: t * 2).reverse()
    with pytest.raises(IrreversibleStepError, match="Drop\\('x'\\)"):
        Drop("x").reverse()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_value_transform_with_backward(dtype):
    tensors = {"norm.gamma": sample((5,), dtype)}
    op = ValueTransform("*.gamma", lambda t: -t, lambda t: -t, description="negate")
    forward = round_trip([op], tensors)
    assert torch.equal(forward["norm.gamma"], -tensors["norm.gamma"])


def test_value_transform_must_keep_shape_and_dtype():
    with pytest.raises(MigrationError, match="keeps shape and dtype"):
        run([ValueTransform("w", lambda t: t.double())], {"w": torch.ones(2)})


names = st.lists(st.from_regex(r"[a-z]{1,4}", fullmatch=True), min_size=1, max_size=4, unique=True)


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES),
    leaf=names,
    seed=st.integers(0, 2**16),
)
def test_reversible_chains_restore_identical_bytes(layers, rows, cols, dtype, leaf, seed):
    tensors = {
        f"l.{i}.{name}": sample((3 * rows, cols), dtype, seed + i) for i in range(layers) for name in leaf
    }
    tensors["extra"] = torch.zeros(2, dtype=dtype)
    code = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}[dtype]
    first = leaf[0]
    ops = [
        Rename(f"l.*.{first}", f"blocks.*.{first}_w"),
        Split(f"blocks.*.{first}_w", ("blocks.*.q", "blocks.*.k", "blocks.*.v"), dim=0),
        Merge(("blocks.*.q", "blocks.*.v"), "blocks.*.qv", dim=1),
        Transpose("blocks.*.k"),
        Reshape("blocks.*.qv", (rows, 2 * cols), (2 * rows * cols,)),
        Drop("extra", shape=(2,), dtype=code),
        Add("new", (rows,), code, 0.0),
    ]
    round_trip(ops, tensors)
