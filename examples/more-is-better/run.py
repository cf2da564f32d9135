"""More is better (Bansal et al. 2021, §6, Fig. 2C and 3B), with CKA beside it (Table 1).

A ResNet-18 receiver trained on few images; ResNet-18 senders trained on fewer, as many (two
references: same data, other seeds), four times as many, and on as many for twice as long. Each
sender is stitched into the receiver at every stage boundary (BN → 1×1 conv → BN, least-squares
init, then trained on the receiver's task and training images) and the penalty (receiver −
stitched accuracy; negative = the sender *improves* the receiver) and linear CKA are read per
layer. The paper: representations learnt from more data or for longer plug into the weaker
model and improve it; with fewer samples the penalty grows fastest in the middle layers (some
layers are more data-hungry); CKA only says "far".

CIFAR-10 cannot be had offline here: Fashion-MNIST (Debian package ``dataset-fashion-mnist``)
stands in for it, at 32 px, with ResNet-18 at half width and subsets of 1k-8k images so the
whole study fits a 2-core CPU.

    .venv/bin/python examples/more-is-better/run.py --threads 1          # full study
    .venv/bin/python examples/more-is-better/run.py --mini --threads 1   # miniature mode (CI)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _studies import BaseModel, Plan, Scale, study_main  # noqa: E402

STUDY = "more-is-better"
PAPER = {
    "source": "Bansal, Nakkiran & Barak 2021, Revisiting Model Stitching, §6, Fig. 2C/3B, Table 1",
    "setup": "ResNet-18 on CIFAR-10; senders trained on {5K, 10K, 25K} samples stitched into a "
    "receiver trained on 10K; senders at {40, 80, 160} epochs into the model at epoch 80",
    "claims": [
        "the sender trained on more samples (25K) plugs into the 10K receiver and improves it "
        "(negative penalty)",
        "at the first few layers all senders perform alike; with fewer samples performance "
        "degrades rapidly in the mid-layers (some layers are more data-hungry)",
        "representations from longer training are compatible with earlier ones and improve them",
        "CKA says 'far' (can be 0 for data) where stitching says 'better' (Table 1)",
    ],
}


def plan(mini: bool) -> Plan:
    """Full: receiver on 2k images × 4 epochs; senders on 1k, 2k (two references), 8k images ×
    4 epochs and 2k × 8 epochs. Mini: 100-300 images, 1 epoch (2 for "longer"), quarter width, 16 px.
    """
    n, more, epochs = (200, 300, 1) if mini else (2000, 8000, 4)
    scale = Scale(
        data="digits" if mini else "fashion-mnist", width=0.25 if mini else 0.5, input_size=16 if mini else 32,
        stitch_epochs=1 if mini else None, stitch_batch_size=32, stitch_lr=1e-3,
        stitch_train_size=n,  # the receiver's own training images
    )  # fmt: skip
    return Plan(
        scale=scale,
        receiver=BaseModel("receiver", f"{n} images, {epochs} ep", n, epochs, seed=0),
        senders=[
            BaseModel("less-data", f"{n // 2} images (less data)", n // 2, epochs),
            BaseModel("reference", f"{n} images (reference, seed 1)", n, epochs),
            BaseModel("reference-2", f"{n} images (reference, seed 2)", n, epochs, seed=2),
            BaseModel("more-data", f"{more} images (more data)", more, epochs),
            BaseModel("longer", f"{n} images, {2 * epochs} ep (longer)", n, 2 * epochs),
        ],
        references=("reference", "reference-2"),
    )


def main(argv: list[str] | None = None) -> dict:
    return study_main(STUDY, __doc__, plan, PAPER, argv)


if __name__ == "__main__":
    main()
