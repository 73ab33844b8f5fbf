"""Records written off the request path to Parquet files: the machinery the gateway's decision, feedback and traffic
logs share (:mod:`serving.decisions`, :mod:`serving.feedback`, :mod:`serving.traffic`).

:meth:`RecordLog.record` only puts a record on a bounded queue (when it is full the record is dropped and counted:
a slow disk never slows a request); a background thread turns batches into rows of the log's schema (its
``normalise`` function runs there, never on the request path) and writes each batch to a file of this process,
under a temporary name then renamed into place, so a reader never sees half a file. :meth:`RecordLog.close` writes
what is queued and stops the thread: under uvicorn call it from the app's lifespan shutdown (uvicorn runs that on
SIGTERM, in every worker); elsewhere :func:`flush_on_sigterm` installs a SIGTERM handler that closes the log, then
dies as SIGTERM would have.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import polars as pl

__all__ = ["LOADED_DIR", "RecordLog", "flush_on_sigterm", "move_to_loaded", "read_record_files", "record_files"]

log = logging.getLogger("uniroute.records")

#: The folder (inside a log's directory) where a warehouse asset moves the files it has loaded; kept there.
LOADED_DIR = "loaded"
_POLL_S = 0.02  # how often the writer looks for records while waiting

Schema = Mapping[str, pl.DataType]
Normalise = Callable[[Mapping], dict]


class RecordLog:
    """A bounded queue of records and the thread that writes them to ``directory`` in batches.

    Parameters
    ----------
    directory
        Where the Parquet files go (created); files are named ``<prefix><tag>-<random>-<n>.parquet``, unique per
        process (a random part even if two share a tag) and batch.
    schema, prefix
        The files' columns and their names' beginning.
    normalise
        A record -> one row of ``schema`` (the writer thread calls it; ``ValueError``, ``TypeError`` or
        ``AttributeError``: the record is dropped alone, logged and counted).
    process_tag
        Names this process in the file names; default ``<host>-<pid>``.
    batch_size
        Records per file at most.
    flush_interval_s
        A partial batch is written once its oldest record has waited this long.
    max_queue
        Records waiting at most; past that, :meth:`record` drops and counts (:attr:`dropped`).
    metrics
        Optional: anything with ``set_queue(depth, dropped, log=kind)`` (``serving.metrics.GatewayMetrics``), told
        by the writer thread after every batch and at least every second, never on the request path.
    kind
        What a record is, for the log's lines, its thread's name and its metrics' ``log`` label (``"decision"``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        schema: Schema,
        prefix: str,
        normalise: Normalise,
        process_tag: str | None = None,
        batch_size: int = 256,
        flush_interval_s: float = 2.0,
        max_queue: int = 10_000,
        *,
        metrics: object | None = None,
        kind: str = "record",
    ) -> None:
        if batch_size < 1 or max_queue < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and max_queue must be >= 1 and flush_interval_s > 0")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema, self.kind, self._normalise = dict(schema), kind, normalise
        self.batch_size, self.flush_interval_s = batch_size, flush_interval_s
        # A deque, not a queue.Queue: its append and popleft take no Python-level lock, so close() in a SIGTERM
        # handler that interrupted record() halfway cannot wait forever on a lock the interrupted code holds. The
        # bound is kept by record() under a re-entrant lock (the handler may re-enter it; the writer never takes it).
        self._pending: collections.deque[Mapping] = collections.deque()
        self._max_queue = max_queue
        self._lock = threading.RLock()
        self._closed = False
        self._dropped = 0  # by record(), under the lock
        self._unwritten = 0  # by the writer (one thread at a time: the writer, then close() once it has ended)
        self._written = 0
        self._stop = threading.Event()
        tag = process_tag or f"{socket.gethostname()}-{os.getpid()}"
        self._stem = f"{prefix}{''.join(c if c.isalnum() or c in '-_.' else '_' for c in tag)}-{uuid.uuid4().hex[:8]}"
        self._metrics = metrics
        self._told = 0.0  # monotonic time metrics were last told
        self._batches = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"uniroute-{kind}-log", daemon=True)
        self._thread.start()

    # ---- the request path ---------------------------------------------------------------------------------
    def record(self, record: Mapping) -> bool:
        """Queue one record without blocking; False (and counted in :attr:`dropped`) if full or closed."""
        return self.record_all((record,))

    def record_all(self, records: Sequence[Mapping]) -> bool:
        """Queue every one of ``records`` or none (False, each counted in :attr:`dropped`): full or closed."""
        with self._lock:
            if not self._closed and len(self._pending) + len(records) <= self._max_queue:
                self._pending.extend(records)
                return True
            self._dropped += len(records)
            return False

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Records dropped so far: queue full, log closed, invalid, or their file could not be written."""
        return self._dropped + self._unwritten

    @property
    def written(self) -> int:
        """Records written to files so far."""
        return self._written

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Write every queued record and stop the writer thread; later records are dropped. Idempotent."""
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._drain()  # anything the thread left (none unless it died)

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the writer thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if batch:
                self._write(batch)
            if batch or time.monotonic() - self._told >= 1.0:
                self._tell()
        self._drain()
        self._tell()

    def _tell(self) -> None:
        self._told = time.monotonic()
        if self._metrics is not None:
            try:
                self._metrics.set_queue(self.depth, self.dropped, log=self.kind)
            except Exception:
                log.exception("could not update the %s log's metrics", self.kind)

    def _collect(self) -> list[Mapping]:
        """Up to a batch: the first record, then the rest until the flush interval has passed since it came (or
        nothing, after a tenth of a second without one, so that metrics are told now and then)."""
        batch: list[Mapping] = []
        started, deadline = time.monotonic(), None
        while len(batch) < self.batch_size:
            try:
                batch.append(self._pending.popleft())
                deadline = deadline or time.monotonic() + self.flush_interval_s
                continue
            except IndexError:
                pass
            now = time.monotonic()
            if self._stop.is_set() or (deadline is not None and now >= deadline):
                break
            if deadline is None and now - started >= 0.1:
                break
            time.sleep(_POLL_S if deadline is None else min(_POLL_S, deadline - now))
        return batch

    def _drain(self) -> None:
        while True:
            batch = []
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._pending.popleft())
                except IndexError:
                    break
            if not batch:
                return
            self._write(batch)

    def _write(self, batch: list[Mapping]) -> None:
        rows = []
        for record in batch:
            try:
                rows.append(self._normalise(record))
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("%s record dropped: %s", self.kind, exc)
                self._unwritten += 1
        if not rows:
            return
        name = f"{self._stem}-{next(self._batches):06d}.parquet"
        final, temp = self.directory / name, self.directory / f".{name}.tmp"
        try:
            frame = pl.DataFrame(rows, schema=self.schema, strict=False)
            with open(temp, "wb") as handle:
                frame.write_parquet(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except Exception:
            log.exception("could not write %d %s records to %s", len(rows), self.kind, final)
            temp.unlink(missing_ok=True)
            self._unwritten += len(rows)
            return
        self._written += len(rows)


def record_files(directory: str | os.PathLike[str], prefix: str, *, loaded: bool = False) -> list[Path]:
    """The finished files named ``<prefix>*.parquet`` in ``directory`` (temporary ones left out), sorted by name;
    ``loaded``: those a warehouse asset has moved to its :data:`LOADED_DIR` folder too (listed first)."""
    folders = [Path(directory) / LOADED_DIR, Path(directory)] if loaded else [Path(directory)]
    return [file for folder in folders for file in sorted(folder.glob(f"{prefix}*.parquet"))]


def read_record_files(files: Iterable[Path], schema: Schema, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """``files`` as one frame of ``schema`` (or of its ``columns``); columns a file predates read as null."""
    names = list(columns or schema)
    wanted = {name: schema[name] for name in names}
    frames = [_read_file(file, wanted) for file in files]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=wanted)


def move_to_loaded(files: Sequence[Path]) -> int:
    """Move ``files`` to their directory's :data:`LOADED_DIR` folder; how many were moved. Call it once their rows
    are committed: a crash before reloads them, which stores nothing new."""
    for file in files:
        done = file.parent / LOADED_DIR
        done.mkdir(exist_ok=True)
        os.replace(file, done / file.name)
    return len(files)


def _read_file(file: Path, schema: Schema) -> pl.DataFrame:
    present = set(pl.read_parquet_schema(file))
    frame = pl.read_parquet(file, columns=[name for name in schema if name in present])
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in present]
    return frame.with_columns(missing).select(list(schema)).cast(dict(schema))


def flush_on_sigterm(*logs: RecordLog) -> None:
    """On SIGTERM, close each of ``logs`` (every queued record written), then do what SIGTERM did before: call the
    handler installed before this one, or die of SIGTERM (the default). Call it from the main thread.

    Not inside a uvicorn worker: uvicorn installs its own handlers while it serves (replacing this one, and
    putting it back only when it stops) and shuts down gracefully on SIGTERM; there, close the logs in the app's
    lifespan shutdown instead. Installed before ``uvicorn.run`` in a single process, it still runs after
    uvicorn's shutdown, which re-raises the signal it caught.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return  # SIGTERM is ignored here: it ends nothing, so there is nothing to flush for

    def handler(signum: int, frame: object) -> None:
        for record_log in logs:
            record_log.close()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, handler)
