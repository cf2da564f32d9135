"""All roads lead to Rome: weak labels (Bansal et al. 2021, §5, Fig. 3A), with CKA (Table 1).

A normally trained ResNet-18 receiver; ResNet-18 senders trained on the same images with
"less informative" labels: 10 %, 50 % and 100 % of the training labels replaced by random ones,
and the dataset's coarse labels; plus two reference senders, trained exactly like the receiver
but for the seed. Each sender is stitched into the receiver at every stage boundary (BN → 1×1
conv → BN, least-squares init, then trained on the receiver's task with clean labels) and the
penalty (receiver − stitched accuracy) and linear CKA are read per layer. The paper: even with
poor labels, the first half of the weak model's layers are as good as the standard model's,
except with 100 % noise; the later layers suffer.

CIFAR-10 cannot be had offline here: Fashion-MNIST (Debian package ``dataset-fashion-mnist``)
stands in for it, at 32 px, with ResNet-18 at half width on 2k training images so the whole
study fits a 2-core CPU. CIFAR-10's coarse task is objects vs animals; Fashion-MNIST's is
clothing / footwear / bag (docs/datasets.md).

    .venv/bin/python examples/weak-labels/run.py --threads 1          # full study
    .venv/bin/python examples/weak-labels/run.py --mini --threads 1   # miniature mode (CI)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _studies import BaseModel, Plan, Scale, study_main  # noqa: E402

STUDY = "weak-labels"
PAPER = {
    "source": "Bansal, Nakkiran & Barak 2021, Revisiting Model Stitching, §5, Fig. 3A, Table 1",
    "setup": "ResNet-18 on CIFAR-10; senders trained with coarse labels (objects vs animals) or "
    "{10 %, 50 %, 100 %} random labels, stitched into a network trained on the clean labels",
    "claims": [
        "even with poor label quality, the first half of the layers of the weak model are as "
        "good as the standard model's (penalty near the standard sender's)",
        "except the weak network trained on 100 % noisy labels",
        "training details affect the representation at later layers",
    ],
}


def plan(mini: bool) -> Plan:
    """Full: every model on the same 2k Fashion-MNIST images, 4 epochs. Mini: 200 digits, 1
    epoch, quarter width, 16 px."""
    n, epochs = (200, 1) if mini else (2000, 4)
    scale = Scale(
        data="digits" if mini else "fashion-mnist", width=0.25 if mini else 0.5,
        input_size=16 if mini else 32, stitch_epochs=1 if mini else None, stitch_batch_size=32,
        stitch_lr=1e-3, stitch_train_size=n,  # the receiver's own (clean) training images
    )  # fmt: skip
    return Plan(
        scale=scale,
        receiver=BaseModel("receiver", f"clean labels, {n} images", n, epochs, seed=0),
        senders=[
            BaseModel("reference", "clean labels (reference, seed 1)", n, epochs),
            BaseModel("reference-2", "clean labels (reference, seed 2)", n, epochs, seed=2),
            BaseModel("noise-0.1", "10 % random labels", n, epochs, label_noise=0.1),
            BaseModel("noise-0.5", "50 % random labels", n, epochs, label_noise=0.5),
            BaseModel("noise-1.0", "100 % random labels", n, epochs, label_noise=1.0),
            BaseModel("coarse", "coarse labels", n, epochs, coarse=True),
        ],
        references=("reference", "reference-2"),
    )


def main(argv: list[str] | None = None) -> dict:
    return study_main(STUDY, __doc__, plan, PAPER, argv)


if __name__ == "__main__":
    main()
