"""Run inside a real x-transformers release: build option configs, perturb them, run them, save what they computed.

Usage: python option_runner.py JOB.json — JOB lists {"name", "spec", "out", "mask", "context"} (build jobs) or
{"name", "spec", "pt", "io"} (export checks: load `pt` strictly into a model built from `spec`, run the inputs
saved in `io`, compare with the output saved there). Prints one JSON line: {name: result}. A build result is
{"ok": true, "layout": [[key, shape], ...]} or {"ok": false, "error": "..."}; a check result is the max abs
difference on unpadded positions (or an error string). Uses only the release and torch.
"""

import json
import sys
import traceback

import torch
import x_transformers


def build(spec):
    kwargs = {k: v for k, v in spec.items() if k != "class"}
    if isinstance(kwargs.get("attn_layers"), dict):
        kwargs["attn_layers"] = build(kwargs["attn_layers"])
    for key in ("shift_tokens", "layers_execute_order", "custom_layers"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in kwargs[key])
    return getattr(x_transformers, spec["class"])(**kwargs)


def inputs(spec, job, gen):
    layers = spec.get("attn_layers", spec)
    dim = layers["dim"]
    if spec["class"] == "TransformerWrapper":
        x = torch.randint(0, spec["num_tokens"], (2, 6), generator=gen)
    else:
        x = torch.randn(2, 6, spec.get("dim_in") or dim, generator=gen)
    io = {"x": x}
    if job.get("mask"):
        mask = torch.ones(2, 6, dtype=torch.bool)
        mask[1, 4:] = False
        io["mask"] = mask
    if job.get("embed_ids"):
        io["embed_ids"] = {
            name: torch.randint(0, count, (2, 6), generator=gen)
            for name, count in spec["embed_num_tokens"].items()
        }
    if job.get("condition"):
        io["condition"] = torch.randn(2, layers["dim_condition"], generator=gen)
    if job.get("context"):
        io["context"] = torch.randn(2, 5, dim, generator=gen)
    return io


def forward(model, io):
    kwargs = {k: v for k, v in io.items() if k not in ("x", "y")}
    with torch.no_grad():
        out = model(io["x"], **kwargs)
    return out[0] if isinstance(out, tuple) else out


def unpadded(diff, io):
    if "mask" in io and diff.dim() >= 2 and diff.shape[:2] == io["mask"].shape:
        return diff[io["mask"]]
    return diff


def run_build(job):
    torch.manual_seed(0)
    model = build(job["spec"]).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    io = inputs(job["spec"], job, gen)
    io["y"] = forward(model, io)
    state = model.state_dict()
    torch.save({"state": state, "io": io}, job["out"])
    return {"ok": True, "layout": sorted([k, list(v.shape)] for k, v in state.items())}


def run_check(job):
    torch.manual_seed(0)
    model = build(job["spec"]).eval()
    model.load_state_dict(torch.load(job["pt"], map_location="cpu", weights_only=True), strict=True)
    io = torch.load(job["io"], weights_only=True)["io"]
    return float(unpadded((forward(model, io) - io["y"]).abs(), io).max())


def main(job_path):
    results = {}
    with open(job_path) as handle:
        jobs = json.load(handle)
    for job in jobs:
        try:
            results[job["name"]] = run_check(job) if "pt" in job else run_build(job)
        except Exception as exc:  # a release that cannot build or run a config says so
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
            results[job["name"]] = {"ok": False, "error": line[:300]} if "pt" not in job else line[:300]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
