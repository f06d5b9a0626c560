"""Two roles, decided in one place before every request.

Every endpoint is one of:

- **public**: the pages, static files, ``/healthz`` and the login endpoints
  (``login.py``): no credential.
- **listening**: WHEP (the ``whep`` blueprint) and the listen page's data
  (``listening.py``): open to anyone, or, when ``[server] listen_pin`` is
  set, to whoever shows the PIN or its long form from the signs
  (``Authorization: Bearer <pin>`` or the listen cookie) or the admin
  credential. Any origin may listen (CORS).
- **publishing** (the ``whip`` blueprint): HTTPS only, because a publish
  token crosses the network; the view checks the source's own token.
- **scrape** (``@scrape``: ``/metrics``): admin, or the scrape token
  (``[admin] metrics_token``) as a bearer, which opens nothing else.
- **admin**: everything else, always. ``Authorization: Bearer <[admin]
  token>``, or the admin session cookie plus ``X-CSRF-Token`` on every
  state-changing request. Never cross-origin: a request whose ``Origin`` (or
  ``Sec-Fetch-Site``) says it comes from another site is refused, and no CORS
  header is sent.

**Plain HTTP is for listening.** Admin credentials (the password and the
setup code at login, the admin token, the admin cookie) are accepted only
over HTTPS: a request that came over plain HTTP from another machine
(``exposed()``) and needs or carries one is refused with ``403`` and the
HTTPS address (body and ``Location``; ``X-Appliance-Auth: https``), and
``/admin`` there redirects to its HTTPS twin. The admin cookie is not even
looked at there. Loopback is exempt: nothing crosses a network between a
script on the box and the box.

An endpoint is admin unless it is marked here (``PUBLIC_ENDPOINTS``,
``LISTENING_BLUEPRINTS``) or with ``@public`` / ``@listening``: a new route
is protected until someone decides otherwise.
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from quart import Response, current_app, g, request

from ..admin_auth import AdminAuth, AdminSession
from ..errors import ForbiddenError, RateLimitedError, UnauthorizedError
from ..service import Service
from .common import client_address

__all__ = ["PUBLIC", "LISTENING", "ADMIN", "public", "listening", "role_of", "check_request",
           "cors", "same_origin", "admin_session", "SESSION_COOKIE", "LISTEN_COOKIE",
           "CSRF_HEADER", "retry_later", "check_admin_listening", "exposed", "https_url",
           "https_only", "http_origin", "scrape", "bearer", "PUBLISHING"]

PUBLIC, LISTENING, ADMIN, SCRAPE, PUBLISHING = "public", "listening", "admin", "scrape", \
    "publishing"

SESSION_COOKIE = "appliance_admin"
LISTEN_COOKIE = "appliance_listen"
CSRF_HEADER = "X-CSRF-Token"

# Endpoints of blueprints this module does not own; everything else is marked
# with the decorators below, or is admin.
PUBLIC_ENDPOINTS = frozenset({"static", "ui.listen", "ui.listen_one", "ui.admin", "ui.publish",
                              "signs.signs"})
# pages that need HTTPS from another machine (the admin's; the microphone
# needs a secure context): plain HTTP redirects to their HTTPS twin
HTTPS_PAGES = frozenset({"ui.admin", "ui.publish"})
PUBLIC_RULES = frozenset({"/healthz"})
LISTENING_BLUEPRINTS = frozenset({"whep"})
PUBLISHING_BLUEPRINTS = frozenset({"whip"})

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_ROLE_ATTR = "appliance_role"
View = TypeVar("View", bound=Callable[..., Any])


def public(view: View) -> View:
    """Mark a view as reachable without any credential."""
    setattr(view, _ROLE_ATTR, PUBLIC)
    return view


def listening(view: View) -> View:
    """Mark a view as part of listening (open, or behind the venue PIN)."""
    setattr(view, _ROLE_ATTR, LISTENING)
    return view


def scrape(view: View) -> View:
    """Mark a view as the admin's that a monitoring scraper may also read
    with the scrape token alone (``[admin] metrics_token``)."""
    setattr(view, _ROLE_ATTR, SCRAPE)
    return view


def role_of(endpoint: str | None, rule: str | None = None) -> str:
    """The role an endpoint needs. No endpoint (404/405: nothing runs) is public."""
    if endpoint is None:
        return PUBLIC
    view = current_app.view_functions.get(endpoint)
    marked = getattr(view, _ROLE_ATTR, None)
    if marked in (PUBLIC, LISTENING, SCRAPE):
        return marked
    if endpoint in PUBLIC_ENDPOINTS or rule in PUBLIC_RULES:
        return PUBLIC
    if endpoint.partition(".")[0] in LISTENING_BLUEPRINTS and "." in endpoint:
        return LISTENING
    if endpoint.partition(".")[0] in PUBLISHING_BLUEPRINTS and "." in endpoint:
        return PUBLISHING
    return ADMIN


def _auth() -> AdminAuth:
    return current_app.admin_auth


def bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def same_origin() -> bool:
    """False when the browser says the request comes from another site. A
    request without ``Origin`` (curl, a same-origin GET) passes."""
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in ("cross-site", "same-site"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.lower() == f"{request.scheme}://{request.host}".lower()


def exposed() -> bool:
    """True when this request came over plain HTTP from another machine:
    whatever it carries, a stranger on the network may have read it."""
    if request.scheme == "https":
        return False
    try:
        ip = ipaddress.ip_address(client_address())
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_loopback


def _url_host() -> str:
    """The host this request named, as a URL writes it (IPv6 in brackets);
    ``<hostname>.local`` when it named none that parses."""
    try:
        host = urlsplit("//" + request.host).hostname
    except ValueError:
        host = None
    if not host:
        host = Service.local_name()
    return f"[{host}]" if ":" in host else host


def https_url(path: str) -> str | None:
    """``path`` on the HTTPS port, at the host this request named (None when
    the app is not served over HTTPS)."""
    port = getattr(current_app, "appliance_ports", {}).get("https")
    if not port:
        return None
    return f"https://{_url_host()}{'' if port == 443 else f':{port}'}{path}"


def http_origin() -> str:
    """``http://<the host this request named>[:port]``: where listening is
    served without TLS (the share link of the admin page)."""
    port = getattr(current_app, "appliance_ports", {}).get("http") \
        or current_app.appliance_config.server.port or 80
    return f"http://{_url_host()}{'' if port == 80 else f':{port}'}"


def _this_path() -> str:
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


ADMIN_CREDENTIALS = ("admin credentials (the password, the setup code, the admin token, the "
                     "admin cookie)")


def https_only(what: str = ADMIN_CREDENTIALS) -> ForbiddenError:
    """The refusal of credentials over plain HTTP, pointing to HTTPS."""
    url = https_url(_this_path())
    text = f"{what} are accepted only over HTTPS" + (f": {url}" if url else "")
    return ForbiddenError(text, needs="https", location=url)


def admin_session() -> AdminSession | None:
    if exposed():   # a cookie sent in the clear is not honoured
        return None
    return _auth().sessions.get(request.cookies.get(SESSION_COOKIE, ""))


def retry_later(wait_s: float, what: str) -> RateLimitedError:
    seconds = max(1, int(wait_s + 0.999))
    return RateLimitedError(f"too many wrong {what}: try again in {seconds} s",
                            retry_after_s=seconds)


def _check_bearer(given: str, *, pin_too: bool) -> None:
    """A presented bearer credential: the admin token (or, for listening, the
    PIN). Wrong ones count as failed guesses for the client's address."""
    auth = _auth()
    address = client_address()
    # a bearer may be the PIN: its guesses share the PIN's budget; a long
    # token has none (see UNGUESSABLE_TOKEN_CHARS)
    secret = "PIN" if pin_too and auth.listen_pin else "admin token"
    budget = auth.guessable(given) if secret == "PIN" else auth.token_guessable
    wait = auth.throttle.acquire(address, secret, budget=budget)
    if wait:
        raise retry_later(wait, "credentials")
    token = auth.token_ok(given)
    ok = token or (pin_too and auth.listen_secret_ok(given))
    auth.throttle.release(address, ok, secret, budget=budget)
    if token and exposed():
        raise https_only()
    if ok:
        g.appliance_bearer_checked = True
        return
    # which credential would do (docs/API.md): a listening client asks for the PIN
    raise UnauthorizedError("the bearer credential is wrong",
                            realm="listen" if pin_too else "appliance",
                            needs="pin" if pin_too else "admin")


def check_admin_listening(what: str) -> None:
    """Listening to what no channel publishes (a source, a route) is the
    admin's right: the admin session, or the admin token as a bearer
    (checked, and throttled, here when the PIN check did not already)."""
    if admin_session() is not None:
        return
    given = bearer()
    if given is not None:
        if not g.get("appliance_bearer_checked"):
            _check_bearer(given, pin_too=False)   # raises when wrong
            return
        if _auth().token_ok(given):
            return
    raise ForbiddenError(f"only the admin may listen to {what} on its own: a channel "
                         "publishes it, or the admin marks the source public", needs="admin")


def _check_listening() -> None:
    auth = _auth()
    given = bearer()
    if given is not None and exposed() and auth.token_ok(given):
        raise https_only()   # the admin token in the clear, needed or not
    if not auth.listen_pin or request.method == "OPTIONS":  # preflights carry no credentials
        return
    if given is not None:
        _check_bearer(given, pin_too=True)
        return
    if auth.listen_proof_ok(request.cookies.get(LISTEN_COOKIE, "")) or admin_session() is not None:
        return
    raise UnauthorizedError("this appliance needs the venue PIN to listen", realm="listen",
                            needs="pin")


def _check_admin() -> None:
    if not same_origin():
        raise ForbiddenError("admin requests are accepted only from the appliance's own pages")
    given = bearer()
    if given is not None:
        _check_bearer(given, pin_too=False)
        return
    session = admin_session()
    if session is None:
        raise UnauthorizedError("log in as admin first", realm="appliance", needs="admin")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), session.csrf.encode()):
            raise ForbiddenError(f"missing or wrong {CSRF_HEADER} header")


async def check_request() -> Response | None:
    """The one before_request hook: classify, then check (a refusal is
    raised, and answered from the error table; a redirect is returned)."""
    rule = request.url_rule.rule if request.url_rule is not None else None
    role = role_of(request.endpoint, rule)
    g.appliance_role = role
    if exposed():
        if request.endpoint in HTTPS_PAGES:
            url = https_url(_this_path())
            if url:
                return Response("", status=302, headers={"Location": url,
                                                         "Cache-Control": "no-store"})
        if role in (ADMIN, SCRAPE) or request.blueprint == "login":
            raise https_only()
        if role == PUBLISHING:
            raise https_only("publish tokens")
    if role == PUBLISHING:
        return None   # the view checks the source's token
    if role == LISTENING:
        _check_listening()
    elif role == SCRAPE and _auth().scrape_token_ok(bearer() or ""):
        return None
    elif role in (ADMIN, SCRAPE):
        _check_admin()
    elif request.path.startswith("/api/") and not same_origin():
        # the login endpoints: no logging in (or out) from another site
        raise ForbiddenError("requests are accepted only from the appliance's own pages")
    return None


async def cors(response: Response) -> Response:
    """after_request: CORS for listening only (any origin may listen)."""
    if getattr(g, "appliance_role", None) != LISTENING:
        return response
    origin = current_app.appliance_config.server.cors_origin
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = (
        "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After")
    if origin != "*":
        response.headers["Vary"] = "Origin"
    if request.method == "OPTIONS" and "Access-Control-Allow-Methods" not in response.headers:
        # Quart's automatic OPTIONS (candidates): make it a CORS preflight
        response.headers["Access-Control-Allow-Methods"] = response.headers.get(
            "Allow", "GET, POST, PATCH, DELETE, OPTIONS")
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
        response.headers["Access-Control-Max-Age"] = "600"
    return response
