"""Every exception detection raises, in one tree with one base:

    DetectionError
    ├── InvalidEvent (ValueError)         an event does not follow the schema; `reason` names the
    │   │                                 fields (a consumer dead-letters it with the reason)
    │   └── EventDatedAhead               an arriving event is dated ahead of its arrival
    ├── InvalidSensorConfig (ValueError)  a sensor setting is out of range; `setting` names it
    └── UsageProblem (ValueError)         a bad `detection check` option (Nagios UNKNOWN, exit 3)

The ValueError bases are for callers that treat any bad value alike. Not for: errors of the
event streams' backends (redis-py's and botocore's own reach the caller unchanged).
"""

from __future__ import annotations


class DetectionError(Exception):
    """Base class of every error detection raises."""


class InvalidEvent(DetectionError, ValueError):
    """The event does not follow the schema; `reason` names the fields and what was expected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventDatedAhead(InvalidEvent):
    """An arriving event's `occurred_at` is further ahead of its arrival (the stream's record of
    it, or this node's clock) than the skew allowed (REST answers 422: the event is well formed,
    its time cannot be so)."""


class InvalidSensorConfig(DetectionError, ValueError):
    """A setting is out of range; `setting` names it (the field name of `SensorConfig`)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class UsageProblem(DetectionError, ValueError):
    """A bad command-line value; the message names the option."""
