"""Why the engine cuts its model copies in channels-last layout (stitchcore/layout.py).

Times a frozen ResNet-34 suffix (everything after ``act1``, as in the default matrix's most
expensive receiver column) at the batch a matrix group trains with (5 stitches × 128 samples):
forward + backward to the input only (weights frozen, as the engine trains stitches), and
forward only (evaluation), with the model's weights contiguous (NCHW) and channels-last (NHWC).

    .venv/bin/python benchmarks/channels_last.py [--batch 640] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch


def suffix_of(model):
    def run(x):
        x = model.maxpool(x)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = stage(x)
        return model.fc(model.global_pool(x))

    return run


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=640)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("resnet34", num_classes=10).eval().requires_grad_(False)
    run = suffix_of(model)
    x = torch.randn(args.batch, 64, 16, 16)
    print(f"ResNet-34 suffix after act1, batch {args.batch}, {torch.get_num_threads()} threads")
    for name, fmt in (
        ("contiguous", torch.contiguous_format),
        ("channels-last", torch.channels_last),
    ):
        model.to(memory_format=fmt)
        xi = x.clone().requires_grad_(True)

        def train_step(xi=xi):
            run(xi).sum().backward()

        def forward(xi=xi):
            with torch.no_grad():
                run(xi)

        print(
            f"  {name:14} fwd+bwd {timed(train_step, args.repeats):6.2f} s   "
            f"fwd {timed(forward, args.repeats):6.2f} s"
        )


if __name__ == "__main__":
    main()
