"""Where the time goes: torch.profiler's top operators for xtf and x-transformers 2.31.10 (`attn_flash=True`),
on the model bench_forward.py times, side by side.

    python benchmarks/profile_forward.py                                 # CPU, float32, forward
    python benchmarks/profile_forward.py --device cuda --dtype bf16 --train

Prints, per model, the operators (or CUDA kernels on a GPU) with the most self time over `--steps` steps,
the number of `copy_`/`to` calls, which is where avoidable dtype round trips and copies show, and the
minor page faults per step (on the CPU, first writes into freshly mapped memory; their cost lands in
whichever operator touches the memory first, often a `copy_` or an activation).
"""

from __future__ import annotations

import argparse
import resource

import torch
import torch.nn.functional as F
from bench_forward import DTYPES, fill_defaults, reference_model, spec_for
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--num-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="profile training steps, not forwards")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = fill_defaults(args, cuda)

    import xtf_core

    spec = spec_for(args)
    torch.manual_seed(0)
    reference = reference_model(spec)
    ours = xtf_core.build(spec)
    ours.load_state_dict(reference.state_dict(), strict=True)
    tokens = torch.randint(0, args.num_tokens, (args.batch, args.seq), device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name, model in (("x-transformers", reference), ("xtf", ours)):
        model.to(device=device, dtype=dtype).train(args.train)

        def step(model: torch.nn.Module = model) -> None:
            if args.train:
                logits = model(tokens)
                F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    model(tokens)

        for _ in range(2):
            step()
        if cuda:
            torch.cuda.synchronize()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
        events = prof.key_averages()
        sort_key = "self_cpu_time_total"
        if cuda:  # torch >= 2.4 names the accelerator's time "device", older releases "cuda"
            new_name = any(hasattr(e, "self_device_time_total") for e in events)
            sort_key = "self_device_time_total" if new_name else "self_cuda_time_total"
        total = sum(getattr(e, sort_key) for e in events) / 1e3
        copies = {e.key: e.count for e in events if e.key in ("aten::copy_", "aten::to", "aten::_to_copy")}
        print(
            f"===== {name}: {args.steps} {'train steps' if args.train else 'forwards'}, self time {total:.1f} ms"
        )
        print(f"      calls: {copies}; minor page faults per step: {faults:.0f}")
        print(events.table(sort_by=sort_key, row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
