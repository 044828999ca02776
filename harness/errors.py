"""Typed errors of the harness: every failure a user can meet has a short code, a cause and a fix.

Codes are grouped by layer, as ST's runner numbers its errors, so a CI log line is enough to know where to
look: HIL1xx configuration and input files, HIL2xx transport (ports), HIL3xx protocol, HIL4xx board
commands, HIL5xx bench verdicts, HIL6xx reports and baselines, HIL7xx build and flash.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of all harness errors: one line, `CODE cause -- fix: hint`."""

    code = "HIL000"
    kind = "error"

    def __init__(self, message: str, hint: str = "", *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code:
            self.code = code

    def __str__(self) -> str:
        line = f"{self.code} {self.message}"
        if self.hint:
            line += f" -- fix: {self.hint}"
        return line


# HIL1xx: configuration and inputs ------------------------------------------------------------------
class ConfigError(HarnessError):
    """A device profile, option or baseline the user gave is wrong."""

    code = "HIL100"
    kind = "config"


class ProfileError(ConfigError):
    code = "HIL101"


class ModelError(ConfigError):
    """The model file cannot be benchmarked (corrupt, not INT8, too large, unsupported op...)."""

    code = "HIL110"
    kind = "model"


class DataError(ConfigError):
    """MIT-BIH directory, record or annotation missing or unreadable."""

    code = "HIL120"
    kind = "data"


# HIL2xx: transport ---------------------------------------------------------------------------------
class LinkError(HarnessError):
    """The port cannot be opened or used: no such device, permission, busy."""

    code = "HIL200"
    kind = "link"


class BoardBusyError(LinkError):
    code = "HIL203"


# HIL3xx: protocol ----------------------------------------------------------------------------------
class ProtocolError(HarnessError):
    """Bytes arrive but not our frames: wrong baud, other firmware, desync."""

    code = "HIL300"
    kind = "protocol"


class BoardTimeout(ProtocolError):
    """The board stopped answering. Carries how far the run got."""

    code = "HIL310"
    kind = "timeout"

    def __init__(self, message: str, hint: str = "", *, verified: int = 0, total: int = 0,
                 stopped_at: str = "", code: str | None = None):
        super().__init__(message, hint, code=code)
        self.verified = verified
        self.total = total
        self.stopped_at = stopped_at


# HIL4xx: board commands ----------------------------------------------------------------------------
class BoardError(HarnessError):
    """The device answered ERROR to a command (upload refused, load failed, invoke failed)."""

    code = "HIL400"
    kind = "board"

    def __init__(self, message: str, hint: str = "", *, device_code: int = 0, code: str | None = None):
        super().__init__(message, hint, code=code)
        self.device_code = device_code


# HIL5xx: bench verdicts ----------------------------------------------------------------------------
class MismatchError(HarnessError):
    code = "HIL500"
    kind = "mismatch"


# HIL6xx: reports and baselines ---------------------------------------------------------------------
class ReportError(HarnessError):
    code = "HIL600"
    kind = "report"


class BaselineError(ReportError):
    code = "HIL610"


# HIL7xx: build and flash ---------------------------------------------------------------------------
class BuildError(HarnessError):
    code = "HIL700"
    kind = "build"


class FlashError(HarnessError):
    code = "HIL710"
    kind = "flash"

