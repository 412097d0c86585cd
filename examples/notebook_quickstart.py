"""okd in a notebook: train a DML cohort on the embedded digits, continue it, evaluate, use one peer.

    python examples/notebook_quickstart.py   # a few minutes on a laptop CPU
    OKD_EXAMPLE_SMOKE=1 python ...            # a few steps only (what the tests run)

Each call is one cell; a bad option raises okd.OKDUserError with the fix in one line.
"""

from __future__ import annotations

import os

import torch

import okd
from okd.data import DIGITS_MEAN, DIGITS_STD
from okd.data.digits import load_digits_uint8

SMOKE = os.environ.get("OKD_EXAMPLE_SMOKE") == "1"
SIZE = {"limit_batches": 1, "batch_size": 8, "eval_batch_size": 32} if SMOKE else {}
EPOCHS = (1, 2) if SMOKE else (5, 10)

# 1. Train: the options are okd train's flags by name; the unset ones come from the DML recipe.
summary = okd.train("runs/quickstart", overwrite=True, method="dml", arch="resnet32", num_peers=2,
                    epochs=EPOCHS[0], device="cpu", **SIZE)
print(f"after {summary['epochs_done']} epochs: deployed peer {summary['last']['deployed']['top1']:.2f}% top-1 error")

# 2. Continue the same run for more epochs (same options, a larger epochs).
summary = okd.train("runs/quickstart", resume=True, method="dml", arch="resnet32", num_peers=2,
                    epochs=EPOCHS[1], device="cpu", **SIZE)
print(f"after {summary['epochs_done']} epochs: deployed peer {summary['last']['deployed']['top1']:.2f}% top-1 error")

# 3. Evaluate a checkpoint: every peer, the peer mean, the deployed peer and the ensemble.
result = okd.evaluate("runs/quickstart/best.pt", device="cpu", limit_batches=1 if SMOKE else None)
for head, error in result["errors"].items():
    print(f"{head:>10}: top-1 error {error['top1']:6.2f}%  top-5 error {error['top5']:6.2f}%")

# 4. One peer as a plain PyTorch model (the deployed one by default), fed normalised images.
net = okd.load_peer("runs/quickstart/best.pt")
images, labels = load_digits_uint8()[2:]
mean, std = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1), torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
with torch.no_grad():
    predicted = net((images[:10].float() / 255 - mean) / std).argmax(1)
print(f"predicted {predicted.tolist()}\n   labels {labels[:10].tolist()}")
