"""Run inside a real x-transformers release: load exported state dicts strictly and print their outputs' diffs.

Usage: python release_runner.py JOB.json — JOB lists {"pt", "config", "io", "forward_kwargs", "output"}.
Prints one JSON line: {"<pt>": max_abs_diff, ...}. Uses only the release and torch/safetensors.
"""

import json
import sys
from pathlib import Path

import torch
import x_transformers
from safetensors.torch import load_file


def build(spec):
    kwargs = {k: v for k, v in spec.items() if k != "class"}
    if isinstance(kwargs.get("attn_layers"), dict):
        kwargs["attn_layers"] = build(kwargs["attn_layers"])
    return getattr(x_transformers, spec["class"])(**kwargs)


def main(job_path):
    results = {}
    for job in json.loads(Path(job_path).read_text()):
        torch.manual_seed(0)
        model = build(json.loads(Path(job["config"]).read_text()))
        state = torch.load(job["pt"], map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        model.eval()
        io = load_file(job["io"])
        kwargs = {
            k: io[v] if isinstance(v, str) else [io[x] for x in v] for k, v in job["forward_kwargs"].items()
        }
        with torch.no_grad():
            out = model(kwargs.pop("x"), **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        results[job["pt"]] = (out - io[job["output"]]).abs().max().item()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
