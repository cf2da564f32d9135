"""``python -m stitchcore.cli`` (also what torchrun runs: ``torchrun -m stitchcore.cli matrix …``)."""

from .main import main

main()
