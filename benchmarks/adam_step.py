"""The optimizer step of FCN-8s/VGG16 training: torch's Adam / AdamW implementations side by side.

``torch.optim.Adam`` (and AdamW) has three implementations: the per-parameter for-loop (what a
CPU run gets by default), ``foreach=True`` (multi-tensor ops over lists of parameters) and
``fused=True`` (one fused kernel per parameter group, available on the CPU since torch 2.4).
This times ``optimizer.step()`` alone over the 134 M parameters of FCN-8s/VGG16 with fixed
random gradients, the implementations interleaved round-robin (one step each in turn, so a burst
of load from other jobs hits all alike), medians of ``--repeats`` steps after one warm-up, and
checks that the three give the same parameters after the same steps (max |difference|).

    python3 benchmarks/adam_step.py --repeats 5 --threads 2
    python3 benchmarks/adam_step.py --full-step --repeats 2   # whole training steps, batch 4

``--full-step`` times whole training steps instead (forward, cross-entropy, backward, Adam step;
batch ``--batch`` at 160 x 576): fp32 (NCHW) and bf16-mixed (Lightning's autocast, channels-last
weights: what ``semseg train --precision bf16-mixed`` runs on a CPU), each with the for-loop and
the fused Adam over the same model (two optimizers stepping it in turn), interleaved.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Sequence

import torch

from semseg.inference.machine import cpu_model
from semseg.models import build_model
from semseg.tasks.recipe import build_optimizer

IMPLEMENTATIONS = {
    "for-loop (default on CPU)": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def make_optimizer(name: str, model: torch.nn.Module, options: dict) -> torch.optim.Optimizer:
    """The optimizer ``semseg train`` builds (:func:`build_optimizer`), with ``options`` set."""
    reference = build_optimizer(name, model.named_parameters(), lr=1e-4, weight_decay=1e-2)
    chosen = ("foreach", "fused")
    groups = [{k: v for k, v in g.items() if k not in chosen} for g in reference.param_groups]
    accepted = inspect.signature(type(reference)).parameters
    defaults = {k: v for k, v in reference.defaults.items() if k in accepted and k not in chosen}
    return type(reference)(groups, **{**defaults, **options})


def run(optimizer_name: str, repeats: int, width: float) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    template = build_model("fcn8s", 2, width_mult=width)
    models, optimizers = {}, {}
    for label, options in IMPLEMENTATIONS.items():
        model = build_model("fcn8s", 2, width_mult=width)
        model.load_state_dict(template.state_dict())
        generator = torch.Generator().manual_seed(1)
        for parameter in model.parameters():
            parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
        models[label] = model
        optimizers[label] = make_optimizer(optimizer_name, model, options)
    times: dict[str, list[float]] = {label: [] for label in IMPLEMENTATIONS}
    for step in range(repeats + 1):
        for label, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if step:  # the first step allocates the moments
                times[label].append(time.perf_counter() - start)
    reference = next(iter(models.values()))
    results = {}
    for label, model in models.items():
        diff = max(
            float((a - b).detach().abs().max())
            for a, b in zip(model.parameters(), reference.parameters(), strict=True)
        )
        median = statistics.median(times[label])
        results[label] = {"seconds": median, "max_abs_param_diff": diff}
    base = results["for-loop (default on CPU)"]["seconds"]
    for values in results.values():
        values["speedup"] = base / values["seconds"]
    return results


def full_steps(repeats: int, width: float, batch: int) -> dict[str, float]:
    """Median seconds per image of whole training steps, per (precision, implementation)."""
    import contextlib

    import torch.nn.functional as F
    from lightning.pytorch.plugins.precision import MixedPrecision

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 160, 576, generator=generator)
    masks = torch.randint(0, 2, (batch, 160, 576), generator=generator)
    runners = {}
    for precision in ("32", "bf16-mixed"):
        torch.manual_seed(0)
        model = build_model("fcn8s", 2, width_mult=width).train()
        context = contextlib.nullcontext
        if precision == "bf16-mixed":
            model = model.to(memory_format=torch.channels_last)
            context = MixedPrecision("bf16-mixed", "cpu").forward_context
        for label in ("for-loop (default on CPU)", "fused"):
            optimizer = make_optimizer("adam", model, IMPLEMENTATIONS[label])
            runners[(precision, label)] = (model, optimizer, context)

    def step(model, optimizer, context) -> float:
        start = time.perf_counter()
        with context():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for index in range(repeats + 1):
        for key, runner in runners.items():
            seconds = step(*runner)
            if index:
                times[key].append(seconds / batch)
    return {f"{p} | {label}": statistics.median(t) for (p, label), t in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0, help="FCN-8s width multiplier")
    parser.add_argument("--optimizers", default="adam,adamw")
    parser.add_argument("--full-step", action="store_true", help="whole training steps")
    parser.add_argument("--batch", type=int, default=4, help="--full-step batch size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.full_step:
        results = full_steps(args.repeats, args.width, args.batch)
        print(
            f"torch {torch.__version__}, {args.threads} threads; FCN-8s width {args.width}, "
            f"batch {args.batch} at 160 x 576, Adam lr 1e-4; medians of {args.repeats} steps "
            "after one warm-up, interleaved"
        )
        print("| precision | Adam | s/img | vs fp32 for-loop |")
        print("|---|---|---:|---:|")
        base = results["32 | for-loop (default on CPU)"]
        for key, seconds in results.items():
            print(f"| {key} | {seconds:.3f} | {base / seconds:.2f}x |")
        return 0
    count = sum(p.numel() for p in build_model("fcn8s", 2, width_mult=args.width).parameters())
    print(
        f"torch {torch.__version__}, {args.threads} threads, {cpu_model()}; "
        f"FCN-8s width {args.width}: {count / 1e6:.1f} M parameters; medians of "
        f"{args.repeats} steps after one warm-up, interleaved"
    )
    print("| optimizer | implementation | s/step | vs for-loop | max abs param diff |")
    print("|---|---|---:|---:|---:|")
    for name in args.optimizers.split(","):
        for label, values in run(name, args.repeats, args.width).items():
            print(
                f"| {name} | {label} | {values['seconds']:.3f} | {values['speedup']:.2f}x | "
                f"{values['max_abs_param_diff']:.1e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
