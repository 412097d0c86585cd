"""The optimisation recipe for data without a paper recipe (``--dataset folder``): sized to the data.

The CIFAR recipe (batch 128, lr 0.1, no warm-up) is tuned for 50,000 images. On a few hundred it
gives two steps per epoch at full lr from the first step, and DML or deep peers diverge: the logits
blow up in the first epoch and the distillation terms then hold every peer at a constant prediction
(README, "Your own data", has the measured runs). So on such data the batch shrinks to give several
steps per epoch, the lr follows the batch linearly (the CIFAR ratio, 0.1 per 128), and the lr warms up
over the first epochs. Only what the user left unset is filled; a batch the user gives still scales the
default lr.
"""

from __future__ import annotations

MIN_BATCH = 16
STEPS_PER_EPOCH = 4  # at least this many steps per epoch where the data allows it
WARMUP_EPOCHS = 5


def fitted_batch(num_train: int, largest: int) -> int:
    """The largest power of two that gives STEPS_PER_EPOCH steps per epoch, within [MIN_BATCH, largest]."""
    batch = MIN_BATCH
    while batch * 2 <= min(largest, num_train // STEPS_PER_EPOCH):
        batch *= 2
    return min(batch, largest)


def own_data_recipe(base: dict[str, float | int], num_train: int | None, batch_size: int | None,
                    lr: float | None, warmup_epochs: int | None) -> dict[str, float | int]:
    """``base`` (the CIFAR recipe of the method) adapted to ``num_train`` images; given values are kept."""
    recipe = dict(base)
    batch = batch_size if batch_size is not None else fitted_batch(num_train, int(base["batch_size"])) if num_train else int(base["batch_size"])
    recipe["batch_size"] = batch
    recipe["lr"] = lr if lr is not None else float(base["lr"]) * batch / int(base["batch_size"])
    recipe["warmup_epochs"] = warmup_epochs if warmup_epochs is not None else WARMUP_EPOCHS
    return recipe
