"""Your own network, trained by okd from Python, then used as a plain PyTorch model.

    python examples/own_backbone.py          # ~ a minute on a laptop CPU
    OKD_EXAMPLE_SMOKE=1 python ...            # a few steps only (what the tests run)

``my_models`` (next to this file) registers the ``small_cnn`` backbone and the ``avg_teacher``
method; naming it in ``plugins`` saves it with the run, and naming it again (``plugins=["my_models"]``,
``--plugin my_models``) reloads the checkpoint anywhere ``my_models`` can be imported: a checkpoint
never imports code by itself.
"""

from __future__ import annotations

import os

import torch

import okd
from okd.data import DIGITS_MEAN, DIGITS_STD
from okd.data.digits import load_digits_uint8

SMOKE = os.environ.get("OKD_EXAMPLE_SMOKE") == "1"
SIZE = {"epochs": 1, "limit_batches": 1, "batch_size": 8, "eval_batch_size": 32} if SMOKE else {"epochs": 15}

for method in ("dml", "avg_teacher"):
    summary = okd.train(method=method, arch="small_cnn", plugins=["my_models"], num_peers=2, dataset="digits",
                        device="cpu", **SIZE)
    last = summary["last"]
    print(f"{method}: test top-1 error of the deployed peer {last['deployed']['top1']:.2f}%, "
          f"of the ensemble {last['ensemble']['top1']:.2f}% ({summary['params']['deployed']:,} parameters)")

# Without an ``out`` folder each run got a new one under runs/; the summary names it.
net = okd.load_peer(os.path.join(summary["run_folder"], "last.pt"), plugins=["my_models"])  # avg_teacher's deployed peer
images, labels = load_digits_uint8()[2:]
mean, std = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1), torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
with torch.no_grad():
    predicted = net((images[:8].float() / 255 - mean) / std).argmax(1)
print(f"{type(net).__name__} predicts {predicted.tolist()} for digits {labels[:8].tolist()}")
