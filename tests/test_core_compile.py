"""torch.compile captures a common model whole (no graph break), and the compiled model computes what the
eager one does, forward and backward."""

from __future__ import annotations

import pytest
import torch

import xtf_core

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 64,
    "max_seq_len": 32,
    "attn_layers": {
        "class": "Decoder",
        "dim": 32,
        "depth": 2,
        "heads": 4,
        "attn_kv_heads": 2,
        "rotary_pos_emb": True,
        "attn_flash": True,
    },
}


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is unavailable")
def test_a_rotary_gqa_decoder_compiles_whole_and_matches_eager() -> None:
    # aot_eager traces the forward and the backward exactly as inductor would, without generating code
    # (the generated kernels are torch's business; a graph break or a trace failure is ours)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = xtf_core.build(SPEC)
    tokens = torch.randint(0, 64, (2, 32))
    eager = model(tokens)
    eager.square().mean().backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(tokens)
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if name in eager_grads:
            torch.testing.assert_close(p.grad, eager_grads[name], rtol=0, atol=1e-5, msg=name)
    with torch.inference_mode():
        torch.testing.assert_close(compiled.eval()(tokens), model.eval()(tokens), rtol=0, atol=1e-5)
