"""The job board: the bounded queue, the running job, de-duplication by request_key and the cache of
finished replies. Shared by the socket loop (which submits, attaches, cancels, finishes) and the worker
(which takes the next job), so every method holds one lock; nothing here does I/O.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..errors import AigcError
from ..request import GenerateRequest

_MAX_ATTEMPTS = 16  # msg_ids remembered per job (for cancel by msg_id); a retry storm cannot grow it


class QueueFull(AigcError):
    """The queue holds ``capacity`` jobs: refused at once (never a hang), with a hint when to retry."""

    def __init__(self, capacity: int, retry_after_s: float) -> None:
        super().__init__("busy", f"the server is busy: its queue holds {capacity} waiting job(s); "
                         f"try again in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Final:
    """A job's last message, kept so a retry with the same request_key gets it again."""

    msg_type: str  # "result" or "error"
    content: dict
    buffers: tuple[bytes, ...]
    request: dict  # as sent (to_dict: images and mesh arrays by sha256): a reused key with another is refused
    msg_ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.buffers) + 1024


@dataclass(eq=False)
class Job:
    """One generate. ``route``/``msg_id`` are the newest attempt's, where every later message goes."""

    request_key: str
    request: GenerateRequest  # as sent
    resolved: GenerateRequest  # defaults filled by the engine
    route: list[bytes]
    msg_id: str
    ignored_fields: tuple[str, ...] = ()
    msg_ids: list[str] = field(default_factory=list)
    state: str = "queued"  # queued -> running -> finished
    cancel: threading.Event = field(default_factory=threading.Event)
    stage: str = "queued"
    step: int = 0
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    last_sent: float = 0.0  # monotonic time of the last message to the client (keepalives)
    steps: int | None = None  # UNet steps it runs (image to image: those strength keeps); None: resolved.steps
    project: object | None = None  # a project job's checked work (projection.service.Prepared); steps = views

    def __post_init__(self) -> None:
        self.msg_ids.append(self.msg_id)

    @property
    def total(self) -> int:
        if self.project is not None:
            return len(self.project.cameras)
        return self.steps or self.resolved.steps or 1

    def attach(self, route: list[bytes], msg_id: str) -> None:
        """A retry of this job: stream the rest to the newest attempt."""
        self.route, self.msg_id = route, msg_id
        self.msg_ids[:] = [*self.msg_ids[-(_MAX_ATTEMPTS - 1):], msg_id]


class JobBoard:
    def __init__(self, capacity: int, cache_entries: int = 256, cache_bytes: int = 256 * 1024 * 1024) -> None:
        if capacity < 0:
            raise ValueError("queue capacity must be >= 0")
        self.capacity = capacity
        self._cache_entries, self._cache_bytes = cache_entries, cache_bytes
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._active: dict[str, Job] = {}  # request_key -> queued or running job
        self._finished: OrderedDict[str, Final] = OrderedDict()  # request_key -> final, oldest first
        self._finished_bytes = 0
        self._closed = False
        self._mean_s = 1.0  # running mean job duration, for retry_after_s

    # --- the socket loop's side ----------------------------------------------------------------------

    def find(self, request_key: str) -> Job | Final | None:
        with self._lock:
            return self._active.get(request_key) or self._finished.get(request_key)

    def find_msg_id(self, msg_id: str) -> tuple[str, Job | Final] | None:
        """A job (or finished reply) by the msg_id of any of its attempts."""
        with self._lock:
            for key, item in [*self._active.items(), *reversed(self._finished.items())]:
                if msg_id in item.msg_ids:
                    return key, item
        return None

    def submit(self, job: Job) -> int:
        """Queue a new job; returns its position (0 = next). Raises QueueFull when full."""
        with self._lock:
            if len(self._queue) >= self.capacity:
                elapsed = time.monotonic() - self._running.started if self._running and \
                    self._running.started else 0.0
                raise QueueFull(self.capacity, round(max(0.05, self._mean_s - elapsed), 3))
            self._queue.append(job)
            self._active[job.request_key] = job
            self._lock.notify_all()
            return len(self._queue) - 1

    def position(self, job: Job) -> int | None:
        with self._lock:
            return self._queue.index(job) if job in self._queue else None

    def remove_queued(self, job: Job) -> bool:
        """Take a queued job out (cancel); False if the worker already started it."""
        with self._lock:
            if job not in self._queue:
                return False
            self._queue.remove(job)
            return True

    def drain_queue(self) -> list[Job]:
        with self._lock:
            jobs = list(self._queue)
            self._queue.clear()
            return jobs

    def finish(self, job: Job, final: Final) -> None:
        """Record the job's last message (the socket loop sends it) and free its key for the cache."""
        with self._lock:
            job.state = "finished"
            if self._running is job:
                self._running = None
            if job.started is not None:
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - job.started)
            self._active.pop(job.request_key, None)
            old = self._finished.pop(job.request_key, None)
            self._finished_bytes -= old.size if old else 0
            self._finished[job.request_key] = final
            self._finished_bytes += final.size
            while self._finished and (len(self._finished) > self._cache_entries
                                      or self._finished_bytes > self._cache_bytes):
                _, evicted = self._finished.popitem(last=False)
                self._finished_bytes -= evicted.size
            self._lock.notify_all()

    def active(self) -> list[Job]:
        with self._lock:
            return ([self._running] if self._running else []) + list(self._queue)

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def length(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """No more jobs will be submitted: the worker stops once the queue is empty."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # --- the worker's side ---------------------------------------------------------------------------

    def take(self) -> Job | None:
        """Block until a job is queued (it becomes the running one), or None once closed and empty."""
        with self._lock:
            while not self._queue:
                if self._closed:
                    return None
                self._lock.wait()
            job = self._queue.popleft()
            job.state, job.started = "running", time.monotonic()
            self._running = job
            return job
