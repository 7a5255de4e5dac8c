"""Simulated Atlassian signing keys and callers: Connect sites and Forge invocations.

* :class:`InstallKeyServer`: the Connect install-key server (upstreams.md §4.3):
  ``GET /{kid}`` answers the PEM public key of a signed install hook, 404 for an unknown kid.
* :class:`ForgeJWKS`: the Forge JWKS (upstreams.md §5.4): ``GET /.well-known/jwks.json``.
* :class:`ConnectSite`: acts as a Confluence Cloud site toward a Connect app: it sends the
  RS256-signed ``installed``/``uninstalled`` hooks exactly as Atlassian documents them
  (``kid`` header, ``iss`` = clientKey, ``aud`` = [app base URL], ``qsh`` of the hook
  request), mints the HS256 request JWTs Confluence sends to the app (``sub`` = user), and
  delivers webhooks to the URL the app's descriptor subscribes for the event (upstreams.md
  §5.5), with an app-level JWT (no ``sub``; whether real webhook tokens carry one is
  UNCONFIRMED).
* :class:`ForgeInvoker`: mints Forge Invocation Tokens and calls a remote with them; product
  events go as a POST with a FIT that has no ``principal`` (the app is invoked, not a user).

Keys are RSA 2048, generated on first use (so an unused sandbox costs nothing). Lifetimes
Atlassian does not document are UNCONFIRMED and configurable: install tokens live 180 s
(ACE's outbound lifetime), FITs 300 s.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify

from bridge.atlassian_jwt import query_string_hash
from bridge.sandbox.harness import Clock

APP_ARI_PREFIX = "ari:cloud:ecosystem::app/"
INSTALLATION_ARI_PREFIX = "ari:cloud:ecosystem::installation/"
FIT_ISSUER = "forge/invocation-token"


class _KeyRing:
    """RSA signing keys by kid, made on demand; the newest signs by default."""

    def __init__(self, kid_prefix: str) -> None:
        self.kid_prefix = kid_prefix
        self._keys: dict[str, rsa.RSAPrivateKey] = {}
        self._current: str | None = None
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        """Key requests served, per kid asked for (unknown ones included)."""

    def new_key(self, kid: str | None = None) -> str:
        """Generate a key (it becomes the signing key) and return its kid."""
        kid = kid or f"{self.kid_prefix}{uuid.uuid4()}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            self._keys[kid] = key
            self._current = kid
        return kid

    @property
    def current_kid(self) -> str:
        """The signing key's kid (one is made on first use)."""
        with self._lock:
            current = self._current
        return current or self.new_key()

    def private_key(self, kid: str | None = None) -> rsa.RSAPrivateKey:
        """The private key of *kid* (default: the signing key)."""
        kid = kid or self.current_kid
        with self._lock:
            return self._keys[kid]

    def public_pem(self, kid: str) -> str | None:
        with self._lock:
            key = self._keys.get(kid)
        if key is None:
            return None
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode("ascii")

    def kids(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        """An RS256 JWT of *claims* with a ``kid`` header (the current key by default)."""
        kid = kid or self.current_kid
        return jwt.encode(claims, self.private_key(kid), algorithm="RS256", headers={"kid": kid})


class InstallKeyServer(_KeyRing):
    """The Connect install-key server: ``GET /{kid}`` → PEM public key (``.app``)."""

    def __init__(self) -> None:
        super().__init__("sandbox-install/")
        self.app = self._make_app()

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.get("/<path:kid>")
        def public_key(kid: str) -> Response:
            self.requests[kid] += 1
            pem = self.public_pem(kid)
            if pem is None:
                return Response("Not Found", status=404, content_type="text/plain")
            return Response(pem, content_type="application/x-pem-file")

        return app


class ForgeJWKS(_KeyRing):
    """The Forge JWKS endpoint: ``GET /.well-known/jwks.json`` (``.app``)."""

    def __init__(self) -> None:
        super().__init__("sandbox-forge/")
        self.app = self._make_app()

    def jwks(self) -> dict[str, Any]:
        """Every public key as a JWK set (making the first key if there is none)."""
        self.current_kid  # noqa: B018 - make sure a key exists
        keys = []
        for kid in self.kids():
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(
                self.private_key(kid).public_key(), as_dict=True
            )
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.get("/.well-known/jwks.json")
        def jwks() -> Response:
            self.requests["jwks"] += 1
            return jsonify(self.jwks())

        return app


@dataclass(frozen=True)
class SiteInstall:
    """One app installed into the simulated site."""

    bridge_url: str
    app_key: str
    client_key: str
    shared_secret: str = field(repr=False)
    base_url: str
    oauth_client_id: str | None


class ConnectSite:
    """A Confluence Cloud site as a Connect app sees it: lifecycle hooks and request JWTs."""

    def __init__(
        self,
        keys: InstallKeyServer,
        clock: Clock = time.time,
        *,
        token_lifetime: int = 180,
        timeout: float = 10.0,
    ) -> None:
        self.keys = keys
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.timeout = timeout
        self.installs: dict[str, SiteInstall] = {}
        self._last: str | None = None
        self._webhook_paths: dict[tuple[str, str], str] = {}

    def install(
        self,
        bridge_url: str,
        app_key: str,
        client_key: str,
        shared_secret: str,
        base_url: str,
        oauth_client_id: str | None,
        **extra: Any,
    ) -> requests.Response:
        """POST a signed ``installed`` hook to the app at *bridge_url*; remember the install
        when the app accepts it."""
        payload = self.lifecycle_payload(
            "installed",
            app_key,
            client_key,
            base_url,
            sharedSecret=shared_secret,
            oauthClientId=oauth_client_id,
            **extra,
        )
        response = self.post_lifecycle(
            bridge_url,
            "installed",
            payload,
            self.lifecycle_token(bridge_url, "installed", client_key),
        )
        if response.status_code < 300:
            self.installs[client_key] = SiteInstall(
                bridge_url.rstrip("/"),
                app_key,
                client_key,
                shared_secret,
                base_url,
                oauth_client_id,
            )
            self._last = client_key
        return response

    def uninstall(self, client_key: str | None = None) -> requests.Response:
        """POST a signed ``uninstalled`` hook for an earlier install."""
        site = self.installs[client_key or self._require_last()]
        payload = self.lifecycle_payload(
            "uninstalled", site.app_key, site.client_key, site.base_url
        )
        token = self.lifecycle_token(site.bridge_url, "uninstalled", site.client_key)
        response = self.post_lifecycle(site.bridge_url, "uninstalled", payload, token)
        if response.status_code < 300:
            self.installs.pop(site.client_key, None)
        return response

    @staticmethod
    def lifecycle_payload(
        event: str, app_key: str, client_key: str, base_url: str, **fields: Any
    ) -> dict[str, Any]:
        """The hook body (upstreams.md §4.3); ``None`` values are left out."""
        payload: dict[str, Any] = {
            "key": app_key,
            "clientKey": client_key,
            "baseUrl": base_url,
            "displayUrl": base_url,
            "productType": "confluence",
            "description": "Simulated Confluence Cloud site",
            "eventType": event,
            **fields,
        }
        return {name: value for name, value in payload.items() if value is not None}

    def lifecycle_token(
        self, bridge_url: str, event: str, client_key: str, *, kid: str | None = None, **claims: Any
    ) -> str:
        """The RS256 token of a lifecycle hook; *claims* override the documented ones
        (``None`` drops one)."""
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": client_key,
            "aud": [bridge_url.rstrip("/")],
            "iat": now,
            "exp": now + self.token_lifetime,
            "qsh": query_string_hash("POST", f"/{event}"),
            **claims,
        }
        return self.keys.sign(_present(body), kid)

    def post_lifecycle(
        self, bridge_url: str, event: str, payload: object, token: str
    ) -> requests.Response:
        """POST a lifecycle body with ``Authorization: JWT <token>``."""
        return requests.post(
            f"{bridge_url.rstrip('/')}/{event}",
            json=payload,
            headers={"Authorization": f"JWT {token}"},
            timeout=self.timeout,
        )

    def jwt_for(
        self,
        method: str,
        path_with_query: str,
        user: str | None,
        *,
        client_key: str | None = None,
        **claims: Any,
    ) -> str:
        """An HS256 request JWT as Confluence sends to the app: ``qsh`` of *method* and
        *path_with_query* (relative to the app's base URL), ``sub`` = *user* (left out when
        ``None``, as in app-to-app tokens); *claims* override (``None`` drops one)."""
        site = self.installs[client_key or self._require_last()]
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": site.client_key,
            "iat": now,
            "exp": now + self.token_lifetime,
            "qsh": query_string_hash(method, path_with_query),
        }
        if user is not None:
            body["sub"] = user
        body.update(claims)
        return jwt.encode(_present(body), site.shared_secret, algorithm="HS256")

    def send_webhook(
        self,
        bridge_url: str,
        event: str,
        payload: object,
        client_key: str | None = None,
        shared_secret: str | None = None,
        *,
        path: str | None = None,
        **claims: Any,
    ) -> requests.Response:
        """POST a webhook for *event* as Confluence does: to the URL the app's descriptor
        subscribes for it (or *path*), with ``Authorization: JWT`` signed with the install's
        shared secret (or *shared_secret*); *claims* override the token's (``None`` drops)."""
        key = client_key or self._require_last()
        secret = shared_secret or self.installs[key].shared_secret
        path = path or self.webhook_path(bridge_url, event)
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": key,
            "iat": now,
            "exp": now + self.token_lifetime,
            "qsh": query_string_hash("POST", path),
            **claims,
        }
        token = jwt.encode(_present(body), secret, algorithm="HS256")
        return requests.post(
            f"{bridge_url.rstrip('/')}{path}",
            json=payload,
            headers={"Authorization": f"JWT {token}"},
            timeout=self.timeout,
        )

    def webhook_path(self, bridge_url: str, event: str) -> str:
        """The path the app's descriptor subscribes for *event* (read once per app).

        :raises LookupError: the app does not subscribe to *event*.
        """
        bridge_url = bridge_url.rstrip("/")
        cached = self._webhook_paths.get((bridge_url, event))
        if cached is not None:
            return cached
        descriptor = requests.get(f"{bridge_url}/atlassian-connect.json", timeout=self.timeout)
        descriptor.raise_for_status()
        modules = descriptor.json().get("modules", {})
        for hook in modules.get("webhooks", []):
            self._webhook_paths[(bridge_url, str(hook["event"]))] = str(hook["url"])
        if (bridge_url, event) not in self._webhook_paths:
            raise LookupError(f"the app at {bridge_url} does not subscribe to {event!r}")
        return self._webhook_paths[(bridge_url, event)]

    def _require_last(self) -> str:
        if self._last is None:
            raise LookupError("nothing is installed in this site yet")
        return self._last


class ForgeInvoker:
    """A Forge app's runtime calling its remote: mints FITs and sends requests with them."""

    def __init__(
        self,
        jwks: ForgeJWKS,
        app_id: str,
        clock: Clock = time.time,
        *,
        environment_id: str = "sandbox-environment",
        lifetime: int = 300,
        timeout: float = 10.0,
    ) -> None:
        self.jwks = jwks
        self.app_id = app_id
        self.clock = clock
        self.environment_id = environment_id
        self.lifetime = lifetime
        self.timeout = timeout

    @property
    def app_ari(self) -> str:
        return (
            self.app_id if self.app_id.startswith(APP_ARI_PREFIX) else APP_ARI_PREFIX + self.app_id
        )

    def fit(
        self,
        installation_id: str,
        api_base_url: str,
        principal: str | None = None,
        *,
        cloud_id: str | None = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A Forge Invocation Token (upstreams.md §5.4); *claims* override (``None`` drops)."""
        now = int(self.clock())
        app: dict[str, Any] = {
            "id": self.app_ari,
            "installationId": installation_id,
            "apiBaseUrl": api_base_url,
            "environment": {"type": "PRODUCTION", "id": self.environment_id},
        }
        body: dict[str, Any] = {
            "iss": FIT_ISSUER,
            "aud": self.app_ari,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": str(uuid.uuid4()),
            "app": app,
        }
        if principal is not None:
            body["principal"] = principal
        if cloud_id is not None:
            body["context"] = {"cloudId": cloud_id}
        body.update(claims)
        return self.jwks.sign(_present(body), kid)

    def invoke(
        self,
        method: str,
        url: str,
        token: str,
        *,
        user_token: str | None = None,
        system_token: str | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Call the remote with ``Authorization: Bearer <FIT>`` and the OAuth token headers."""
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = f"Bearer {token}"
        if user_token is not None:
            headers["x-forge-oauth-user"] = user_token
        if system_token is not None:
            headers["x-forge-oauth-system"] = system_token
        return requests.request(method, url, headers=headers, timeout=self.timeout, **kwargs)

    def send_event(
        self,
        url: str,
        installation_id: str,
        api_base_url: str,
        payload: object,
        *,
        principal: str | None = None,
        user_token: str | None = None,
        **claims: Any,
    ) -> requests.Response:
        """Deliver a product event to the remote: POST *payload* with a fresh FIT (no
        ``principal`` unless given, as for app-invoked events; *claims* override)."""
        token = self.fit(installation_id, api_base_url, principal, **claims)
        return self.invoke("POST", url, token, user_token=user_token, json=payload)


def _present(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims without those overridden with ``None`` (to build tokens lacking one)."""
    return {name: value for name, value in claims.items() if value is not None}
