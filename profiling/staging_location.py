"""Where profiling runs stage answers: a local (or NFS) directory, or an S3-compatible ``s3://bucket/prefix``.

:class:`StagingLocation` is the one place that knows the difference: a ``pyarrow.fs`` filesystem and the root in
it, resolved once from a path or URL. Locally a file is written under a temporary name, fsynced and renamed into
place, and moved aside by a rename; on S3 one upload writes an object whole (it appears when complete), so it is
written straight to its key, and moved aside by a copy then a delete (``staging_merges`` makes a crash between them
harmless). Credentials come only from the environment pyarrow reads (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ...): a URL carrying them is refused, and no
message here ever repeats a URL's user info or its query's values other than :data:`SHOWN_OPTIONS`.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

import polars as pl
import pyarrow.fs as pafs

import warehouse as wh

__all__ = ["SHOWN_OPTIONS", "STALE_TEMPORARY_S", "StagingLocation", "public_url"]

#: ``s3://`` query options whose values messages may show (the rest show as ``***``).
SHOWN_OPTIONS = ("endpoint_override", "region", "scheme")
#: Seconds after which a temporary file is a write killed midway, not one in progress (a batch's write takes
#: seconds), so a merge may delete it while other runs stage beside it.
STALE_TEMPORARY_S = 3600.0
#: How a file being written locally ends: ``.<name>.tmp`` beside its final name, hidden from listings.
TEMPORARY_SUFFIX = ".tmp"


def public_url(url: str) -> str:
    """``url`` safe to show: its user info as ``***@`` and query values outside :data:`SHOWN_OPTIONS` as ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.netloc.rpartition("@")
        netloc = f"***@{host[2]}" if host[1] else host[2]
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        shown = "&".join(f"{k}={v if k in SHOWN_OPTIONS and '@' not in v else '***'}" for k, v in query)
    except ValueError:
        return url.split(":", 1)[0] + "://***"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, shown, ""))


@dataclass(frozen=True)
class StagingLocation:
    """A staging location: ``fs`` and ``root`` in it (a :class:`~pathlib.Path` locally, ``bucket/prefix`` as a
    :class:`~pathlib.PurePosixPath` on S3); ``url`` names it in messages, without credentials. Files are named by
    paths under ``root``."""

    fs: pafs.FileSystem
    root: PurePath
    url: str

    @classmethod
    def of(cls, where: str | os.PathLike[str] | StagingLocation) -> StagingLocation:
        """Resolve a path, an ``s3://bucket/prefix[?endpoint_override=HOST:PORT&scheme=http&region=R]`` URL or a
        location already resolved. Raises ValueError (one line, naming the value but no secret) for a URL of
        another scheme, without a bucket, or carrying credentials."""
        if isinstance(where, StagingLocation):
            return where
        where = wh.staging_path(where)
        if isinstance(where, Path):
            return cls(pafs.LocalFileSystem(), where, str(where))
        shown = public_url(where)
        try:
            parts = urllib.parse.urlsplit(where)
            options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        except ValueError:
            raise ValueError(f"staging location {shown!r}: not a valid URL") from None
        if parts.scheme != "s3":
            raise ValueError(f"staging location {shown!r}: unknown scheme {parts.scheme!r}; give a path or s3://bucket")
        if "@" in parts.netloc:
            raise ValueError(
                f"staging location {shown!r}: credentials in the URL's user info are refused; "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            )
        if "@" in options.get("endpoint_override", ""):
            raise ValueError(f"staging location {shown!r}: credentials in endpoint_override are refused")
        if not parts.netloc:
            raise ValueError(f"staging location {shown!r}: no bucket; give s3://bucket/prefix")
        where = "s3" + where[2:]  # the scheme as pyarrow knows it (URL schemes are case-insensitive)
        try:
            fs, root = pafs.FileSystem.from_uri(where)
        except (ValueError, OSError) as exc:  # pyarrow's text names an option, never its value; the URL is redacted
            raise ValueError(f"staging location {shown!r}: {str(exc).replace(where, shown)}") from None
        return cls(fs, PurePosixPath(root), f"s3://{root}")

    @property
    def local(self) -> bool:
        """Whether this is the local filesystem (fsync and rename) rather than an object store."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.url

    def relative(self, path: PurePath) -> str:
        """``path``'s name under the root, ``/``-separated (``model=<m>/<file>``): how ``staging_merges`` names it."""
        return path.relative_to(self.root).as_posix()

    def entries(self, folder: PurePath, *, directories: bool) -> list[PurePath]:
        """The directories (else the files) directly in ``folder``; a missing folder holds none."""
        wanted = pafs.FileType.Directory if directories else pafs.FileType.File
        infos = self.fs.get_file_info(pafs.FileSelector(folder.as_posix(), allow_not_found=True))
        return [folder / info.base_name for info in infos if info.type == wanted]

    def read(self, path: PurePath, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """A staged Parquet file (``columns`` of it). Raises FileNotFoundError where it is gone."""
        if self.local:
            return pl.read_parquet(path, columns=columns, hive_partitioning=False)
        with self.fs.open_input_file(path.as_posix()) as source:
            return pl.read_parquet(source.read(), columns=columns, hive_partitioning=False)

    def write(self, frame: pl.DataFrame, path: PurePath) -> None:
        """Write ``frame`` to ``path`` whole or not at all: locally a temporary name, fsync, rename and fsync of the
        directory; on S3 the file serialised first, then uploaded to its key (visible only once complete)."""
        if self.local:
            _write_durably(frame, Path(path))
            return
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        with self.fs.open_output_stream(path.as_posix()) as out:
            out.write(buffer.getbuffer())

    def remove_stale_temporaries(self, folders: Sequence[PurePath], older_than_s: float = STALE_TEMPORARY_S) -> int:
        """Delete the temporary files in ``folders`` left by writes killed midway: those older than ``older_than_s``
        (a write in progress is seconds old, so runs staging meanwhile keep theirs); returns how many. Only locally:
        an object store has no temporary names."""
        if not self.local:
            return 0
        cutoff = time.time() - older_than_s
        stale = [
            Path(path)
            for folder in folders
            for path in self.entries(folder, directories=False)
            if _is_temporary(path) and _modified_before(Path(path), cutoff)
        ]
        for path in stale:
            path.unlink(missing_ok=True)  # another merge may have removed it meanwhile
        return len(stale)

    def move(self, moves: Sequence[tuple[PurePath, PurePath]]) -> None:
        """Move each ``(path, target)`` (replacing a copy at ``target``): locally by renames, each directory touched
        fsynced once; on S3 by a copy then a delete. A path gone already (another merge moved it) is skipped."""
        if not self.local:
            for path, target in moves:
                try:
                    self.fs.copy_file(path.as_posix(), target.as_posix())
                except OSError:  # pyarrow's S3 copy of a missing key raises a plain OSError
                    if self.fs.get_file_info(path.as_posix()).type == pafs.FileType.NotFound:
                        continue
                    raise
                with contextlib.suppress(FileNotFoundError):  # another merge deleted it meanwhile
                    self.fs.delete_file(path.as_posix())
            return
        touched: set[Path] = set()
        for path, target in moves:
            target = Path(target)
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                touched.add(target.parent.parent)
            try:
                os.replace(path, target)
            except FileNotFoundError:
                continue
            touched.update((target.parent, Path(path).parent))
        for directory in touched:
            _fsync_dir(directory)


def _write_durably(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` whole or not at all: a temporary name, fsync, rename, fsync of the directory."""
    created = not path.parent.is_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(path.parent.parent)
    temporary = path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as out:
            frame.write_parquet(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _is_temporary(path: PurePath) -> bool:
    """Whether ``path`` is a file being written (or whose write was killed): ``.<name>.tmp``."""
    return path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX)


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # renamed into place or removed meanwhile
        return False


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (where the OS can: not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
