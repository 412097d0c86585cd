"""Which runs a report may average: only runs whose configs differ in nothing but the seed.

A table cell is a mean over seeds; folding in runs with another lr or batch size would make the
mean ± std describe no recipe at all. Runs of one table row are therefore split into *settings*:
the config keys that differ between runs of the same cell (same method, variant and backbone)
label the row variants, e.g. "ResNet-32 (batch_size 32, lr 0.02)". Keys that do not change what a
run computes (device, workers, ...) never split. A method option that does not apply to a cell's
method (None in all of its runs, e.g. DML's kd_t in a baseline run) matches every setting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from okd.report.collect import RunRecord

# Config fields that do not change what a run computes; all others must agree within a cell.
IRRELEVANT = frozenset({"seed", "device", "data", "download", "workers", "log_interval", "tensorboard", "compile",
                        "deterministic", "channels_last", "sync_bn", "eval_batch_size", "nan_policy", "amp"})

Setting = tuple[tuple[str, Any], ...]  # (key, value) pairs, sorted by key; () when nothing differs


def varying_keys(runs: Sequence[RunRecord], cell_of: Callable[[RunRecord], Hashable]) -> list[str]:
    """Config keys whose values differ between two runs of the same cell."""
    cells: dict[Hashable, list[RunRecord]] = defaultdict(list)
    for run in runs:
        cells[cell_of(run)].append(run)
    keys: set[str] = set()
    for members in cells.values():
        names = {k for run in members for k in run.config} - IRRELEVANT
        keys |= {k for k in names if len({repr(run.config.get(k)) for run in members}) > 1}
    return sorted(keys)


def split_by_setting(runs: Sequence[RunRecord], cell_of: Callable[[RunRecord], Hashable]) -> list[tuple[Setting, list[RunRecord]]]:
    """The runs grouped by their values of ``varying_keys``; one group with setting () when nothing varies.

    A run whose whole cell has None for a key (the option does not apply to its method) joins every
    setting that agrees with it on the other keys, so a baseline still sits beside each DML setting.
    """
    keys = varying_keys(runs, cell_of)
    if not keys:
        return [((), list(runs))]
    cells: dict[Hashable, list[RunRecord]] = defaultdict(list)
    for run in runs:
        cells[cell_of(run)].append(run)
    unset = {id(run): {k for k in keys if all(other.config.get(k) is None for other in cells[cell_of(run)])} for run in runs}
    settings: dict[str, Setting] = {}
    for run in runs:  # the settings: the runs' own values where the option applies
        setting = tuple((k, run.config.get(k)) for k in keys if k not in unset[id(run)])
        if len(setting) == len(keys):
            settings.setdefault(repr(setting), setting)
    groups: dict[str, list[RunRecord]] = {key: [] for key in sorted(settings)}
    for run in runs:
        own = {k: repr(run.config.get(k)) for k in keys if k not in unset[id(run)]}
        matches = [key for key, setting in settings.items() if all(repr(v) == own[k] for k, v in setting if k in own)]
        if not matches:  # a run that fits no full setting keeps its own, with the keys it has
            key = repr(tuple((k, run.config.get(k)) for k in keys))
            settings[key] = tuple((k, run.config.get(k)) for k in keys)
            groups[key] = []
            matches = [key]
        for key in matches:
            groups[key].append(run)
    return [(settings[key], groups[key]) for key in sorted(groups)]


def setting_label(setting: Setting) -> str:
    """"batch_size 32, lr 0.02"; "" when nothing differs."""
    return ", ".join(f"{key} {_value(value)}" for key, value in setting)


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "default" if value is None else str(value)
