"""The agent's exception tree: every failure an operator can see is one of these."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent reports; its message is shown to the operator as is."""

    kind = "Error"


class ConfigError(AgentError):
    """The configuration (file, key or command-line option) is invalid."""

    kind = "Config error"

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.key = key


class TargetError(AgentError):
    """A source or target tree cannot be reached or walked at all (not a single unreadable file)."""

    kind = "Target error"


class UploadError(AgentError):
    """A result could not be delivered to SMS; it stays in the outbox."""

    kind = "Upload error"

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        error_code: str | None = None,
        error_msg: str | None = None,
        error_param: tuple[str, ...] = (),
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.url = url
        self.status = status  # None: no HTTP answer (connection error, timeout)
        self.error_code = error_code
        self.error_msg = error_msg
        self.error_param = error_param
        self.retry_after = retry_after  # seconds, from the server's Retry-After


class ValidationError(AgentError):
    """A value cannot be sent to SMS because it breaks a documented API limit."""

    kind = "Invalid result"


class StateError(AgentError):
    """The state directory or its SQLite database cannot be used."""

    kind = "State error"


class AuthError(UploadError):
    """No usable credentials, or SMS/IAM refused them; results stay in the outbox."""

    kind = "Auth error"


class TaskSettingsError(AgentError):
    """The migration task's settings (directories, excludes, mode, target) are unreadable."""

    kind = "Task settings error"
