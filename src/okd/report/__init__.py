"""Results made readable and reusable: the paper's tables from run folders, plots, exports, reproduction.

Library code only; the ``okd report | plot | export | reproduce`` subcommands are thin wrappers in
``okd.cli``. Heavy optional dependencies (matplotlib, onnx) are imported where they are needed.
"""
