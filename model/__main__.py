"""``python -m vidsift.model train|train-vae|sample|encode ...``: the trainer's commands without the console
script; what torchrun launches (``torchrun --nproc-per-node 8 -m vidsift.model train RECIPE --data OUT``)."""

from vidsift.model.cli import main

raise SystemExit(main())
