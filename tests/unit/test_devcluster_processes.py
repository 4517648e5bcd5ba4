"""The harness's one way to start, watch, wait for and stop processes, with real (tiny) ones."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from kms_operator.devcluster import assets, processes

pytestmark = pytest.mark.unit


class HarnessError(RuntimeError):
    pass


def _script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return [str(path)]


def _wait_dead(group: processes.ProcessGroup, name: str) -> None:
    deadline = time.monotonic() + 30
    while name not in group.dead():
        assert time.monotonic() < deadline, f"{name} did not exit"
        time.sleep(0.05)


def test_an_exited_process_is_reported_with_its_code_and_log(tmp_path: Path) -> None:
    started: list[dict[str, int]] = []
    group = processes.ProcessGroup(tmp_path, HarnessError, on_start=started.append)
    group.start("short", _script(tmp_path, "short.sh", "echo the reason >&2; exit 3"))
    group.start("long", _script(tmp_path, "long.sh", "exec sleep 60"))
    assert [sorted(pids) for pids in started] == [["short"], ["long", "short"]]
    _wait_dead(group, "short")

    assert group.dead() == ["short"]
    assert not group.all_alive()
    group.require_alive("long")
    with pytest.raises(HarnessError, match=r"(?s)short exited with code 3\n.*the reason"):
        group.require_alive("long", "short")
    assert "the reason" in group.logs_report()
    group.stop_all(timeout=10)
    assert group.dead() == []


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_stop_kills_the_process_group_when_sigterm_is_ignored(tmp_path: Path) -> None:
    group = processes.ProcessGroup(tmp_path, HarnessError)
    child = tmp_path / "child"
    # The shell ignores SIGTERM (so does its child, by inheritance), in one process group.
    stubborn = group.start(
        "stubborn",
        _script(tmp_path, "stubborn.sh", f"trap '' TERM; sleep 60 & echo $! > {child}; wait"),
    )
    _wait_for(child)
    child_pid = int(child.read_text())
    group.stop("stubborn", timeout=0.5)
    assert stubborn.popen.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while not _gone(child_pid):
        assert time.monotonic() < deadline, "the child outlived its process group's SIGKILL"
        time.sleep(0.05)


def test_stop_all_stops_the_last_started_first(tmp_path: Path) -> None:
    group = processes.ProcessGroup(tmp_path, HarnessError)
    order = tmp_path / "order"
    for name in ("first", "second", "third"):
        body = (
            f"trap 'echo {name} >> {order}; exit 0' TERM; touch {tmp_path / name}; sleep 60 & wait"
        )
        group.start(name, _script(tmp_path, f"{name}.sh", body))
        _wait_for(tmp_path / name)  # its trap is installed
    group.stop_all(timeout=10)
    assert order.read_text().split() == ["third", "second", "first"]


def test_wait_until_retries_expected_errors_then_succeeds() -> None:
    answers: list[str | Exception | None] = [OSError("refused"), "starting", None]

    def check() -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    deadline = time.monotonic() + 60
    processes.wait_until("thing", check, deadline, error=HarnessError, report=lambda: "")
    assert answers == []


def test_wait_until_past_the_deadline_raises_the_harness_error_with_the_logs() -> None:
    with pytest.raises(HarnessError, match=r"(?s)thing: not ready in time; last: HTTP 503\nLOGS"):
        processes.wait_until(
            "thing",
            lambda: "HTTP 503",
            time.monotonic() - 1,
            error=HarnessError,
            report=lambda: "LOGS",
        )


def test_wait_until_lets_an_unexpected_error_through() -> None:
    def check() -> str | None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        processes.wait_until(
            "thing", check, time.monotonic() + 60, error=HarnessError, report=lambda: ""
        )


def test_http_get_reports_no_answer_as_status_zero() -> None:
    status, body = processes.http_get(f"http://127.0.0.1:{processes.free_port()}/", timeout=2)
    assert status == 0
    assert body


def test_a_directory_named_by_the_environment_is_authoritative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "one").write_text("")
    (tmp_path / "one").chmod(0o755)
    monkeypatch.setenv("KMS_TEST_ASSETS", str(tmp_path))
    found = assets.find_binaries(
        "test binaries",
        ("one",),
        variables=("KMS_TEST_ASSETS",),
        under_repo=".envtest/none",
        hint="build them",
        error=HarnessError,
    )
    assert found == tmp_path.resolve()
    with pytest.raises(HarnessError, match=r"KMS_TEST_ASSETS=.* does not hold executable two"):
        assets.find_binaries(
            "test binaries",
            ("one", "two"),
            variables=("KMS_TEST_ASSETS",),
            under_repo=".envtest/none",
            hint="build them",
            error=HarnessError,
        )


def test_etcdctl_is_found_next_to_the_control_plane_else_in_the_repo_envtest_bin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def executable(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        path.chmod(0o755)
        return path

    given = tmp_path / "given"
    given.mkdir()
    repo_etcdctl = executable(tmp_path / "repo" / ".envtest" / "bin" / "etcdctl")
    monkeypatch.chdir(tmp_path / "repo")
    assert assets.find_etcdctl(given) == repo_etcdctl
    given_etcdctl = executable(given / "etcdctl")
    assert assets.find_etcdctl(given) == given_etcdctl


def test_a_harness_part_is_there_only_while_started() -> None:
    class Thing(processes.Harness):
        name = "the thing"
        error = HarnessError

        def __init__(self) -> None:
            self.part: str | None = None

        def start(self) -> Thing:
            self.part = "here"
            return self

        def stop(self) -> None:
            self.part = None

        @property
        def value(self) -> str:
            return self._part(self.part)

    thing = Thing()
    with thing as started:
        assert started.value == "here"
    with pytest.raises(HarnessError, match="the thing is not started"):
        _ = thing.value
