"""Listing the images of class folders without links making an image count twice or change class.

``os.walk(followlinks=True)`` (what torchvision's ImageFolder uses) follows a link back to a parent
forever, counts an image once per name, and labels an image reached through a link into another
class folder with the wrong class. ``LinkGuard`` lists one split (train/ or val/) class by class:

* every real file and folder counts once, under the first name met (plain names before links);
* a link is followed when it leads outside the split (a symlink farm over shared storage) or is
  the class folder itself; a link into the split (another class, a parent: a loop, or another
  name inside its own class) or to a folder that holds the split is skipped;
* every skip is counted and reported as one note per reason, with an example.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Keep = Callable[[str], bool]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


class LinkGuard:
    """One split's scan state: what is counted already, and why anything was skipped."""

    def __init__(self, split_dir: Path) -> None:
        self.split = os.path.realpath(split_dir)
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.skipped: dict[str, list[str]] = {}
        self.current = ""  # the real path of the class folder being listed

    def list_class(self, class_dir: Path, keep: Keep, skip_hidden: bool) -> list[tuple[str, str]]:
        """(folder relative to ``class_dir`` with '/', file name) of every image counted for this class."""
        found: list[tuple[str, str]] = []
        self.current = os.path.realpath(class_dir)
        self._walk(str(class_dir), self.current, "", keep, skip_hidden, found)
        return found

    def notes(self, what: str) -> list[str]:
        """One line per reason: how many links were skipped, and one of them."""
        return [f"{what}: skipped {len(paths)} link(s) that {reason} (e.g. {paths[0]}); each image counts once, in one class"
                for reason, paths in self.skipped.items()]

    def _skip(self, reason: str, path: str) -> None:
        self.skipped.setdefault(reason, []).append(path)

    def _walk(self, path: str, real: str, rel: str, keep: Keep, skip_hidden: bool, found: list[tuple[str, str]]) -> None:
        """Plain files and folders first (depth first, sorted), then the links met on the way."""
        if real in self.dirs:
            return
        self.dirs.add(real)
        links: list[tuple[os.DirEntry[str], str]] = []
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except OSError:
            return  # unreadable: as os.walk, nothing is listed from it
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                links.append((entry, child))
            elif entry.is_dir(follow_symlinks=False):
                if not (skip_hidden and entry.name.startswith(".")):
                    self._walk(entry.path, os.path.join(real, entry.name), child, keep, skip_hidden, found)
            elif keep(entry.name):
                self._count(os.path.join(real, entry.name), rel, entry.name, found)
        for entry, child in links:
            self._follow(entry, child, rel, keep, skip_hidden, found)

    def _follow(self, entry: os.DirEntry[str], child: str, rel: str, keep: Keep, skip_hidden: bool, found: list[tuple[str, str]]) -> None:
        target = os.path.realpath(entry.path)
        is_dir = os.path.isdir(target)
        if is_dir and skip_hidden and entry.name.startswith("."):
            return
        if not is_dir and not (os.path.isfile(target) and keep(entry.name)):
            return  # a broken link, or not an image: listed by no one
        if _inside(target, self.split):
            if _inside(target, self.current) and target != self.current:
                self._skip("are another name of an image or folder already counted", entry.path)
            else:
                self._skip("lead out of their class folder (into another class, or a parent: a loop)", entry.path)
        elif is_dir and _inside(self.split, target):
            self._skip("lead to a folder that holds the dataset (a loop)", entry.path)
        elif target in self.dirs or target in self.files:
            self._skip("are another name of an image or folder already counted", entry.path)
        elif is_dir:
            self._walk(entry.path, target, child, keep, skip_hidden, found)
        else:
            self._count(target, rel, entry.name, found)

    def _count(self, real: str, rel: str, name: str, found: list[tuple[str, str]]) -> None:
        if real in self.files:
            self._skip("are another name of an image or folder already counted", os.path.join(rel, name))
            return
        self.files.add(real)
        found.append((rel, name))
