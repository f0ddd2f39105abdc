"""Where the time goes: torch.profiler's top operators for xtf and x-transformers 2.31.10 (`attn_flash=True`),
on the model bench_forward.py times, side by side.

    python benchmarks/profile_forward.py                                 # CPU, float32, forward
    python benchmarks/profile_forward.py --device cuda --dtype bf16 --train

The two models take turns, one profiled step each (`--steps` each), so a machine whose speed drifts
during the run slows both alike. Prints, side by side and per step, the operators (or CUDA kernels on a
GPU) with the most self time and their call counts; the number of `copy_`/`to` calls, which is where
avoidable dtype round trips and copies show; and the minor page faults (on the CPU, first writes into
freshly mapped memory; their cost lands in whichever operator touches the memory first).

On the CPU it also splits each model's step into the kernels both models must run for it
(`SHARED_KERNELS`: matmuls, the attention kernel, GELU, layer norm, embedding, loss, each with its
backward) and everything else, and prints the ceiling: x-transformers' time over xtf's shared-kernel
time, the ratio xtf would reach if it spent nothing at all outside those kernels.
"""

from __future__ import annotations

import argparse
import collections
import resource

import torch
import torch.nn.functional as F
from bench_forward import DTYPES, fill_defaults, reference_model, spec_for
from torch.profiler import ProfilerActivity, profile

# CPU operators that compute the model's arithmetic itself: matmuls, attention (the flash kernel, or the
# batched matmuls and softmax of xtf's blocked training path), GELU, layer norm, embedding and loss, each
# with its backward. Both libraries do this work on the same shapes (xtf may merge or split calls, as its
# fused q/k/v projection does, but not shrink it); what is left is glue (copies, concatenations,
# elementwise steps, autograd's bookkeeping)
SHARED_KERNELS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::gelu",
        "aten::gelu_",
        "aten::gelu_backward",
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::index_select",
        "aten::embedding_dense_backward",
        "aten::_log_softmax",
        "aten::_log_softmax_backward_data",
        "aten::nll_loss_forward",
        "aten::nll_loss_backward",
    }
)


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
    parser.add_argument("--steps", type=int, default=6, help="profiled steps per model")
    parser.add_argument("--train", action="store_true", help="profile training steps, not forwards")
    parser.add_argument("--top", type=int, default=25)
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
    models = {"x-transformers": reference, "xtf": ours}

    def step(model: torch.nn.Module) -> None:
        if args.train:
            logits = model(tokens)
            F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(tokens)

    for model in models.values():
        model.to(device=device, dtype=dtype).train(args.train)
        for _ in range(2):
            step(model)
    # per model: operator -> [self ms, calls], summed over its steps; minor page faults
    times = {name: collections.defaultdict(lambda: [0.0, 0]) for name in models}
    faults = dict.fromkeys(models, 0)
    for round_ in range(args.steps):
        order = list(models) if round_ % 2 == 0 else list(models)[::-1]
        for name in order:
            if cuda:
                torch.cuda.synchronize()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            with profile(activities=activities) as prof:
                step(models[name])
                if cuda:
                    torch.cuda.synchronize()
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            for event in prof.key_averages():
                entry = times[name][event.key]
                entry[0] += self_time(event, cuda) / 1e3
                entry[1] += event.count

    what = "train step" if args.train else "forward"
    print(
        f"{device} {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads; per {what}, "
        f"mean of {args.steps} profiled {what}s each, the models taking turns"
    )
    for name in models:
        total = sum(ms for ms, _ in times[name].values()) / args.steps
        copies = {
            key: times[name][key][1] // args.steps for key in ("aten::copy_", "aten::to", "aten::_to_copy")
        }
        print(
            f"{name}: self time {total:.1f} ms; calls {copies}; minor page faults {faults[name] / args.steps:.0f}"
        )
    keys = sorted(
        set(times["x-transformers"]) | set(times["xtf"]),
        key=lambda key: -max(times["x-transformers"][key][0], times["xtf"][key][0]),
    )
    unit = "kernel" if cuda else "operator"
    print(f"{unit[:60]:60} {'xt ms':>9} {'xtf ms':>9} {'xt calls':>9} {'xtf calls':>9}")
    for key in keys[: args.top]:
        xt, ours_ = times["x-transformers"][key], times["xtf"][key]
        print(
            f"{key[:60]:60} {xt[0] / args.steps:9.2f} {ours_[0] / args.steps:9.2f} "
            f"{xt[1] / args.steps:9.0f} {ours_[1] / args.steps:9.0f}"
        )
    if not cuda:
        split = {}
        for name in models:
            total = sum(ms for ms, _ in times[name].values()) / args.steps
            shared = sum(ms for key, (ms, _) in times[name].items() if key in SHARED_KERNELS) / args.steps
            split[name] = (shared, total)
            print(f"{name}: {shared:.1f} ms in shared kernels, {total - shared:.1f} ms in everything else")
        reference_total, (ours_shared, ours_total) = split["x-transformers"][1], split["xtf"]
        print(
            f"xt/xtf in these profiles: {reference_total / ours_total:.2f}x; ceiling with nothing outside the "
            f"shared kernels: {reference_total / ours_shared:.2f}x"
        )


def self_time(event, cuda: bool) -> float:
    """An averaged profiler event's self time in microseconds: the device's on a GPU, else the CPU's."""
    if not cuda:
        return event.self_cpu_time_total
    # torch >= 2.4 names the accelerator's time "device", older releases "cuda"
    if hasattr(event, "self_device_time_total"):
        return event.self_device_time_total
    return event.self_cuda_time_total


if __name__ == "__main__":
    main()
