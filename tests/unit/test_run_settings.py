"""``kms-operator run`` settings from flags and ``KMS_*`` variables: what is refused at start.

The operator itself is replaced (``running.run`` records the settings it would run with), so
these tests exercise click's parsing and :class:`~kms_operator.settings.Settings` only.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kms_operator.cli import operator_cli
from kms_operator.settings import DEFAULT_TOKEN_AUDIENCE, Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    runs: list[Settings] = []
    monkeypatch.setattr(operator_cli.running, "run", runs.append)
    return runs


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        operator_cli.main, ["run", "--cluster", "kubeconfig", *args], env=env or {}
    )


# -- item 12: static-token mode only through the flag -----------------------------------------


@pytest.mark.parametrize("variable", ["KMS_STATIC_TOKEN_FILE", "KMS_RUN_STATIC_TOKEN_FILE"])
def test_a_static_token_file_in_the_environment_is_refused(
    started: list[Settings], tmp_path: Path, variable: str
) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("t,admin\n")
    result = _run(env={variable: str(tokens)})
    assert result.exit_code == 2, result.output
    assert f"environment variable {variable} is set" in result.output
    assert "--static-token-file" in result.output
    assert started == []  # never started, in particular not in static-token mode


def test_the_flag_enables_static_tokens_and_the_variable_is_ignored(
    started: list[Settings], tmp_path: Path
) -> None:
    flag, variable = tmp_path / "flag.csv", tmp_path / "env.csv"
    result = _run("--static-token-file", str(flag), env={"KMS_STATIC_TOKEN_FILE": str(variable)})
    assert result.exit_code == 0, result.output
    assert "KMS_STATIC_TOKEN_FILE is ignored" in result.output
    assert [s.static_token_file for s in started] == [flag]


def test_without_flag_or_variable_tokens_are_reviewed(started: list[Settings]) -> None:
    result = _run(env={"KMS_STATIC_TOKEN_FILE": ""})
    assert result.exit_code == 0, result.output
    assert started[0].static_token_file is None


# -- item 8 (settings): a day is a positive number of seconds ---------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "inf"])
def test_day_seconds_must_be_positive_by_flag_and_by_environment(
    started: list[Settings], value: str
) -> None:
    by_flag = _run("--day-seconds", value)
    assert by_flag.exit_code == 2, by_flag.output
    assert "--day-seconds" in by_flag.output and "positive" in by_flag.output
    by_env = _run(env={"KMS_DAY_SECONDS": value})
    assert by_env.exit_code == 2, by_env.output
    assert "KMS_DAY_SECONDS" in by_env.output and "positive" in by_env.output
    assert started == []


def test_day_seconds_from_the_environment_is_used(started: list[Settings]) -> None:
    assert _run(env={"KMS_DAY_SECONDS": "2"}).exit_code == 0
    assert _run("--day-seconds", "0.5").exit_code == 0
    assert [s.day_seconds for s in started] == [2.0, 0.5]


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_settings_refuse_a_day_that_is_not_positive(value: float) -> None:
    with pytest.raises(ValueError, match="day_seconds must be a positive"):
        Settings(day_seconds=value)


# -- item 6: the audience, and item 7: the request timeout ------------------------------------


def test_the_token_audience_defaults_to_the_kms_and_can_be_configured(
    started: list[Settings],
) -> None:
    assert Settings().token_audiences == (DEFAULT_TOKEN_AUDIENCE,) == ("kms.cmk.dev",)
    assert _run().exit_code == 0
    assert _run("--token-audience", "a", "--token-audience", "b").exit_code == 0
    assert _run(env={"KMS_TOKEN_AUDIENCES": "c d"}).exit_code == 0
    assert [s.token_audiences for s in started] == [("kms.cmk.dev",), ("a", "b"), ("c", "d")]


def test_no_or_an_empty_audience_is_refused(started: list[Settings]) -> None:
    with pytest.raises(ValueError, match="token_audiences"):
        Settings(token_audiences=())
    result = _run("--token-audience", "")
    assert result.exit_code == 2 and "token_audiences" in result.output
    assert started == []


def test_request_timeout_is_positive_and_configurable(started: list[Settings]) -> None:
    assert Settings().request_timeout_seconds == 10.0
    assert _run("--request-timeout-seconds", "3").exit_code == 0
    assert _run(env={"KMS_REQUEST_TIMEOUT_SECONDS": "4"}).exit_code == 0
    assert [s.request_timeout_seconds for s in started] == [3.0, 4.0]
    assert _run("--request-timeout-seconds", "0").exit_code == 2
    with pytest.raises(ValueError, match="request_timeout_seconds"):
        Settings(request_timeout_seconds=-1)
