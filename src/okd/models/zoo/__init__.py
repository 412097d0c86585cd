"""The CIFAR model zoo of the KD literature: RepDistiller's and L-MCL's networks as okd backbones.

Each is the same function as its source (same parameters, same outputs for the same weights; the
tests check stored outputs of the source code), cut into named stages with early/late branch
points so every method can train a cohort of it. ``okd models`` shows each backbone's source;
``load_source_state_dict`` loads a checkpoint saved by the source code.
"""

from okd.models.zoo import resnet, wrn, vgg, mobilenetv2, shufflenet, hcgnet  # noqa: F401,I001  (register)
from okd.models.zoo.keys import load_source_state_dict, source_codebases, source_key_map, to_source_state_dict

__all__ = ["load_source_state_dict", "source_codebases", "source_key_map", "to_source_state_dict"]
