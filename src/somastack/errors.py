"""One exception hierarchy; the API turns each into RFC 9457 problem+json with a stable type."""

from __future__ import annotations


class SomaError(Exception):
    """Base of every SomaStack error."""

    status = 500
    type = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the problem answer carries (e.g. Retry-After)."""
        return {}


class InvalidInput(SomaError):
    """The request is well-formed but a field's value is not acceptable."""

    status = 422
    type = "invalid-input"
    title = "Invalid input"


class Unauthenticated(SomaError):
    """No usable identity (missing or malformed tenant/credential)."""

    status = 401
    type = "unauthenticated"
    title = "Unauthenticated"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="somastack"'}


class Forbidden(SomaError):
    """The credential is valid but does not allow this (missing scope, other tenant, policy)."""

    status = 403
    type = "forbidden"
    title = "Forbidden"


class PolicyDenied(Forbidden):
    """The policy decision point said no; `reasons` says why."""

    type = "policy-denied"
    title = "Denied by policy"


class NotFound(SomaError):
    """The resource does not exist for this tenant (or at all; we never say which)."""

    status = 404
    type = "not-found"
    title = "Not found"


class Conflict(SomaError):
    """The request conflicts with the current state."""

    status = 409
    type = "conflict"
    title = "Conflict"


class EmbedderMismatch(InvalidInput):
    """Vectors from a different embedder than the one this server uses."""

    type = "embedder-mismatch"
    title = "Embedder mismatch"


class StoreUnavailable(SomaError):
    """The database cannot be reached or is not migrated."""

    status = 503
    type = "store-unavailable"
    title = "Store unavailable"


class ProviderUnavailable(SomaError):
    """An LLM provider could not answer (network, timeout, 5xx, auth); the next one may."""

    status = 503
    type = "provider-unavailable"
    title = "LLM provider unavailable"


class ModelOutputInvalid(SomaError):
    """The model's output is not the JSON the request's schema asks for."""

    status = 502
    type = "model-output-invalid"
    title = "Model output invalid"

    def __init__(self, detail: str, *, field: str | None = None, usage_tokens: int = 0) -> None:
        super().__init__(detail, field=field)
        self.usage_tokens = usage_tokens  # what the failed call consumed, for the ledger


class ToolNotAllowed(SomaError):
    """The tool is unknown, outside the session's allow-list, or denied by the policy point."""

    status = 403
    type = "tool-not-allowed"
    title = "Tool not allowed"


class RateLimited(SomaError):
    """Too many calls in the current window; `retry_after_s` (when known) becomes Retry-After."""

    status = 429
    type = "rate-limited"
    title = "Rate limited"

    def __init__(self, detail: str, *, field: str | None = None, retry_after_s: int | None = None
                 ) -> None:
        super().__init__(detail, field=field)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class ToolFailed(SomaError):
    """The tool ran but did not produce a valid result."""

    status = 502
    type = "tool-failed"
    title = "Tool failed"


class ToolTimeout(ToolFailed):
    """The tool exceeded its wall-clock or CPU limit and was killed."""

    status = 504
    type = "tool-timeout"
    title = "Tool timed out"


class ToolOutputTooLarge(ToolFailed):
    """The tool wrote more than the output cap and was killed."""

    type = "tool-output-too-large"
    title = "Tool output too large"


class SandboxUnavailable(SomaError):
    """The configured sandbox isolation cannot be provided on this machine."""

    status = 503
    type = "sandbox-unavailable"
    title = "Sandbox unavailable"


class BudgetExhausted(SomaError):
    """The budget cannot cover the next step; nothing was spent for it."""

    status = 402
    type = "budget_exhausted"
    title = "Budget exhausted"


class ConstitutionInvalid(SomaError):
    """The active constitution is missing, tampered with or under-signed: the server must not run."""

    status = 503
    type = "constitution-invalid"
    title = "Constitution invalid"
