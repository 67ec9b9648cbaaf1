"""One upstream HTTP service: a pooled httpx client behind the protections the runtime
promises (README "Services").

- **Destinations.** Every connection (the first and each redirect's) goes through
  ``GuardedBackend``: the host is resolved once, every address it resolves to is checked,
  and the socket is opened to a checked address, so a name cannot resolve to one address
  for the check and another for the connection. Loopback, private, link-local (the cloud
  metadata address), shared, reserved and multicast addresses are refused unless
  ``services.allow_networks`` lists them.
- **Timeouts** always: the service's, cut to the call's deadline.
- **Retries** with exponential backoff and full jitter (tenacity), at most 2 s per wait: a
  connection that failed before the request was sent is retried for every method;
  timeouts, broken connections and 5xx answers only for idempotent methods.
- **A circuit breaker** per service (per worker process).
- **A size cap** on answers; the upstream's body never reaches a caller on errors.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpcore
import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from core.base.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from core.contracts.services import IDEMPOTENT_METHODS, UpstreamResponse
from managers.services.rules import (
    AddressPolicy,
    Breaker,
    BreakerState,
    DestinationRefused,
    SecretReader,
    ServiceSettings,
)

log = logging.getLogger("switchboard.services")

MAX_WAIT = 2.0  # seconds, per wait between attempts
FIRST_WAIT = 0.1


# --- where a service may go -------------------------------------------------------------


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            if self.policy.refusal(address) is not None:
                raise DestinationRefused(host, address)
        error: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool whose sockets go through ``GuardedBackend``
    (httpx has no parameter for the network backend: its pool is replaced, same settings)."""

    def __init__(self, policy: AddressPolicy, *, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy),
        )


# --- one service ------------------------------------------------------------------------


class _Failure(Exception):
    """An attempt that failed; ``retriable`` says whether another may follow."""

    def __init__(self, error: Exception, retriable: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retriable = retriable


class _TooLarge(Exception):
    pass


class _NotSent(Exception):
    """The call ended before the upstream could answer, for a reason of ours."""

    outcome = "not_sent"

    def problem(self, service: str) -> UpstreamError | UpstreamTimeout:
        return UpstreamError(f"service {service!r}: the request could not be sent")


class _OtherOrigin(_NotSent):
    outcome = "refused"

    def problem(self, service: str) -> UpstreamError | UpstreamTimeout:
        return UpstreamError(f"service {service!r} redirected to another origin, which is refused")


class _OutOfTime(_NotSent):
    outcome = "upstream-timeout"

    def problem(self, service: str) -> UpstreamError | UpstreamTimeout:
        return UpstreamTimeout(f"service {service!r}: the call's deadline has passed")


class _PastDeadline(stop_base):
    """Stop when the wait before the next attempt would end past the call's deadline."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return self.deadline is not None and time.monotonic() + upcoming >= self.deadline


class ServiceClient:
    """``ctx.services.<name>``: requests to one upstream, with every protection."""

    def __init__(
        self,
        settings: ServiceSettings,
        policy: AddressPolicy,
        *,
        read_secret: SecretReader | None = None,
        report: Callable[[str, str, float], None] | None = None,
        on_breaker: Callable[[str, BreakerState], None] | None = None,
        max_connections: int = 20,
    ) -> None:
        self.name = settings.name
        self.base_url = settings.base_url.rstrip("/")
        self.settings = settings
        self._origin = httpx.URL(self.base_url)
        self._read_secret = read_secret
        self._report = report
        self.breaker = Breaker(
            settings.failures,
            settings.reset,
            on_change=None if on_breaker is None else lambda state: on_breaker(self.name, state),
        )
        self._client = httpx.Client(
            transport=GuardedTransport(policy, max_connections=max_connections),
            follow_redirects=settings.redirects > 0,
            max_redirects=max(settings.redirects, 1),
            trust_env=False,
            # Called for the request and for every redirect hop: the service's headers
            # (secrets among them) never leave its origin, and neither does the call.
            event_hooks={"request": [self._same_origin]},
        )

    def close(self) -> None:
        self._client.close()

    # --- the verbs ------------------------------------------------------------------

    def get(self, path: str = "", **kwargs: Any) -> UpstreamResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "", **kwargs: Any) -> UpstreamResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str = "", **kwargs: Any) -> UpstreamResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str = "", **kwargs: Any) -> UpstreamResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str = "", **kwargs: Any) -> UpstreamResponse:
        return self.request("DELETE", path, **kwargs)

    def _same_origin(self, request: httpx.Request) -> None:
        url = request.url
        if (url.scheme, url.host, url.port) != (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        ):
            raise _OtherOrigin()

    def url_for(self, path: str) -> str:
        """The base URL plus ``path``; ``ValueError`` unless the result stays under it."""
        if path and (not path.startswith("/") or path.startswith("//")):
            raise ValueError(f"path {path!r} must start with a single '/'")
        url = httpx.URL(self.base_url + path)
        if (url.scheme, url.host, url.port) != (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        ):
            raise ValueError(f"path {path!r} leaves service {self.name!r}")
        return str(url)

    def request(
        self,
        method: str,
        path: str = "",
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """One call (with its retries). Answers below 500 are returned, whatever their
        status; the rest raise the problem a caller sees (502, 503 or 504)."""
        method = method.upper()
        url = self.url_for(path)
        if deadline is not None and deadline <= time.monotonic():
            raise UpstreamTimeout(f"service {self.name!r}: the call's deadline has passed")
        if not self.breaker.admit():
            self._count("breaker_open", 0.0)
            raise UpstreamUnavailable(
                f"service {self.name!r} is failing; calls are paused (circuit breaker open)"
            )
        started = time.monotonic()
        try:
            response = self._with_retries(
                method=method, url=url, body=json, params=params, extra=headers, deadline=deadline
            )
        except _Failure as failure:
            self.breaker.failed()
            problem = self._problem(failure.error, method)
            self._count(problem.slug, time.monotonic() - started)
            raise problem from None
        except _NotSent as exc:  # the upstream was not asked: nothing to hold against it
            self.breaker.abandoned()
            self._count(exc.outcome, time.monotonic() - started)
            raise exc.problem(self.name) from None
        except DestinationRefused as exc:
            self.breaker.abandoned()
            self._count("refused", time.monotonic() - started)
            log.warning("service %s: %s", self.name, exc)
            raise UpstreamError(
                f"service {self.name!r}: its address is not an allowed destination "
                "(loopback, private, link-local or metadata; see services.allow_networks)"
            ) from None
        except _TooLarge:
            self.breaker.succeeded()  # it answered: the service works
            self._count("too_large", time.monotonic() - started)
            raise UpstreamError(
                f"service {self.name!r} answered more than {self.settings.max_response_bytes} bytes"
            ) from None
        except BaseException:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        self._count(
            "ok" if response.status < 400 else f"{response.status // 100}xx",
            time.monotonic() - started,
        )
        return response

    # --- internals ------------------------------------------------------------------

    def _count(self, outcome: str, seconds: float) -> None:
        if self._report is not None:
            self._report(self.name, outcome, seconds)

    def _with_retries(
        self,
        *,
        method: str,
        url: str,
        body: Any,
        params: Mapping[str, Any] | None,
        extra: Mapping[str, str] | None,
        deadline: float | None,
    ) -> UpstreamResponse:
        headers = {**self._headers(), **(extra or {})}

        for attempt in Retrying(
            stop=stop_any(stop_after_attempt(self.settings.retries + 1), _PastDeadline(deadline)),
            wait=wait_random_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT),
            retry=retry_if_exception(lambda exc: isinstance(exc, _Failure) and exc.retriable),
            reraise=True,
        ):
            with attempt:
                return self._once(
                    method=method,
                    url=url,
                    body=body,
                    params=params,
                    headers=headers,
                    deadline=deadline,
                )
        raise AssertionError("tenacity returned without an attempt")  # pragma: no cover

    def _once(
        self,
        *,
        method: str,
        url: str,
        body: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        deadline: float | None,
    ) -> UpstreamResponse:
        timeout = self.settings.timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise _OutOfTime()
        ends = time.monotonic() + timeout
        idempotent = method in IDEMPOTENT_METHODS
        request = self._client.build_request(
            method, url, json=body, params=params, headers=headers, timeout=timeout
        )
        try:
            response = self._client.send(request, stream=True)
            try:
                status = response.status_code
                if status >= 500:
                    raise _Failure(
                        UpstreamError(f"service {self.name!r} answered {status}"), idempotent
                    )
                content = self._read(response, ends)
            finally:
                response.close()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Failure(exc, True) from None  # not sent: safe to try again
        except httpx.LocalProtocolError:
            # Our request is not valid HTTP (a header value with a newline, say): never
            # the upstream's fault, and the message may quote a secret header.
            raise _NotSent() from None
        except (httpx.TooManyRedirects, httpx.DecodingError) as exc:
            raise _Failure(exc, False) from None
        except httpx.TransportError as exc:  # read/write timeouts, broken connections
            raise _Failure(exc, idempotent) from None
        return UpstreamResponse(status, content, dict(response.headers), self.name)

    def _read(self, response: httpx.Response, ends: float) -> bytes:
        """The body, up to the size cap; a body still arriving at ``ends`` is a timeout
        (httpx's timeouts bound each read, not the whole answer)."""
        limit = self.settings.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge()
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _TooLarge()
            if time.monotonic() > ends:
                raise httpx.ReadTimeout("the answer took longer than the timeout")
            chunks.append(chunk)
        return b"".join(chunks)

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.settings.headers.items():
            if isinstance(value, str):
                headers[name] = value
                continue
            if self._read_secret is None:
                raise UpstreamUnavailable(f"service {self.name!r}: no secrets to read {name} from")
            path, _, field = value.secret.partition("#")
            # A trailing newline (secret files often end with one) would make the header
            # invalid; surrounding whitespace is never part of a token.
            headers[name] = value.prefix + str(self._read_secret(path, field)).strip()
        return headers

    def _problem(
        self, error: Exception, method: str
    ) -> UpstreamError | UpstreamTimeout | UpstreamUnavailable:
        if isinstance(error, UpstreamError):
            return error
        if isinstance(error, httpx.TimeoutException):
            return UpstreamTimeout(f"service {self.name!r} did not answer in time")
        if isinstance(error, httpx.ConnectError):
            log.warning("service %s: cannot connect (%s)", self.name, type(error).__name__)
            return UpstreamUnavailable(f"service {self.name!r} cannot be reached")
        if isinstance(error, httpx.TooManyRedirects):
            return UpstreamError(f"service {self.name!r} redirected too many times")
        if isinstance(error, httpx.DecodingError):
            return UpstreamError(f"service {self.name!r} answered a body that cannot be decoded")
        # Only the type: an exception's text may quote what was sent, headers included.
        log.warning("service %s: %s failed: %s", self.name, method, type(error).__name__)
        return UpstreamError(f"service {self.name!r}: the connection failed during the call")
