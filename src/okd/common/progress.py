"""Progress bars that stay quiet where nobody watches (not a TTY, --quiet, non-zero ranks)."""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Progress:
    def __call__(self, *, total: int, initial: int = 0, desc: str = "", disable: bool = False) -> tqdm:
        quiet = disable or not sys.stderr.isatty()
        return tqdm(total=total, initial=initial, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)

    @staticmethod
    def write(line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()


progress = _Progress()
