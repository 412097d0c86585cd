"""Every registered backbone's initial weights, bit for bit, under a fixed seed.

The backbones follow their source code's initialisation (kaiming fan_out or fan_in, zeroed conv
bias or not, a N(0, 0.01) Linear or PyTorch's default); they share one helper
(``okd.models.weight_init``), so a change to it, to a module's construction order, or to a
backbone's layers shows up here as a changed digest. The digests are of this torch version's CPU
generator; ``tests/fixtures/init_digests.json`` records which.

Regenerate (only when initial weights are *meant* to change, and say why in the commit)::

    PYTHONPATH=src python tests/test_backbone_init.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_golden import _digest_tree  # noqa: E402

from okd.models import create_backbone, is_external, list_backbones  # noqa: E402

FIXTURE = HERE / "fixtures" / "init_digests.json"
SEED, NUM_CLASSES = 0, 10


def init_digest(name: str) -> str:
    """sha256 of the names, shapes and bytes of ``name``'s state dict, built right after seeding."""
    torch.manual_seed(SEED)
    hasher = hashlib.sha256()
    _digest_tree(create_backbone(name, num_classes=NUM_CLASSES).state_dict(), hasher)
    return hasher.hexdigest()


def built_in() -> list[str]:
    return [name for name in list_backbones() if not is_external(name)]


@pytest.mark.parametrize("name", built_in())
def test_initial_weights_are_bit_identical(name: str) -> None:
    stored = json.loads(FIXTURE.read_text())
    assert name in stored["digests"], f"{name} has no stored digest: regenerate {FIXTURE.name} (see this file's docstring)"
    assert init_digest(name) == stored["digests"][name]


if __name__ == "__main__":
    digests = {name: init_digest(name) for name in built_in()}
    FIXTURE.write_text(json.dumps({"torch": torch.__version__, "seed": SEED, "num_classes": NUM_CLASSES,
                                   "digests": digests}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}: {len(digests)} backbones")
