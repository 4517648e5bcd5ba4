"""The processes of the local cluster: started, watched and stopped the one way.

A :class:`Harness` (the control plane, the dev cluster) is started on ``with`` entry and
stopped on exit, whatever happened in between. Every binary runs in its own session with
stdout and stderr in its own log file, and asks Linux to kill it when the harness's main thread
dies. A stop is by its pid: SIGTERM to its process group, then SIGKILL. Readiness is polled
with one deadline (:func:`wait_until`), most often on a health URL (:func:`http_get`).
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, ClassVar, Self, TypeVar

__all__ = [
    "LOG_TAIL_LINES",
    "Harness",
    "Process",
    "ProcessGroup",
    "free_port",
    "http_get",
    "stop_requested",
    "tail",
    "wait_until",
]

LOG_TAIL_LINES = 40

#: A readiness check: None when ready, else what is not ready yet.
Check = Callable[[], str | None]

T = TypeVar("T")


class Harness(abc.ABC):
    """Processes run for a test or a person: ``with`` starts them and stops them.

    A subclass says what it is (``name``, for messages) and which exception it raises
    (``error``); its parts exist only while it is started (:meth:`_part`).
    """

    name: ClassVar[str]
    error: ClassVar[type[Exception]]

    @abc.abstractmethod
    def start(self) -> Self:
        """Start everything and wait until it is ready; stop what started if that fails."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop everything started, by pid; idempotent."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _part(self, value: T | None) -> T:
        """A part that exists while started; the harness's error when it does not."""
        if value is None:
            raise self.error(f"{self.name} is not started")
        return value


def free_port() -> int:
    """A loopback TCP port free now (another process may take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when this thread dies.

    Only used from the main thread (PR_SET_PDEATHSIG fires when the *thread* that forked
    exits), on Linux; elsewhere the atexit handlers and the stops are the safety net.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    return preexec


class Process:
    """One binary, started in its own session with its output in ``log_file``."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self._log: IO[bytes] = log_file.open("wb")
        # preexec_fn only calls prctl(PR_SET_PDEATHSIG): async-signal-safe enough.
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_file, lines)

    def stop(self, timeout: float) -> None:
        """SIGTERM its process group, SIGKILL it after ``timeout``; close its log."""
        try:
            if self.popen.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(timeout=timeout)
            else:
                # The leader is gone; make sure nothing else in its group lingers.
                self._signal(signal.SIGKILL)
        finally:
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


class ProcessGroup:
    """The processes one harness started, by name, with their logs in ``log_dir``.

    ``error`` is the harness's exception type, raised by :meth:`require_alive`; ``on_start``
    is told every pid after each start (the dev cluster writes them to its state file).
    """

    def __init__(
        self,
        log_dir: Path,
        error: type[Exception],
        on_start: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.error = error
        self._on_start = on_start
        self._processes: dict[str, Process] = {}

    def start(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.log_dir / f"{name}.log")
        self._processes[name] = process
        if self._on_start is not None:
            self._on_start({n: p.pid for n, p in self._processes.items()})
        return process

    def __getitem__(self, name: str) -> Process:
        return self._processes[name]

    def dead(self) -> list[str]:
        """Names of the processes that have exited."""
        return [name for name, process in self._processes.items() if not process.alive()]

    def all_alive(self) -> bool:
        return bool(self._processes) and not self.dead()

    def require_alive(self, *names: str) -> None:
        """Raise the harness's error, with the log's last lines, if one of ``names`` exited."""
        for name in names:
            process = self._processes[name]
            if not process.alive():
                raise self.error(
                    f"{name} exited with code {process.popen.returncode}\n"
                    f"--- last lines of {process.log_file} ---\n{process.log_tail()}"
                )

    def logs_report(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(
            f"--- last lines of {process.log_file} ---\n{process.log_tail(lines)}"
            for process in self._processes.values()
        )

    def stop(self, *names: str, timeout: float) -> None:
        """Stop these processes, in this order (those not started are skipped)."""
        for name in names:
            process = self._processes.pop(name, None)
            if process is not None:
                process.stop(timeout)

    def stop_all(self, timeout: float) -> None:
        """Stop every process left, the last started first."""
        self.stop(*reversed(self._processes), timeout=timeout)


def http_get(
    url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Status and body of a GET (0 and the reason when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:  # noqa: S310 (local endpoints only)
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ssl.SSLError) as exc:
        return 0, str(exc).encode()


def wait_until(
    what: str,
    check: Check,
    deadline: float,
    *,
    error: type[Exception],
    report: Callable[[], str],
    expected: tuple[type[Exception], ...] = (OSError, ValueError),
) -> None:
    """Poll ``check`` until it returns None; past ``deadline``, raise ``error`` with its last
    answer and ``report()`` (the logs). An ``expected`` exception counts as "not yet"."""
    while True:
        try:
            problem = check()
        except expected as exc:
            problem = str(exc)
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise error(f"{what}: not ready in time; last: {problem}\n{report()}")
        time.sleep(0.25)


def stop_requested() -> threading.Event:
    """An event that SIGTERM and SIGINT (Ctrl-C) set, for a harness run by hand."""
    event = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return event
