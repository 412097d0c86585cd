"""A run folder where a checkpoint is expected: the commands that read one weight file accept either."""

from __future__ import annotations

from pathlib import Path

from okd.errors import OKDUserError


def resolve_checkpoint(path: str | Path) -> tuple[Path, str | None]:
    """``RUN/`` -> ``RUN/best.pt`` (the deployed peer's best epoch), or ``RUN/last.pt`` if no epoch finished
    with a best; a file is returned as given. The second value is the one line saying which file was
    picked (None for a file), so the user knows what was evaluated or exported."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path, None
    for name, why in (("best.pt", "the best epoch"), ("last.pt", "no best.pt there")):
        if (path / name).is_file():
            return path / name, f"using {path / name} ({why})"
    raise OKDUserError(f"{path} is a folder without best.pt or last.pt; give a run folder written by `okd train`, "
                       "or the checkpoint file itself")
