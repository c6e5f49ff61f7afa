"""Errors raised on bad SAKE-format input."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input that cannot be read as SAKE data; the message names the file and the record."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        index: int | str | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.index = index
        self.reason = message
        super().__init__(_located(message, self.path, index))


class MissingAudioError(DataError):
    """Audio files that a corpus names but that are not on disk, all reported at once."""

    def __init__(self, missing: list[Path], total: int, *, shown: int = 5) -> None:
        self.missing = tuple(missing)
        self.total = total
        first = "\n  ".join(str(path) for path in self.missing[:shown])
        more = len(self.missing) - shown
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(self.missing)} of {total} audio files are missing; first:\n  {first}{tail}"
        )


def _located(message: str, path: Path | None, index: int | str | None) -> str:
    where = [] if path is None else [str(path)]
    if index is not None:
        where.append(f"record {index}")
    return ": ".join([*where, message])
