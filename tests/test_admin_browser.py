"""The admin page (admin.html) driven in real headless Chromium against a real oxsync.

Every test fails on a console error, an uncaught page error or a Content-Security-Policy
violation. The only console errors tolerated are Chromium's own "Failed to load resource"
lines for admin API answers a test provokes on purpose (a 401 from /admin/api/me before
login, a wrong password, a refused action), each declared with `ui.allow(status, path)`.

Screenshots of every tab at 1280x800 and 390x844 land in test-artifacts/screenshots/.
Run just these: python3 -m pytest -m browser
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from html.parser import HTMLParser
from urllib.parse import quote, urlsplit

import pytest

from conftest import ROOT, TEST_KEY

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the browser fixture fails with a clear message
    sync_playwright = None

pytestmark = pytest.mark.browser
if sync_playwright is not None:
    expect.set_options(timeout=10_000)  # two cores shared by Chromium and the server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"
ADMIN_ENV = {"ADMIN_PASSWORD": PASSWORD, "ADMIN_JWT_SECRET": "x" * 40}
SHOTS = ROOT / "test-artifacts" / "screenshots"
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}
TABS = ["overview", "tokens", "namespaces", "conflicts", "users"]
NS = "team/default"
MANIFEST_TYPE = "application/vnd.oxideterm.cloud-sync.manifest+json"


# -- sync API helpers (plain http.client, as a device would call it) ---------------------

def sync(port: int, method: str, namespace: str, rest: str, token: str,
         body: bytes | None = None, headers: dict | None = None):
    """One sync call; the namespace is one segment, encoded like encodeURIComponent."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, f"/v1/namespaces/{quote(namespace, safe='')}/{rest}",
                           body=body, headers={"Authorization": f"Bearer {token}",
                                               **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        return response.status, data, response.headers
    finally:
        connection.close()


def error_code(data: bytes) -> str | None:
    try:
        return json.loads(data)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def put_blob(port, namespace, token, data=b"snapshot-1", revision="r1", first=True):
    headers = {"X-OxideTerm-Revision": revision, "X-OxideTerm-Device-Id": "laptop-1",
               "Content-Type": "application/vnd.oxideterm.oxide"}
    if first:
        headers["If-None-Match"] = "*"
    return sync(port, "PUT", namespace, "blob", token, data, headers)


def put_manifest(port, namespace, token, revision, connections, device="laptop-1"):
    """A structured-v2 upload: the connections object first, then the manifest."""
    path = f"structured/connections/{revision}.json"
    document = json.dumps({"kind": "connections", "records": [{"id": i} for i in
                                                              range(connections)]}).encode()
    status, body, _ = sync(port, "PUT", namespace, "objects/" + "/".join(
        quote(part, safe="") for part in path.split("/")), token, document,
        {"Content-Type": "application/json"})
    assert status in (200, 201), (status, body)
    manifest = {"format": "structured-v2", "revision": revision, "deviceId": device,
                "contentType": MANIFEST_TYPE, "scope": {"pluginIds": None},
                "sections": {"connections": {"revision": revision, "path": path,
                                             "recordCount": connections,
                                             "contentType": "application/json"}},
                "sectionRevisions": {"connections": revision, "quickCommands": None}}
    status, body, _ = sync(port, "PUT", namespace, "metadata", token,
                           json.dumps(manifest).encode(), {"Content-Type": "application/json"})
    assert status == 200, (status, body)
    return path


def metadata(port, namespace, token) -> dict:
    status, body, _ = sync(port, "GET", namespace, "metadata", token)
    assert status == 200, (status, body)
    return json.loads(body)


# -- the browser -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); never downloaded")
    if sync_playwright is None:
        pytest.fail("Playwright for Python is missing: pip install -r requirements-dev.txt "
                    "(it drives Debian's Chromium; never run `playwright install`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Runs before the page's own script, outside its CSP: reports violations to the console
# with a marker, in case Chromium's own "Refused to ..." line is ever not surfaced.
REPORT_CSP = """
document.addEventListener('securitypolicyviolation', (event) => {
  console.error('CSP-VIOLATION ' + event.violatedDirective + ' blocked=' + event.blockedURI +
                ' sample=' + event.sample);
});
"""
LOAD_FAILURE = re.compile(r"^Failed to load resource: the server responded with a status of "
                          r"(\d{3})")


class UI:
    """One browser context on one server, with the page's console under watch."""

    def __init__(self, browser, server, size=WIDTHS["desktop"], base_url=None):
        self.server = server
        self.base_url = base_url or f"http://127.0.0.1:{server.port}"
        self.context = browser.new_context(viewport={"width": size[0], "height": size[1]})
        self.context.add_init_script(REPORT_CSP)
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.problems: list[str] = []
        self.allowed: list[tuple[int, str]] = [(401, "/admin/api/me")]
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _console(self, message):
        if message.type not in ("error", "assert") and "CSP" not in message.text \
                and "Content Security Policy" not in message.text:
            return
        failure = LOAD_FAILURE.match(message.text)
        if failure:
            path = urlsplit(message.location.get("url", "")).path
            if any(int(failure.group(1)) == status and path.endswith(suffix)
                   for status, suffix in self.allowed):
                return
        self.problems.append(f"console {message.type}: {message.text} at {message.location}")

    def allow(self, status: int, path_suffix: str) -> None:
        """Tolerate Chromium's console line for one deliberately provoked API answer."""
        self.allowed.append((status, path_suffix))

    def assert_clean(self) -> None:
        problems, self.problems = self.problems, []
        assert not problems, "\n".join(problems)

    def close(self) -> None:
        self.context.close()

    # -- navigation ----------------------------------------------------------------

    def open(self, path="/admin"):
        self.page.goto(self.base_url + path)
        expect(self.page.locator("#login-view, #app-view").locator("visible=true")).to_have_count(1)
        return self

    def login(self, username="admin", password=PASSWORD):
        page = self.page
        expect(page.locator("#login-view")).to_be_visible()
        page.fill("#login-username", username)
        page.fill("#login-password", password)
        page.click("#login-submit")
        expect(page.locator("#app-view")).to_be_visible()
        expect(page.locator("#session-user")).to_have_text(username)
        return self

    def tab(self, name: str):
        self.page.click(f"#tab-{name}")
        expect(self.page.locator(f"#panel-{name}")).to_be_visible()
        # every tab fills its table (or the overview its cards) once loaded
        target = "#overview-stats .stat" if name == "overview" else f"#{name}-table table"
        expect(self.page.locator(target).first).to_be_attached()
        return self

    def row(self, table: str, **attribute):
        (name, value), = attribute.items()
        return self.page.locator(f"#{table}-table tbody tr[data-{name}='{value}']")

    def confirm(self, *expected: str, accept=True) -> str:
        """Answers the page's own confirmation dialog; checks what it names."""
        dialog = self.page.locator("#confirm-dialog")
        expect(dialog).to_be_visible()
        text = self.page.locator("#confirm-text").inner_text()
        for part in expected:
            assert part in text, f"{part!r} not in confirmation {text!r}"
        self.page.click("#confirm-ok" if accept else "#confirm-cancel")
        expect(dialog).to_be_hidden()
        return text

    def secret(self) -> str:
        panel = self.page.locator("#secret-panel")
        expect(panel).to_be_visible()
        expect(self.page.locator("#secret-value")).to_have_text(re.compile(r"^oxs_\S+$"))
        return self.page.locator("#secret-value").inner_text().strip()

    def api(self, method: str, path: str, data=None):
        """The admin API with this browser's session (for checking what the page shows)."""
        csrf = [c["value"] for c in self.context.cookies() if c["name"] == "oxsync_csrf"]
        headers = {"X-CSRF-Token": csrf[0]} if csrf else {}
        response = self.context.request.fetch(self.base_url + "/admin/api" + path,
                                              method=method, data=data, headers=headers)
        return response.status, response.json()


@pytest.fixture
def ui(browser, make_server):
    views: list[UI] = []

    def make(env=ADMIN_ENV, size=WIDTHS["desktop"], server=None):
        view = UI(browser, server or make_server(env=env), size)
        views.append(view)
        return view

    yield make
    for view in views:
        view.close()
    for view in views:
        view.assert_clean()


# -- the file itself ----------------------------------------------------------------------

class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []
        self.inline: dict[str, list[str]] = {"script": [], "style": []}
        self._open = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag in self.inline:
            self._open = tag

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None


def test_page_is_self_contained_and_served_with_matching_csp(make_server):
    server = make_server(env=ADMIN_ENV)
    answer = server.request("GET", "/admin")
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"].startswith("text/html")
    html = answer.body.decode()
    assert answer.body == (ROOT / "admin.html").read_bytes()

    parser = PageParser()
    parser.feed(html)
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    styles = [attrs for tag, attrs in parser.tags if tag == "style"]
    assert scripts == [[]] and styles == [[]], "exactly one <script> and one <style>, no attributes"
    for tag, attrs in parser.tags:
        for name, value in attrs:
            assert not name.startswith("on"), f"inline handler {name} on <{tag}>"
            assert name != "style", f"style attribute on <{tag}>"
            assert "javascript:" not in (value or "").lower(), f"javascript: URL on <{tag}>"
            if name in ("src", "href", "action", "srcset", "poster", "data"):
                assert (value or "").startswith(("data:", "#")), \
                    f"<{tag} {name}={value!r}> would load something"
    stylesheet = html.split("<style>")[1].split("</style>")[0]
    assert not re.search(r"https?://|url\(|@import", stylesheet), \
        "the stylesheet must not load anything"
    assert "eval(" not in html and "new Function" not in html and "innerHTML" not in html

    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)

    def sha(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    policy = {part.strip().split(" ", 1)[0]: part.strip().split(" ", 1)[1:]
              for part in answer.headers["Content-Security-Policy"].split(";")}
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == [sha(script)]
    assert policy["style-src"] == [sha(style)]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]


def test_csp_violations_are_caught(ui):
    """The console watch itself: a page that breaks its CSP must fail a test."""
    view = ui().open()
    view.page.evaluate("() => document.body.setAttribute('style', 'color: red')")
    view.page.wait_for_timeout(200)
    assert any("CSP" in problem or "Content Security Policy" in problem
               for problem in view.problems), view.problems
    view.problems.clear()


# -- session ------------------------------------------------------------------------------

def test_login_errors_then_login_and_logout(ui):
    view = ui().open()
    page = view.page
    expect(page.locator("#login-username")).to_have_value("admin")
    view.allow(401, "/admin/api/login")
    page.fill("#login-password", "not the password")
    page.click("#login-submit")
    error = page.locator("#login-form #login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("wrong username or password", ignore_case=True)
    expect(page.locator("#app-view")).to_be_hidden()

    view.login()
    expect(page.locator("#login-view")).to_be_hidden()
    expect(page.locator("#session")).to_contain_text("admin")
    expect(page.locator("#change-password-button")).to_be_visible()
    for name in TABS:
        expect(page.locator(f"#tab-{name}")).to_be_visible()

    page.reload()  # the session survives a reload (decided by GET /admin/api/me)
    expect(page.locator("#app-view")).to_be_visible()

    page.click("#logout-button")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#app-view")).to_be_hidden()
    page.reload()
    expect(page.locator("#login-view")).to_be_visible()


def test_lockout_shows_retry_after(ui):
    view = ui(env={**ADMIN_ENV, "MAX_LOGIN_FAILURES": "2", "LOGIN_LOCKOUT_SECONDS": "600"}).open()
    page = view.page
    view.allow(401, "/admin/api/login")
    view.allow(429, "/admin/api/login")
    for _ in range(3):
        page.fill("#login-password", "not the password")
        page.click("#login-submit")
        expect(page.locator("#login-submit")).to_be_enabled()
    error = page.locator("#login-form #login-error")
    expect(error).to_contain_text("too many failed logins", ignore_case=True)
    expect(error).to_contain_text(re.compile(r"locked for (59\d|600) seconds"))


def test_ended_session_returns_to_login(ui):
    view = ui().open().login()
    view.tab("tokens")
    view.context.clear_cookies()
    view.allow(401, "/admin/api/tokens")
    view.page.click("#tokens-refresh")
    expect(view.page.locator("#login-view")).to_be_visible()
    expect(view.page.locator("#login-view")).to_contain_text("Your session ended; log in again")
    expect(view.page.locator("#app-view")).to_be_hidden()
    view.login()


def change_own_password(view, new_password="a brand new password"):
    page = view.page
    page.click("#change-password-button")
    expect(page.locator("#password-dialog")).to_be_visible()
    page.fill("#password-current", PASSWORD)
    page.fill("#password-new", new_password)
    page.fill("#password-repeat", new_password)
    page.click("#password-submit")
    expect(page.locator("#password-dialog")).to_be_hidden()


def test_change_password(ui):
    view = ui().open().login()
    page = view.page
    page.click("#change-password-button")
    dialog = page.locator("#password-dialog")
    expect(dialog).to_be_visible()
    page.fill("#password-current", "not the password")
    page.fill("#password-new", "short")
    page.fill("#password-repeat", "short")
    page.click("#password-submit")
    expect(page.locator("#password-error")).to_contain_text("at least 8")
    page.fill("#password-new", "a brand new password")
    page.click("#password-submit")
    expect(page.locator("#password-error")).to_contain_text("differ")

    page.fill("#password-repeat", "a brand new password")
    view.allow(403, "/admin/api/me/password")
    page.click("#password-submit")
    expect(page.locator("#password-dialog #password-error")).to_contain_text(
        "current password is wrong", ignore_case=True)
    expect(page.locator("#app-view")).to_be_visible()
    page.click("#password-cancel")
    expect(dialog).to_be_hidden()

    view.allow(401, "/admin/api/me")  # the page asks whether its session survived
    change_own_password(view)
    expect(page.get_by_text("password was changed")).to_be_visible()
    if page.locator("#app-view").is_visible():
        page.click("#logout-button")
    view.allow(401, "/admin/api/login")
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("wrong username or password",
                                                         ignore_case=True)
    view.login(password="a brand new password")


def test_change_own_password_keeps_the_session(ui):
    view = ui().open().login()
    view.allow(401, "/admin/api/me")
    view.allow(401, "/admin/api/users")
    change_own_password(view)
    expect(view.page.locator("#app-notice")).to_contain_text("password was changed",
                                                              timeout=2000)
    view.page.click("#tab-users")
    expect(view.row("users", username="admin")).to_be_visible(timeout=2000)


# -- the flow: namespace, token, sync, rotate, delete, restore ---------------------

def test_token_lifecycle_against_the_sync_api(ui):
    view = ui().open().login()
    page, port = view.page, view.server.port

    view.tab("namespaces")
    page.fill("#namespace-name", NS)
    page.click("#namespace-create")
    expect(view.row("namespaces", namespace=NS)).to_contain_text("active")

    view.tab("tokens")
    expect(page.locator("#token-pattern-hint")).to_contain_text("team/*")
    page.fill("#token-name", "laptop")
    page.fill("#token-pattern", NS)
    page.click("#token-create")
    first = view.secret()
    panel = page.locator("#secret-panel")
    expect(panel).to_contain_text("will not be shown again")
    expect(page.locator("#secret-endpoint")).to_have_text(view.base_url)
    expect(page.locator("#secret-namespace")).to_have_text(NS)
    expect(panel).to_contain_text("Cloud Sync")
    row = page.locator("#tokens-table tbody tr", has_text="laptop")
    expect(row).to_contain_text(NS)
    expect(row).to_contain_text("read, write")

    # the page's secret works against the sync API
    status, body, _ = put_blob(port, NS, first)
    assert status == 200, body
    status, body, _ = sync(port, "GET", NS, "blob", first)
    assert (status, body) == (200, b"snapshot-1")

    page.click("#secret-done")
    expect(panel).to_be_hidden()
    assert first not in page.content(), "Done must remove the secret from the page"

    # usage is written in batches (every few seconds): refresh until it shows
    uses = row.locator("td[data-label='Uses']")
    deadline = time.monotonic() + 10
    while uses.inner_text() != "2" and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        page.click("#tokens-refresh")
    expect(uses).to_have_text("2")
    expect(row.locator("td[data-label='Last namespace']")).to_have_text(NS)
    expect(row.locator("td[data-label='Last IP']")).to_have_text("127.0.0.1")

    # rotate through the confirmation dialog: the old secret dies, the new one works
    row.locator("button[data-action='rotate']").click()
    view.confirm("laptop", "stops working")
    second = view.secret()
    assert second != first
    assert sync(port, "GET", NS, "blob", first)[0] == 401
    status, body, _ = sync(port, "GET", NS, "blob", second)
    assert (status, body) == (200, b"snapshot-1")

    # disable and enable
    row.locator("button[data-action='disable']").click()
    expect(row).to_contain_text("disabled")
    assert sync(port, "GET", NS, "blob", second)[0] == 401
    row.locator("button[data-action='enable']").click()
    expect(row.locator("button[data-action='disable']")).to_be_visible()
    assert sync(port, "GET", NS, "blob", second)[0] == 200

    # soft delete: the contract's 410 namespace_deleted; restore: 200 again
    view.tab("namespaces")
    ns_row = view.row("namespaces", namespace=NS)
    ns_row.locator("button[data-action='delete']").click()
    view.confirm(f"Delete namespace {NS}", "until it is restored")
    expect(ns_row).to_contain_text("deleted")
    status, body, _ = sync(port, "GET", NS, "blob", second)
    assert (status, error_code(body)) == (410, "namespace_deleted"), body
    ns_row.locator("button[data-action='restore']").click()
    expect(ns_row).to_contain_text("active")
    status, body, _ = sync(port, "GET", NS, "blob", second)
    assert (status, body) == (200, b"snapshot-1")

    # delete the token: gone from the table, 401 for the device
    view.tab("tokens")
    row.locator("button[data-action='delete']").click()
    view.confirm("Delete token", "laptop", "cannot be undone")
    expect(row).to_have_count(0)
    assert sync(port, "GET", NS, "blob", second)[0] == 401


def test_token_form_pattern_namespace_hint_and_errors(ui):
    view = ui().open().login().tab("tokens")
    page = view.page
    page.fill("#token-name", "team")
    page.fill("#token-pattern", "team/*")
    page.uncheck("#token-read")
    page.uncheck("#token-write")
    page.click("#token-create")
    expect(page.locator("#token-form-error")).to_contain_text("at least one permission")

    page.check("#token-read")
    page.fill("#token-pattern", "team/**")
    view.allow(400, "/admin/api/tokens")
    page.click("#token-create")
    expect(page.locator("#token-form #token-form-error")).to_contain_text("pattern",
                                                                         ignore_case=True)

    page.fill("#token-pattern", "team/*")
    page.fill("#token-expires", "2031-05-06T07:08")
    page.click("#token-create")
    secret = view.secret()
    expect(page.locator("#secret-namespace")).to_contain_text(
        "a namespace matching team/*, e.g. team/default")
    expected_expiry = page.evaluate("() => new Date('2031-05-06T07:08').toISOString()")
    status, data = view.api("GET", "/tokens")
    token = next(t for t in data["tokens"] if t["name"] == "team")
    assert token["permissions"] == ["read"]
    assert token["namespacePattern"] == "team/*"
    assert token["expiresAt"][:19] == expected_expiry[:19]
    row = page.locator("#tokens-table tbody tr", has_text="team/*")
    expect(row.locator("td[data-label='Expires']")).to_contain_text("2031-05-06 07:08")
    # read-only: reads pass the pattern, writes are refused
    assert sync(view.server.port, "GET", "team/x", "metadata", secret)[0] == 200
    assert put_blob(view.server.port, "team/x", secret)[0] == 403

    # the Copy button: the clipboard when allowed, else the secret gets selected
    view.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                   origin=view.base_url)
    page.click("#secret-copy")
    expect(page.locator("#secret-copy-status")).not_to_be_empty()
    copied = page.evaluate("() => navigator.clipboard.readText().catch(() => null)")
    selected = page.evaluate("() => String(window.getSelection())")
    assert secret in (copied, selected)


def test_api_values_are_shown_as_text(ui):
    """Names and device ids come from users and devices: never parsed as HTML."""
    view = ui()
    token = view.server.create_token(name='<img src=x onerror="console.error(1)">')
    status, body, _ = sync(view.server.port, "PUT", NS, "blob", token, b"x", {
        "X-OxideTerm-Revision": "<b>r1</b>", "X-OxideTerm-Device-Id": "<script>x</script>",
        "If-None-Match": "*"})
    assert status == 200, body
    view.open().login().tab("tokens")
    page = view.page
    expect(page.locator("#tokens-table")).to_contain_text('<img src=x onerror="console.error(1)">')
    view.tab("namespaces")
    row = view.row("namespaces", namespace=NS)
    expect(row).to_contain_text("<script>x</script>")
    expect(row).to_contain_text("<b>r1</b>")
    assert page.locator("#app-view img, #app-view b, #app-view script").count() == 0


# -- namespaces: history and rollback, purge, cleanup ---------------------------------------

def test_history_timeline_and_rollback(ui):
    view = ui()
    port = view.server.port
    token = view.server.create_token()
    put_manifest(port, NS, token, "rev-1", connections=42)
    time.sleep(0.05)
    put_manifest(port, NS, token, "rev-2", connections=0, device="phone-2")
    assert metadata(port, NS, token)["revision"] == "rev-2"

    view.open().login().tab("namespaces")
    page = view.page
    view.row("namespaces", namespace=NS).locator("button[data-action='history']").click()
    panel = page.locator("#history-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#history-title")).to_contain_text(NS)
    versions = page.locator("#history-list li.version")
    expect(versions).to_have_count(2)
    newest, oldest = versions.nth(0), versions.nth(1)
    expect(newest).to_contain_text("#2")
    expect(newest).to_contain_text("rev-2")
    expect(newest).to_contain_text("phone-2")
    expect(newest).to_contain_text("current")
    expect(newest.locator("button[data-action='rollback']")).to_have_count(0)
    expect(oldest).to_contain_text("#1")
    expect(oldest).to_contain_text("rev-1")
    expect(oldest).not_to_contain_text("current")

    # what the API calls suspicious (42 connections -> 0) is flagged visibly
    status, history = view.api("GET", f"/namespaces/{quote(NS, safe='')}/history")
    assert status == 200, history
    for index, version in enumerate(history["versions"]):
        flag = versions.nth(index).locator(".badge", has_text="suspicious")
        expect(flag).to_have_count(1 if version.get("suspicious") else 0)
        if version.get("summary"):
            expect(versions.nth(index)).to_contain_text(version["summary"])

    oldest.locator("button[data-action='rollback']").click()
    view.confirm(f"Roll back {NS} to version #1", "revision rev-1")
    expect(page.locator("#history-notice")).to_contain_text("version #1")
    expect(versions).to_have_count(3)
    expect(versions.nth(0)).to_contain_text("rollback of #1")
    expect(versions.nth(0)).to_contain_text("current")
    assert metadata(port, NS, token)["revision"] == "rev-1"

    # a cancelled confirmation changes nothing
    versions.nth(1).locator("button[data-action='rollback']").click()
    view.confirm("version #2", accept=False)
    expect(versions).to_have_count(3)
    assert metadata(port, NS, token)["revision"] == "rev-1"


def test_kept_snapshot_can_be_restored(ui):
    """Legacy blob sync: the history lists kept snapshots (blobVersions) with a restore."""
    view = ui()
    port = view.server.port
    token = view.server.create_token()
    status, body, _ = put_blob(port, NS, token, b"first snapshot", "r1")
    assert status == 200, body
    status, body, _ = sync(port, "PUT", NS, "blob", token, b"second snapshot", {
        "X-OxideTerm-Revision": "r2", "If-Match": json.loads(body)["etag"],
        "Content-Type": "application/vnd.oxideterm.oxide"})
    assert status == 200, body

    view.open().login().tab("namespaces")
    view.row("namespaces", namespace=NS).locator("button[data-action='history']").click()
    kept = view.page.locator("#blob-history-list li.version")
    expect(kept).to_have_count(1)
    expect(kept.first).to_contain_text("r1")
    kept.first.locator("button[data-action='rollback-blob']").click()
    view.confirm(f"Roll back {NS} to snapshot #", "revision r1")
    expect(view.page.locator("#history-notice")).to_contain_text("Rolled back")
    status, body, _ = sync(port, "GET", NS, "blob", token)
    assert (status, body) == (200, b"first snapshot")
    assert metadata(port, NS, token)["revision"] == "r1"


def test_refused_rollback_shows_the_server_message(ui):
    view = ui()
    port = view.server.port
    token = view.server.create_token()
    lost = put_manifest(port, NS, token, "rev-1", connections=3)
    put_manifest(port, NS, token, "rev-2", connections=4)
    with sqlite3.connect(view.server.db_path) as db:  # the object version #1 needs is gone
        db.execute("DELETE FROM objects WHERE namespace = ? AND path = ?", (NS, lost))

    view.open().login().tab("namespaces")
    view.row("namespaces", namespace=NS).locator("button[data-action='history']").click()
    oldest = view.page.locator("#history-list li.version").nth(1)
    expect(oldest).to_contain_text("1 object missing")
    view.allow(409, "/rollback")
    oldest.locator("button[data-action='rollback']").click()
    error = view.page.locator("#history-panel #history-error")
    expect(error).to_be_visible()
    status, answer = view.api("POST", f"/namespaces/{quote(NS, safe='')}/rollback", {"seq": 1})
    assert status == 409
    expect(error).to_contain_text(answer["error"]["message"][1:])
    assert metadata(port, NS, token)["revision"] == "rev-2"


def test_purge_names_what_it_destroys_and_cleanup_runs(ui):
    view = ui()
    port = view.server.port
    token = view.server.create_token()
    put_manifest(port, "old/box", token, "rev-1", connections=5)
    view.open().login().tab("namespaces")
    page = view.page
    row = view.row("namespaces", namespace="old/box")
    expect(row.locator("button[data-action='purge']")).to_have_count(0)
    row.locator("button[data-action='delete']").click()
    view.confirm("Delete namespace old/box")
    expect(row.locator("button[data-action='purge']")).to_be_visible()
    row.locator("button[data-action='purge']").click()
    view.confirm("Purge namespace old/box and its 1 object (", "cannot be undone", accept=False)
    expect(row).to_be_visible()
    row.locator("button[data-action='purge']").click()
    view.confirm("Purge namespace old/box")
    expect(row).to_have_count(0)
    expect(page.locator("#namespaces-notice")).to_contain_text("purged")

    view.allow(409, "/admin/api/namespaces")
    page.fill("#namespace-name", NS)
    page.click("#namespace-create")
    expect(view.row("namespaces", namespace=NS)).to_be_visible()
    page.fill("#namespace-name", NS)
    page.click("#namespace-create")
    expect(page.locator("#namespace-form #namespace-form-error")).to_contain_text("exists")

    page.click("#gc-button")
    expect(page.locator("#gc-result")).to_contain_text(re.compile(r"\d+ objects? removed"))
    expect(page.locator("#gc-result")).to_contain_text("reclaimed")


# -- conflicts, users, overview -------------------------------------------------------------

def test_conflicts_tab_lists_412s(ui):
    view = ui()
    port = view.server.port
    token = view.server.create_token()
    assert put_blob(port, NS, token)[0] == 200
    status, body, _ = put_blob(port, NS, token, b"other", "r2")  # If-None-Match: * again
    assert status == 412, body
    remote = json.loads(body)["error"]["remoteEtag"]
    view.open().login().tab("conflicts")
    rows = view.page.locator("#conflicts-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(NS)
    expect(rows.first).to_contain_text("laptop-1")
    expect(rows.first.locator("td[data-label='Remote etag']")).to_contain_text(remote)
    expect(rows.first.locator("td[data-label='Requested etag']")).to_contain_text("*")


def test_users_tab(ui):
    view = ui().open().login().tab("users")
    page = view.page
    page.fill("#user-name", "ops")
    page.fill("#user-password", "short")
    page.click("#user-create")
    expect(page.locator("#user-form-error")).to_contain_text("at least 8")
    page.fill("#user-password", "ops password 1")
    page.click("#user-create")
    ops = view.row("users", username="ops")
    expect(ops).to_contain_text("enabled")

    ops.locator("button[data-action='reset-password']").click()
    expect(page.locator("#password-dialog")).to_be_visible()
    expect(page.locator("#password-current-field")).to_be_hidden()
    page.fill("#password-new", "ops password 2")
    page.fill("#password-repeat", "ops password 2")
    page.click("#password-submit")
    expect(page.locator("#users-notice")).to_contain_text("reset")

    ops.locator("button[data-action='disable']").click()
    expect(ops).to_contain_text("disabled")
    ops.locator("button[data-action='enable']").click()
    expect(ops.locator("button[data-action='disable']")).to_be_visible()
    ops.locator("button[data-action='delete']").click()
    view.confirm("Delete admin user ops")
    expect(ops).to_have_count(0)

    # the server refuses to remove the last admin, and the page says why
    view.allow(409, "/admin/api/users/admin")
    view.row("users", username="admin").locator("button[data-action='delete']").click()
    view.confirm("Delete admin user admin")
    expect(page.locator("#users-error")).to_contain_text("last enabled admin")
    expect(page.locator("#app-view")).to_be_visible()


def test_overview_counts_and_warnings(ui, tmp_path):
    view = ui()
    token = view.server.create_token()
    assert put_blob(view.server.port, NS, token, b"x" * 3000)[0] == 200
    view.open().login()
    page = view.page
    warnings = page.locator("#overview-warnings")
    expect(warnings).to_contain_text("payloads are stored in plaintext; set ENCRYPTION_KEY")
    expect(warnings).not_to_contain_text("ADMIN_JWT_SECRET")
    expect(warnings).not_to_contain_text("Disk space is low")
    stats = page.locator("#overview-stats")
    expect(stats.locator(".stat", has_text="Namespaces")).to_contain_text("1")
    expect(stats.locator(".stat", has_text="Stored data")).to_contain_text("2.9 KiB")
    expect(page.locator("#overview-endpoint")).to_have_text(view.base_url)

    needed = shutil.disk_usage(tmp_path).free * 4
    other = ui(env={"ADMIN_PASSWORD": PASSWORD, "ENCRYPTION_KEY": TEST_KEY,
                    "MIN_FREE_DISK_BYTES": str(needed)}).open().login()
    warnings = other.page.locator("#overview-warnings")
    expect(warnings).to_contain_text("sessions end when the server restarts; set ADMIN_JWT_SECRET")
    expect(warnings).to_contain_text("Disk space is low")
    expect(warnings).not_to_contain_text("plaintext")


# -- behind a reverse proxy with a path prefix ------------------------------------------

class PrefixProxy:
    """https://host/sync/... -> oxsync at the root, as nginx's proxy_pass with a path does."""

    def __init__(self, upstream: int, prefix: str = "/sync"):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def forward(self):
                if not self.path.startswith(prefix + "/"):
                    self.send_error(404)
                    return
                outer.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length")}
                connection = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                connection.request(self.command, self.path[len(prefix):], body=body,
                                   headers=headers)
                response = connection.getresponse()
                data = response.read()
                connection.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "content-length", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        self.paths: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_works_behind_a_path_prefix(browser, make_server):
    server = make_server(env=ADMIN_ENV)
    proxy = PrefixProxy(server.port)
    view = UI(browser, server, base_url=f"http://127.0.0.1:{proxy.port}/sync")
    try:
        view.open().login().tab("tokens")
        view.page.fill("#token-name", "prefixed")
        view.page.fill("#token-pattern", "*")
        view.page.click("#token-create")
        secret = view.secret()
        expect(view.page.locator("#secret-endpoint")).to_have_text(
            f"http://127.0.0.1:{proxy.port}/sync")
        expect(view.page.locator("#secret-namespace")).to_contain_text("a namespace matching *")
        view.tab("namespaces")
        assert all(path.startswith("/sync/admin") for path in proxy.paths), proxy.paths
        assert "/sync/admin/api/tokens" in proxy.paths
        assert sync(server.port, "GET", NS, "metadata", secret)[0] == 200
        view.page.click("#logout-button")
        expect(view.page.locator("#login-view")).to_be_visible()
    finally:
        view.close()
        proxy.close()
    view.assert_clean()


# -- layout: every tab at desktop and phone width -----------------------------------------

def seed(server) -> None:
    """Enough data that every table has rows worth looking at."""
    port = server.port
    token = server.create_token(name="seed")
    put_manifest(port, NS, token, "fnv1a-9f86d0a1", connections=42)
    put_manifest(port, NS, token, "fnv1a-3b2c77e0", connections=0, device="phone-7f3e")
    put_blob(port, "home/laptop-with-a-rather-long-namespace-name", token, os.urandom(180_000))
    put_blob(port, "home/laptop-with-a-rather-long-namespace-name", token, b"late", "r9")  # 412
    server.create_token(namespace="team/*", permissions="read", name="team readers",
                        expires_at="2031-01-01T00:00:00Z")
    server.create_token(namespace="ci/builds", name="ci")
    answer = server.request("GET", "/health")
    assert answer.status == 200


LAYOUT_CHECK = """() => {
  const doc = document.documentElement;
  const small = [];
  for (const node of document.querySelectorAll('body *')) {
    if (!node.offsetParent && node.tagName !== 'DIALOG') continue;
    const text = [...node.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim());
    const size = parseFloat(getComputedStyle(node).fontSize);
    if (text && size < 12) small.push(node.tagName + ' ' + size + 'px ' + node.textContent.slice(0, 30));
  }
  const unlabelled = [...document.querySelectorAll('input, select, textarea')]
    .filter((i) => i.type !== 'hidden' && !i.hidden && !i.labels.length && !i.getAttribute('aria-label'))
    .map((i) => i.id || i.name);
  const wide = [...document.querySelectorAll('body *')].filter((n) => {
    const r = n.getBoundingClientRect();
    return n.offsetParent && r.width && r.right > window.innerWidth + 1 && !n.closest('.table-wrap');
  }).map((n) => n.tagName + '#' + n.id + '.' + n.className);
  return { scrollWidth: doc.scrollWidth, innerWidth: window.innerWidth, small, unlabelled, wide };
}"""


@pytest.mark.parametrize("device", list(WIDTHS))
def test_every_tab_fits_and_is_screenshotted(ui, device):
    view = ui(size=WIDTHS[device])
    seed(view.server)
    SHOTS.mkdir(parents=True, exist_ok=True)
    width, height = WIDTHS[device]
    suffix = f"{width}x{height}"
    page = view.page

    def check(name, full_page=True):
        page.wait_for_timeout(150)  # let fonts and layout settle
        page.screenshot(path=str(SHOTS / f"{name}-{suffix}.png"), full_page=full_page)
        layout = page.evaluate(LAYOUT_CHECK)
        assert layout["scrollWidth"] <= layout["innerWidth"], (name, layout)
        assert not layout["wide"], (name, layout["wide"])
        assert not layout["small"], (name, layout["small"])
        assert not layout["unlabelled"], (name, layout["unlabelled"])

    view.open()
    check("login")
    view.login()
    assert view.api("POST", "/users", {"username": "ops", "password": "ops password"})[0] == 201
    ci = view.server.token_id("ci")
    assert view.api("PATCH", f"/tokens/{ci}", {"enabled": False})[0] == 200
    for name in TABS:
        view.tab(name)
        if name == "overview":
            expect(page.locator("#overview-warnings .banner")).to_have_count(1)
        check(name)

    view.tab("namespaces")
    view.row("namespaces", namespace=NS).locator("button[data-action='history']").click()
    expect(page.locator("#history-list li.version")).to_have_count(2)
    check("namespaces-history")
    page.locator("#history-list button[data-action='rollback']").first.click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    check("confirm-dialog", full_page=False)
    page.click("#confirm-cancel")

    view.tab("tokens")
    page.fill("#token-name", "new laptop")
    page.fill("#token-pattern", "team/*")
    page.click("#token-create")
    view.secret()
    check("tokens-secret")
