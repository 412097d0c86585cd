"""Make tests/data/zoo_source_outputs.json from the source code of the zoo's networks (not run by the suite).

    python tests/make_zoo_fixture.py RepDistiller/ L-MCL/     # checkouts of HobbitLong/RepDistiller, winycg/L-MCL

For each network (keyed ``codebase:function``, with the okd backbone it is): its parameter count at 100 classes, a digest of its state dict's keys and shapes,
and its float64 logits (eval and train mode) for a fixed 2x3x32x32 input at 10 classes, with every
tensor filled by tests/zoo_weights.py's rule. tests/test_zoo.py builds okd's backbone, fills it by the
same rule through its source key map and must reproduce all of it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from zoo_weights import CLASSES, fill_, layout_digest, logits  # noqa: E402

RD = {  # okd name: RepDistiller's builder in models/ (its model_dict's function)
    "resnet8": ("resnet", "resnet8"), "resnet14": ("resnet", "resnet14"), "resnet20": ("resnet", "resnet20"),
    "resnet32": ("resnet", "resnet32"), "resnet44": ("resnet", "resnet44"), "resnet56": ("resnet", "resnet56"),
    "resnet110_basic": ("resnet", "resnet110"), "resnet8x4": ("resnet", "resnet8x4"), "resnet32x4": ("resnet", "resnet32x4"),
    "wrn_16_1": ("wrn", "wrn_16_1"), "wrn_16_2": ("wrn", "wrn_16_2"), "wrn_40_1": ("wrn", "wrn_40_1"), "wrn_40_2": ("wrn", "wrn_40_2"),
    "vgg8": ("vgg", "vgg8_bn"), "vgg11": ("vgg", "vgg11_bn"), "vgg13": ("vgg", "vgg13_bn"), "vgg19": ("vgg", "vgg19_bn"),
    "mobile_half": ("mobilenetv2", "mobile_half"), "shufflev1": ("ShuffleNetv1", "ShuffleV1"), "shufflev2": ("ShuffleNetv2", "ShuffleV2"),
}
LMCL = {  # okd name: L-MCL's builder in models/
    "resnet32": ("resnet_cifar", "resnet32_cifar"), "resnet56": ("resnet_cifar", "resnet56_cifar"),
    "resnet110": ("resnet_cifar", "resnet110_cifar"), "wrn_16_2": ("wrn_cifar", "wrn_16_2_cifar"),
    "wrn_40_2": ("wrn_cifar", "wrn_40_2_cifar"), "wrn_28_4": ("wrn_cifar", "wrn_28_4_cifar"), "shufflenetv2_05x": ("shufflenetv2_cifar", "ShuffleNetV2_05x_cifar"),
    "shufflenetv2_1x": ("shufflenetv2_cifar", "ShuffleNetV2_1x_cifar"), "hcgnet_a1": ("hcgnet_cifar", "hcgnet_A1_cifar"),
    "hcgnet_a2": ("hcgnet_cifar", "hcgnet_A2_cifar"),
}


def builder(repo: Path, module: str, function: str):
    spec = importlib.util.spec_from_file_location(f"{repo.name}_{module}", repo / "models" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, function)


def record(build) -> dict:
    params = sum(p.numel() for p in build(100).parameters())
    model = build(CLASSES)
    fill_(model)
    digest = layout_digest({k: tuple(v.shape) for k, v in model.state_dict().items()})
    return {"params": params, "layout": digest,
            "eval": logits(model, train=False).tolist(), "train": logits(model, train=True).tolist()}


def main(rd: Path, lmcl: Path) -> None:
    out = {}
    for table, repo, source in ((RD, rd, "RepDistiller"), (LMCL, lmcl, "L-MCL")):
        for name, (module, function) in table.items():
            make = builder(repo, module, function)
            key = f"{source}:{function}"
            out[key] = {"backbone": name, "codebase": source, "file": f"models/{module}.py", **record(lambda c: make(num_classes=c))}
            print(key, out[key]["params"], file=sys.stderr)
    path = Path(__file__).parent / "data" / "zoo_source_outputs.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
