"""Where ``kmsctl`` sends its calls, as whom, and for which namespace.

Each is given as an option or discovered, in this order:

* server: ``--server``, else ``$KMS_SERVER``, else ``https://kms-operator.kms-system.svc:8443``
  (the in-cluster Service; the kubeconfig's cluster is the kube-apiserver, not this API);
* CA: ``--ca-file``, else ``$KMS_CA_FILE``, else ``/var/run/kms-operator/ca.crt`` when present
  (mount the ``kms-operator-ca`` ConfigMap there), else the system trust store;
* token (a ServiceAccount token made for the KMS's audience, ``kms.cmk.dev``): ``--token``,
  ``--token-file``, ``--service-account NS/NAME`` (minted now through TokenRequest with your
  kubeconfig: for people), ``$KMS_TOKEN``, ``$KMS_TOKEN_FILE``, else the projected token a pod
  mounts at ``/var/run/secrets/kms.cmk.dev/token`` (README: the pod volume). The pod's default
  ServiceAccount token is never sent: it is made for the Kubernetes API server, and the KMS
  refuses it;
* namespace: ``-n``, else ``$KMS_NAMESPACE``, else the pod's namespace, else ``default``.

The client is stdlib ``urllib``; the key lifecycle commands use the kubeconfig (or the
in-cluster ServiceAccount) to reach the Kubernetes API instead.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from kms_operator.contract import PROJECTED_TOKEN_PATH, TOKEN_AUDIENCE
from kms_operator.kube import reviews
from kms_operator.kube.client import load_api_client
from kms_operator.kube.objects import Objects

DEFAULT_SERVER = "https://kms-operator.kms-system.svc:8443"
MOUNTED_CA = Path("/var/run/kms-operator/ca.crt")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The audience of the KMS's tokens (``kms-operator run --token-audience``).
DEFAULT_AUDIENCE = TOKEN_AUDIENCE
#: Where a pod mounts its projected ServiceAccount token for the KMS (see the README).
PROJECTED_TOKEN = Path(PROJECTED_TOKEN_PATH)
#: Lifetime asked for a minted token (the API server's minimum is 10 minutes).
MINTED_TOKEN_SECONDS = 600
DEFAULT_TIMEOUT_SECONDS = 30.0


class CliError(click.ClickException):
    """A failure kmsctl reports as ``error: <code>: <message>`` on stderr, with exit status 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def format_message(self) -> str:
        return f"{self.code}: {self.message}"

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


@dataclass(frozen=True)
class Connection:
    server: str
    context: ssl.SSLContext
    token: str
    timeout: float

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - https URL built from --server
            self.server.rstrip("/") + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, context=self.context, timeout=self.timeout
            ) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError("Unavailable", f"cannot reach {self.server}: {reason}") from None


def _api_error(exc: urllib.error.HTTPError) -> CliError:
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return CliError(str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return CliError(f"HTTP{exc.code}", raw.decode("utf-8", "replace").strip() or exc.reason)


@dataclass(slots=True)
class Session:
    """One kmsctl invocation's common options (None: discover it, see the module's text).

    The group builds it; each command's common options fill it in as they are parsed (slots:
    an option without a field here fails instead of being dropped).
    """

    server: str | None = None
    ca_file: Path | None = None
    token: str | None = None
    token_file: Path | None = None
    service_account: str | None = None
    kubeconfig: Path | None = None
    audience: str = DEFAULT_AUDIENCE
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    #: ``-n`` as given; :attr:`namespace` falls back from it.
    given_namespace: str | None = None

    @property
    def namespace(self) -> str:
        if self.given_namespace:
            return self.given_namespace
        if os.environ.get("KMS_NAMESPACE"):
            return os.environ["KMS_NAMESPACE"]
        try:
            return (SERVICE_ACCOUNT_DIR / "namespace").read_text(encoding="utf-8").strip()
        except OSError:
            return "default"

    def connect(self) -> Connection:
        """The data-plane API's address, the CA to trust and the bearer token to send."""
        server = self.server or os.environ.get("KMS_SERVER") or DEFAULT_SERVER
        if not server.startswith("https://"):
            raise CliError("Configuration", f"the server must be an https:// URL, got {server!r}")
        ca_file = (
            self.ca_file
            or _env_path("KMS_CA_FILE")
            or (MOUNTED_CA if MOUNTED_CA.is_file() else None)
        )
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise CliError("Configuration", f"cannot load the CA file {ca_file}: {exc}") from None
        if self.service_account and (self.token or self.token_file):
            raise CliError(
                "Configuration", "give --service-account or --token/--token-file, not both"
            )
        if self.service_account:
            bearer = _minted_token(self.service_account, self.kubeconfig, self.audience)
        else:
            bearer = _token(self.token, self.token_file)
        return Connection(server, context, bearer, self.timeout)

    def cmk_objects(self) -> Objects:
        """The custom resources, through the Kubernetes API (the kubeconfig or in-cluster)."""
        try:
            return Objects(load_api_client(self.kubeconfig))
        except Exception as exc:  # a missing or broken kubeconfig: say so, no traceback
            raise CliError(
                "KubernetesUnavailable", f"cannot reach the Kubernetes API: {exc}"
            ) from None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _token(token: str | None, token_file: Path | None) -> str:
    if token:
        return token.strip()
    if token_file is None:
        if os.environ.get("KMS_TOKEN"):
            return os.environ["KMS_TOKEN"].strip()
        token_file = _env_path("KMS_TOKEN_FILE")
    if token_file is None and PROJECTED_TOKEN.is_file():
        token_file = PROJECTED_TOKEN
    if token_file is None:
        raise CliError(
            "Configuration",
            "no token: give --token-file, --token, $KMS_TOKEN or --service-account NS/NAME, "
            f"or mount a projected ServiceAccount token with audience {DEFAULT_AUDIENCE} at "
            f"{PROJECTED_TOKEN} (see the README)",
        )
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError("Configuration", f"cannot read the token file: {exc}") from None


def _minted_token(service_account: str, kubeconfig: Path | None, audience: str) -> str:
    """A short-lived token of ServiceAccount ``NS/NAME`` for ``audience``, through TokenRequest
    with the kubeconfig's credentials (which need ``create`` on ``serviceaccounts/token``)."""
    namespace, _, name = service_account.partition("/")
    if not namespace or not name or "/" in name:
        raise CliError(
            "Configuration", f"--service-account must be NAMESPACE/NAME, got {service_account!r}"
        )
    try:
        api = load_api_client(kubeconfig)
    except Exception as exc:  # a missing or broken kubeconfig: say so, no traceback
        raise CliError("KubernetesUnavailable", f"cannot load the kubeconfig: {exc}") from None
    try:
        return reviews.request_token(
            api,
            namespace,
            name,
            audiences=(audience,),
            expiration_seconds=MINTED_TOKEN_SECONDS,
        )
    except reviews.TokenRequestError as exc:
        raise CliError("TokenRequestFailed", str(exc)) from None
    except Exception as exc:
        raise CliError(
            "KubernetesUnavailable", f"cannot reach the Kubernetes API: {type(exc).__name__}"
        ) from None
    finally:
        api.close()  # type: ignore[no-untyped-call]
