"""Logging set-up: text for people, JSON lines for log pipelines (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys

from kms_operator.timestamps import log_time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": log_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client logs request bodies at DEBUG; those may hold Secret data.
    logging.getLogger("kubernetes").setLevel(logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.INFO)
