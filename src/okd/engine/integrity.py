"""A checkpoint that proves it is the file okd wrote: a SHA-256 of its bytes, sealed inside it.

``torch.save`` writes a zip archive, and a zip archive may end with a comment that readers
(``torch.load``, ``zipfile``, ``unzip``) skip. okd writes ``okd-sha256:<hex>`` there, the hash of
every byte before the comment's length field: the tensors, the pickled structure, the zip's
directory. A flipped bit anywhere, or a truncated file, no longer matches and the file is refused
before ``torch.load`` sees it. The file stays an ordinary PyTorch checkpoint for everyone else.

Files written before the seal existed have no comment; their zip CRC-32s (one per member) are
checked instead, which still catches flipped bytes in the tensors.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from pathlib import Path

from okd.errors import OKDUserError

_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes, then the comment
_EOCD_SIZE = 22
_TAG = b"okd-sha256:"


class DamagedCheckpoint(OKDUserError):
    """The file is not what okd wrote (bytes changed or missing); nothing of it is used."""


def seal(data: bytes) -> bytes:
    """``data`` (a ``torch.save`` archive without a comment) with its SHA-256 as the zip comment."""
    start = _eocd_offset(data)
    if start is None or start + _EOCD_SIZE != len(data):
        raise ValueError("expected a zip archive without a comment (torch.save's output)")
    comment = _TAG + hashlib.sha256(data[: start + 20]).hexdigest().encode()
    return data[: start + 20] + struct.pack("<H", len(comment)) + comment


def verify(path: Path, data: bytes) -> None:
    """Refuse ``data`` (the bytes of ``path``) unless its seal matches, or, unsealed, its zip CRCs do."""
    start = _eocd_offset(data)
    if start is None:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged or truncated (no zip directory at its end); "
                                "it cannot be used")
    (length,) = struct.unpack("<H", data[start + 20 : start + 22])
    comment = data[start + 22 :]
    if len(comment) != length:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged or truncated ({len(comment)} of {length} trailing bytes); "
                                "it cannot be used")
    if comment.startswith(_TAG):
        expected = comment[len(_TAG) :].decode("ascii", "replace")
        if hashlib.sha256(data[: start + 20]).hexdigest() != expected:
            raise DamagedCheckpoint(f"checkpoint {path} is damaged: its contents no longer match the SHA-256 okd "
                                    "sealed in it (flipped or lost bytes); it cannot be used")
        return
    _check_crcs(path, data)


def _check_crcs(path: Path, data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: {str(exc)[:200]}; it cannot be used") from None
    if bad is not None:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: its member {bad} fails its CRC check; it cannot be used")


def _eocd_offset(data: bytes) -> int | None:
    """Where the end-of-central-directory record starts (it is within the last 22 + 65535 bytes)."""
    start = data.rfind(_EOCD, max(0, len(data) - _EOCD_SIZE - 0xFFFF))
    return start if start >= 0 and len(data) - start >= _EOCD_SIZE else None
