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

from conftest import (ROOT, TEST_KEY, running_server, seed_devices, seed_namespaces,
                      seed_tokens)

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
TABS = ["overview", "tokens", "namespaces", "devices", "conflicts", "users"]
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


def put_manifest(port, namespace, token, revision, connections, device="laptop-1",
                 revisions: dict | None = None):
    """A structured-v2 upload: the connections object first, then the manifest.
    revisions: more sectionRevisions (appSettings and pluginSettings ones are maps)."""
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
                "sectionRevisions": {"connections": revision, "quickCommands": None,
                                     **(revisions or {})}}
    status, body, _ = sync(port, "PUT", namespace, "metadata", token,
                           json.dumps(manifest).encode(), {"Content-Type": "application/json"})
    assert status == 200, (status, body)
    return path


def arrows(summary: str) -> str:
    """A history summary as the page shows it: "a - -> 1" (older servers) reads "a — → 1"."""
    summary = re.sub(r"(^|\s)-(?=\s+->)", "\\1\u2014", summary)
    return re.sub(r"\s*->\s*", " \u2192 ", summary)


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

    def __init__(self, browser, server, size=WIDTHS["desktop"], base_url=None, **context):
        self.server = server
        self.base_url = base_url or f"http://127.0.0.1:{server.port}"
        self.context = browser.new_context(viewport={"width": size[0], "height": size[1]},
                                           **context)
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

    def confirm(self, *expected: str, accept=True, type_name: str | None = None) -> str:
        """Answers the page's own confirmation dialog; checks what it names. type_name:
        the dialog wants that typed before its button works (purge)."""
        dialog = self.page.locator("#confirm-dialog")
        expect(dialog).to_be_visible()
        text = self.page.locator("#confirm-text").inner_text()
        for part in expected:
            assert part in text, f"{part!r} not in confirmation {text!r}"
        if type_name is not None and accept:
            expect(self.page.locator("#confirm-ok")).to_be_disabled()
            self.page.fill("#confirm-type", type_name)
            expect(self.page.locator("#confirm-ok")).to_be_enabled()
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

    def make(env=ADMIN_ENV, size=WIDTHS["desktop"], server=None, **context):
        view = UI(browser, server or make_server(env=env), size, **context)
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
    expect(error).to_contain_text(re.compile(r"try again in (59\d seconds|600 seconds|10 minutes)"))
    message = error.inner_text()
    assert len(re.findall(r"\d+ (?:seconds?|minutes?|hours?)", message)) == 1, message
    assert message.rstrip().endswith("."), message


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


def test_password_dialog_shows_each_error_at_its_field(ui):
    view = ui().open().login()
    page = view.page
    page.click("#change-password-button")
    dialog = page.locator("#password-dialog")
    expect(dialog).to_be_visible()
    page.fill("#password-current", "not the password")
    page.fill("#password-new", "short")
    page.fill("#password-repeat", "short")
    page.click("#password-submit")
    expect(page.locator("#password-new-error")).to_contain_text("at least 8")
    expect(page.locator("#password-new")).to_have_attribute("aria-invalid", "true")
    page.fill("#password-new", "a brand new password")
    expect(page.locator("#password-new-error")).to_be_hidden()  # editing clears it
    page.click("#password-submit")
    expect(page.locator("#password-repeat-error")).to_contain_text("differ")

    page.fill("#password-repeat", "a brand new password")
    view.allow(403, "/admin/api/me/password")
    page.click("#password-submit")
    expect(page.locator("#password-dialog #password-current-error")).to_contain_text(
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
    expect(page.locator("#token-permissions-error")).to_contain_text("at least one permission")

    page.check("#token-read")
    page.fill("#token-pattern", "team/**")
    page.click("#token-create")
    expect(page.locator("#token-pattern-error")).to_contain_text("one * at most")
    expect(page.locator("#token-form-error")).to_be_hidden()

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
    expect(row.locator("td[data-label='Expires']")).to_contain_text(
        re.compile(r"in \d+ years \(2031-05-06 07:08\)"))
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
    # what changed, in the chips' arrows; the token by its name; the current one marked
    expect(newest.locator(".summary")).to_have_text("Against #1: connections 42 → 0")
    expect(oldest.locator(".summary")).to_contain_text("connections added (42)")
    expect(newest).to_contain_text("connections revision rev-1 → rev-2")
    expect(newest.locator("dd", has_text="test (id ")).to_have_count(1)
    expect(page.locator("#history-list li[aria-current='true']")).to_have_count(1)
    expect(newest).to_have_attribute("aria-current", "true")
    assert "->" not in page.locator("#history-list").inner_text()

    # one version opened in full (GET .../history/{seq}) before rolling back to it
    with page.expect_response(lambda r: r.url.endswith("/history/1") and r.status == 200):
        oldest.locator("button[data-action='inspect']").click()
    detail = oldest.locator("[data-detail='1']")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("The first version kept for this namespace")
    expect(detail.locator("pre")).to_contain_text('"revision": "rev-1"')
    expect(oldest.locator("button[data-action='inspect']")).to_have_attribute("aria-expanded", "true")
    newest.locator("button[data-action='inspect']").click()
    expect(newest.locator("[data-detail='2']")).to_contain_text(
        "Compared with #1, the version before it: connections 42 → 0.")
    newest.locator("button[data-action='inspect']").click()  # and closed again
    expect(newest.locator("[data-detail='2']")).to_be_hidden()

    # what the API calls suspicious (42 connections -> 0) is flagged visibly
    status, history = view.api("GET", f"/namespaces/{quote(NS, safe='')}/history")
    assert status == 200, history
    for index, version in enumerate(history["versions"]):
        flag = versions.nth(index).locator(".badge", has_text="suspicious")
        expect(flag).to_have_count(1 if version.get("suspicious") else 0)
        if version.get("summary"):
            expect(versions.nth(index)).to_contain_text(arrows(version["summary"]))

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


def test_nested_section_revisions_are_shown_key_by_key(ui):
    """appSettings and pluginSettings revisions are maps: the history once printed
    "appSettings revision [object Object] → [object Object]"."""
    view = ui()
    port = view.server.port
    token = view.server.create_token()
    put_manifest(port, NS, token, "rev-1", connections=3, revisions={
        "appSettings": {"general": "g1", "terminal": "t1"},
        "pluginSettings": {"com.example.git": {"ui": "p1", "keys": "k1"}}})
    put_manifest(port, NS, token, "rev-2", connections=3, revisions={
        "appSettings": {"general": "g2", "terminal": "t1", "editor": "e1"},
        "pluginSettings": {"com.example.git": {"ui": "p2", "keys": "k1"}}})
    view.open().login().tab("namespaces")
    view.row("namespaces", namespace=NS).locator("button[data-action='history']").click()
    newest = view.page.locator("#history-list li.version").first
    expect(newest).to_contain_text("#2")
    changes = newest.locator("ul.changes")
    app = changes.locator("> li", has_text="appSettings")
    expect(app.locator(".revision-keys > li")).to_have_text(["editor — → e1", "general g1 → g2"])
    plugin = changes.locator("> li", has_text="pluginSettings")
    expect(plugin.locator(".revision-keys > li")).to_have_text(["com.example.git.ui p1 → p2"])
    expect(changes).to_contain_text("connections revision rev-1 → rev-2")
    assert "terminal" not in newest.inner_text()  # unchanged keys are left out
    history = view.page.locator("#history-panel").inner_text()
    assert "[object" not in history, history


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
    expect(view.page.locator("#blob-history-list li[data-blob-current]")).to_contain_text(
        "current")
    expect(view.page.locator("#blob-history-list li[data-blob-current]")).to_contain_text("r2")
    kept = view.page.locator("#blob-history-list li[data-blob-seq]")
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
    view.confirm("Purge namespace old/box", "1 object (", "cannot be undone", accept=False)
    expect(row).to_be_visible()

    # irreversible: the button stays off until the namespace's name is typed
    row.locator("button[data-action='purge']").click()
    ok = page.locator("#confirm-ok")
    expect(page.locator("#confirm-type")).to_be_focused()
    expect(ok).to_be_disabled()
    page.fill("#confirm-type", "old/bo")
    expect(ok).to_be_disabled()
    page.keyboard.press("Enter")  # Enter does not get around it either
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.fill("#confirm-type", "old/box ")
    expect(ok).to_be_disabled()
    view.confirm("Purge namespace old/box", type_name="old/box")
    expect(row).to_have_count(0)
    expect(page.locator("#namespaces-notice")).to_contain_text("purged")

    view.allow(409, "/admin/api/namespaces")
    page.fill("#namespace-name", NS)
    page.click("#namespace-create")
    expect(view.row("namespaces", namespace=NS)).to_be_visible()
    page.fill("#namespace-name", NS)
    page.click("#namespace-create")  # the server's 409 is said at the field
    expect(page.locator("#namespace-form #namespace-name-error")).to_contain_text("exists")
    expect(page.locator("#namespace-name")).to_have_attribute("aria-invalid", "true")


# -- conflicts, users, overview -------------------------------------------------------------

def test_conflicts_tab_lists_each_412_with_its_remote_etag(ui):
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
    # etags are shortened, whole on hover; "*" is explained as a first upload
    remote_cell = rows.first.locator("td[data-label='Remote etag']")
    expect(remote_cell).to_contain_text(remote[:8])
    expect(remote_cell).not_to_contain_text(remote)
    expect(remote_cell.locator(f"[title='{remote}']")).to_have_count(1)
    requested = rows.first.locator("td[data-label='Requested etag']")
    expect(requested).to_contain_text("*")
    expect(requested).to_contain_text("first upload")
    expect(view.page.locator("#panel-conflicts")).to_contain_text("means a first upload")


FOCUSED = """() => { const a = document.activeElement; const row = a && a.closest('tr');
  return { tag: a ? a.tagName : null, action: a ? a.getAttribute('data-action') : null, id: a ? a.id : null,
           row: row ? Object.fromEntries([...row.attributes].filter((x) => x.name.startsWith('data-'))
                                          .map((x) => [x.name, x.value])) : null }; }"""


def focused(page) -> dict:
    """Where keyboard focus is: the element's tag, data-action and id, and its table row."""
    return page.evaluate(FOCUSED)


def test_users_tab_offers_no_self_lockout_and_manages_other_users(ui):
    view = ui().open().login().tab("users")
    page = view.page
    # your own row: no Disable or Delete (the server refuses both: a lock-out), marked "you"
    me = view.row("users", username="admin")
    expect(me).to_contain_text("(you)")
    expect(me.locator("button[data-action='disable'], button[data-action='delete']")).to_have_count(0)
    expect(me.locator("button[data-action='change-password']")).to_be_visible()
    view.allow(409, "/admin/api/users/admin")
    assert view.api("PATCH", "/users/admin", {"enabled": False})[0] == 409
    assert view.api("DELETE", "/users/admin")[0] == 409
    page.fill("#user-name", "ops")
    page.fill("#user-password", "short")
    page.click("#user-create")
    expect(page.locator("#user-password-error")).to_contain_text("at least 8")
    page.fill("#user-password", "ops password 1")
    page.click("#user-create")
    ops = view.row("users", username="ops")
    expect(ops).to_contain_text("enabled")

    ops.locator("button[data-action='reset-password']").click()
    expect(page.locator("#password-dialog")).to_be_visible()
    expect(page.locator("#password-current-field")).to_be_hidden()
    # a password set here is not undone by ADMIN_PASSWORD at the next restart
    note = page.locator("#password-dialog #password-env-note")
    expect(note).to_contain_text("survives restarts")
    expect(note).to_contain_text("ADMIN_PASSWORD")
    expect(note).to_contain_text("only when its value changes")
    page.fill("#password-new", "ops password 2")
    page.fill("#password-repeat", "ops password 2")
    page.click("#password-submit")
    expect(page.locator("#users-notice")).to_contain_text("reset")

    # after each row action keyboard focus stays on that row (the table is drawn again)
    ops.locator("button[data-action='disable']").click()
    expect(ops).to_contain_text("disabled")
    expect(ops.locator("button[data-action='enable']")).to_be_focused()
    page.keyboard.press("Enter")  # the keyboard user goes on from there
    expect(ops.locator("button[data-action='disable']")).to_be_visible()
    expect(ops.locator("button[data-action='disable']")).to_be_focused()
    ops.locator("button[data-action='delete']").click()
    view.confirm("Delete admin user ops")
    expect(ops).to_have_count(0)
    assert focused(page)["row"] == {"data-username": "admin"}, focused(page)

    # a refused action shows the server's words: "ci" was deleted meanwhile (another tab)
    assert view.api("POST", "/users", {"username": "ci", "password": "ci password 1"})[0] == 201
    page.click("#users-refresh")
    ci = view.row("users", username="ci")
    expect(ci).to_be_visible()
    assert view.api("DELETE", "/users/ci")[0] == 200
    view.allow(404, "/admin/api/users/ci")
    ci.locator("button[data-action='delete']").click()
    view.confirm("Delete admin user ci")
    expect(page.locator("#users-error")).to_contain_text("No admin user named 'ci'.")
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


# -- what an operator can trust: sizes, limits, focus, contrast, times -----------------------

SUM_OF_PARTS = """(row) => ['Snapshot', 'Snapshot history', 'Objects'].map((label) => {
  const node = row.querySelector(`td[data-label='${label}'] [data-bytes]`);
  return node ? Number(node.dataset.bytes) : 0; }).reduce((a, b) => a + b, 0)"""


def test_sizes_add_up_and_a_deleted_namespace_reads_well(ui):
    """Every namespace's parts add up to its total, the Overview's "Stored data" is the sum of
    all, and the delete dialog counts the snapshot and its kept history (never "0 objects")."""
    view = ui(env={**ADMIN_ENV, "OBJECT_RETENTION_SECONDS": "1"}, timezone_id="Asia/Tokyo")
    port = view.server.port
    token = view.server.create_token()
    status, body, _ = put_blob(port, "home/box", token, b"a" * 3000, "r1")
    assert status == 200, body
    status, body, _ = sync(port, "PUT", "home/box", "blob", token, b"b" * 1000, {
        "X-OxideTerm-Revision": "r2", "If-Match": json.loads(body)["etag"],
        "Content-Type": "application/vnd.oxideterm.oxide"})
    assert status == 200, body
    put_manifest(port, NS, token, "rev-1", connections=3)
    stray = sync(port, "PUT", NS, "objects/structured/stray.json", token, b'{"x": 1}',
                 {"Content-Type": "application/json"})  # referenced by no version
    assert stray[0] in (200, 201), stray

    view.open().login()
    page = view.page
    status, stats = view.api("GET", "/stats")
    status, data = view.api("GET", "/namespaces")
    rows = {n["name"]: n for n in data["namespaces"]}
    assert rows["home/box"]["snapshotHistoryCount"] == 1
    assert stats["totalBytes"] == sum(n["totalBytes"] for n in rows.values())
    stored = page.locator("#overview-stats .stat", has_text="Stored data")
    expect(stored.locator("[data-bytes]")).to_have_attribute("data-bytes", str(stats["totalBytes"]))
    expect(stored).to_contain_text("snapshot history")

    view.tab("namespaces")
    expect(page.locator("#namespaces-table th", has_text="Snapshot history")).to_have_count(1)
    for name, n in rows.items():
        row = view.row("namespaces", namespace=name)
        expect(row.locator("td[data-label='Total'] [data-bytes]")).to_have_attribute(
            "data-bytes", str(n["totalBytes"]))
        assert row.evaluate(SUM_OF_PARTS) == n["totalBytes"], name
    box = view.row("namespaces", namespace="home/box")
    expect(box.locator("td[data-label='Snapshot history']")).to_contain_text("1 kept copy")

    # times: relative, with the absolute time and the time zone on hover
    written = box.locator("td[data-label='Last write'] time")
    expect(written).to_have_text(re.compile(r"^(just now|\d+ min ago)$"))
    assert written.get_attribute("datetime") == rows["home/box"]["lastWriteAt"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\+09:00 \(Asia/Tokyo\)",
                        written.get_attribute("title")), written.get_attribute("title")

    box.locator("button[data-action='delete']").click()
    text = view.confirm("Delete namespace home/box", "its snapshot (1000 B)",
                        "1 kept earlier snapshot (2.9 KiB)")
    assert "0 objects" not in text, text
    state = box.locator("td[data-label='State']")
    expect(state).to_contain_text("deleted")
    assert "[object" not in state.inner_text() and "," not in state.inner_text()
    expect(state.locator("time")).to_have_count(1)
    expect(box.locator("button[data-action='restore']")).to_be_focused()  # focus stays
    box.locator("button[data-action='purge']").click()
    text = view.confirm("Purge namespace home/box", "its snapshot", "kept earlier snapshot",
                        accept=False)
    assert "0 objects" not in text, text

    # cleanup says what it removes, and reports what it removed
    hint = page.locator("#gc-hint")
    for words in ("objects that no kept version uses", "retention window",
                  "beyond the newest 32"):
        expect(hint).to_contain_text(words)
    page.wait_for_timeout(1100)  # the stray object is now older than the 1 s window
    page.click("#gc-button")
    result = page.locator("#gc-result")
    expect(result).to_contain_text("1 object removed (8 B reclaimed)")
    expect(result).to_contain_text("0 old history versions removed")


def test_limits_are_said_at_the_field_never_cut(ui):
    """A 200-character namespace is not silently cut to 128; every limit is said at its
    field (aria-invalid, aria-describedby), and nothing is sent."""
    view = ui().open().login()
    page = view.page
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/admin/api/"
            in r.url and not r.url.endswith(("/login", "/gc")) else None)

    def refused(input_id, error_id, *words):
        expect(page.locator(f"#{input_id}")).to_have_attribute("aria-invalid", "true")
        error = page.locator(f"#{error_id}")
        expect(error).to_be_visible()
        for part in words:
            expect(error).to_contain_text(part)
        described = page.locator(f"#{input_id}").get_attribute("aria-describedby").split()
        assert described[0] == error_id, described
        message = error.inner_text().lstrip("⚠ ").strip()
        assert message[0].isupper() and message.endswith("."), message
        expect(page.locator(f"#{input_id}")).to_be_focused()

    view.tab("namespaces")
    long_name = "n" * 200
    page.fill("#namespace-name", long_name)
    assert page.input_value("#namespace-name") == long_name  # nothing cut
    page.click("#namespace-create")
    refused("namespace-name", "namespace-name-error", "128 characters at most", "200")
    expect(page.locator("#namespace-form-error")).to_be_hidden()
    page.fill("#namespace-name", "team/ok")  # typing clears the error
    expect(page.locator("#namespace-name")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#namespace-name-error")).to_be_hidden()

    view.tab("tokens")
    page.fill("#token-name", "t" * 101)
    page.fill("#token-pattern", "team/*")
    page.click("#token-create")
    refused("token-name", "token-name-error", "100 characters at most")
    page.fill("#token-name", "laptop")
    page.fill("#token-pattern", "p" * 129)
    page.click("#token-create")
    refused("token-pattern", "token-pattern-error", "128 characters at most")
    page.fill("#token-pattern", "team/*")
    # an expiry in the past is refused at the field, before anything is sent
    page.fill("#token-expires", "2020-01-01T00:00")
    page.click("#token-create")
    refused("token-expires", "token-expires-error", "already passed")
    expect(page.locator("#secret-panel")).to_be_hidden()

    view.tab("users")
    page.fill("#user-name", "u" * 65)
    page.fill("#user-password", "long enough")
    page.click("#user-create")
    refused("user-name", "user-name-error", "64 characters at most")
    page.fill("#user-name", "ops")
    page.fill("#user-password", "short")
    page.click("#user-create")
    refused("user-password", "user-password-error", "at least 8 characters")
    expect(page.locator("#user-form-error")).to_be_hidden()

    assert posts == [], posts
    assert view.api("GET", "/namespaces")[1]["namespaces"] == []
    assert view.api("GET", "/tokens")[1]["tokens"] == []


def test_tokens_on_a_phone_focus_notice_and_secret(ui):
    """On a 390 px phone: the form comes before the list, the success notice shows in the
    viewport, focus stays where the work is, and the secret leaves with the tab."""
    view = ui(size=WIDTHS["phone"])
    for index in range(6):
        view.server.create_token(name=f"device {index}", namespace=f"team/d{index}")
    view.open().login().tab("tokens")
    page = view.page
    expect(page.locator("#tokens-table tbody tr[data-token-id]")).to_have_count(6)
    form = page.locator("#token-form").bounding_box()
    first_row = page.locator("#tokens-table tbody tr").first.bounding_box()
    assert form["y"] < first_row["y"]
    assert page.evaluate("() => window.scrollY") == 0  # no scrolling past the tokens:
    for selector in ("#token-name", "#token-pattern"):  # the form is in the first screen
        box = page.locator(selector).bounding_box()
        assert box["y"] + box["height"] <= WIDTHS["phone"][1], (selector, box)
    assert page.locator("#token-create").bounding_box()["y"] < first_row["y"]

    last = page.locator("#tokens-table tbody tr[data-token-id]").last
    last.locator("button[data-action='disable']").click()
    expect(last).to_contain_text("disabled")
    expect(last.locator("button[data-action='enable']")).to_be_focused()
    notice = page.locator("#tokens-notice")
    expect(notice).to_be_visible()
    box = notice.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 844, box

    token_id = last.get_attribute("data-token-id")
    last.locator("button[data-action='delete']").click()
    view.confirm("Delete token", "device 0")   # newest first: the oldest is last
    expect(page.locator(f"#tokens-table tr[data-token-id='{token_id}']")).to_have_count(0)
    assert focused(page)["row"] and "data-token-id" in focused(page)["row"], focused(page)
    box = notice.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 844, box

    # the secret panel names the token by its id too (names may repeat)
    old_id = page.locator("#tokens-table tbody tr", has_text="device 1").get_attribute(
        "data-token-id")
    page.fill("#token-name", "device 1")
    page.fill("#token-pattern", "team/d1")
    page.click("#token-create")
    secret = view.secret()
    ids = {t["id"] for t in view.api("GET", "/tokens")[1]["tokens"] if t["name"] == "device 1"}
    assert len(ids) == 2  # two tokens named "device 1": the id tells which
    new_id = page.locator("#secret-token-id").inner_text()
    assert ids == {old_id, new_id}, (ids, old_id, new_id)
    # leaving the tab takes the secret off the page
    page.evaluate("""() => {
      Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
      document.dispatchEvent(new Event('visibilitychange')); }""")
    expect(page.locator("#secret-gone")).to_contain_text("rotate")
    expect(page.locator("#secret-gone")).to_contain_text(new_id)
    assert secret not in page.content()
    page.click("#secret-done")
    expect(page.locator("#secret-panel")).to_be_hidden()
    assert focused(page)["row"] == {"data-token-id": new_id}, focused(page)


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
  const garbled = (document.body.innerText.match(/.{0,30}(\\[object |\\bundefined\\b|\\bNaN\\b).{0,30}/g) || []);
  return { scrollWidth: doc.scrollWidth, innerWidth: window.innerWidth, small, unlabelled, wide, garbled };
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
        assert not layout["garbled"], (name, layout["garbled"])

    view.open()
    check("login")
    view.login()
    assert view.api("POST", "/users", {"username": "ops", "password": "ops password"})[0] == 201
    ci = view.server.token_id("ci")
    assert view.api("PATCH", f"/tokens/{ci}", {"enabled": False})[0] == 200
    assert view.api("POST", "/namespaces", {"name": "old/box"})[0] == 201
    assert view.api("DELETE", "/namespaces/old%2Fbox")[0] == 200  # a "deleted <time>" cell
    for name in TABS:
        view.tab(name)
        if name == "overview":
            expect(page.locator("#overview-warnings .banner")).to_have_count(1)
        check(name)

    view.tab("namespaces")
    view.row("namespaces", namespace=NS).locator("button[data-action='history']").click()
    expect(page.locator("#history-list li.version")).to_have_count(2)
    check("namespaces-history")
    page.locator("#history-list button[data-action='inspect']").last.click()
    expect(page.locator("#history-list [data-detail] pre").last).to_be_visible()
    check("namespaces-version")
    page.locator("#history-list button[data-action='rollback']").first.click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    check("confirm-dialog", full_page=False)
    page.click("#confirm-cancel")
    page.click("#history-close")  # the history is a dialog over the list

    view.tab("tokens")
    page.fill("#token-name", "new laptop")
    page.fill("#token-pattern", "team/*")
    page.click("#token-create")
    view.secret()
    check("tokens-secret")


def assert_field_error(page, field_id: str, words: str) -> None:
    """An error at its field: aria-invalid, the message first in aria-describedby, shown
    inside the field's own box, one plain sentence."""
    field = page.locator(f"#{field_id}")
    expect(field).to_have_attribute("aria-invalid", "true")
    error_id = field.get_attribute("aria-describedby").split()[0]
    error = page.locator(f"#{error_id}")
    expect(error).to_be_visible()
    expect(error).to_contain_text(words)
    message = error.inner_text().strip()
    assert message[0].isupper() and message.endswith(".") and ".." not in message, message
    assert field.evaluate("(input, id) => input.closest('.field, fieldset')"
                          ".contains(document.getElementById(id))", error_id), error_id


def assert_in_view(page, selector: str, words: str) -> None:
    notice = page.locator(selector)
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(words)
    box, height = notice.bounding_box(), page.viewport_size["height"]
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box, height)


COLUMNS_CHECK = """(id) => {
  const wrap = document.getElementById(id), box = wrap.getBoundingClientRect();
  const problems = [];
  if (wrap.scrollWidth > wrap.clientWidth + 1) {
    problems.push('scrolls sideways: ' + wrap.scrollWidth + ' > ' + wrap.clientWidth);
  }
  for (const row of wrap.querySelectorAll('tr')) {
    let right = -Infinity;
    for (const cell of row.children) {
      const r = cell.getBoundingClientRect(), name = cell.getAttribute('data-label') || cell.textContent.trim();
      if (r.left < right - 1) problems.push(name + ' overlaps the cell before it');
      if (r.right > box.right + 1) problems.push(name + ' ends past the table');
      const inner = cell.querySelector('.cell') || cell;
      if (inner.scrollWidth > inner.clientWidth + 1) problems.push(name + ' is clipped');
      if (cell.tagName === 'TD' && r.height) {  // nothing painted over it
        const hit = document.elementFromPoint(r.left + 3, r.top + Math.min(r.height / 2, 12));
        if (hit && !cell.contains(hit) && !hit.contains(cell)) problems.push(name + ' is covered by ' + hit.className);
      }
      right = r.right;
    }
  }
  return problems;
}"""


@pytest.mark.parametrize("width", [1280, 1920])
def test_every_column_is_readable_at_desktop_widths(ui, width):
    """No column hides under another (the sticky Actions once covered Uses, Last namespace,
    Last IP and Client version), none is clipped, no table scrolls sideways."""
    view = ui(size=(width, 1000))
    seed(view.server)
    long_ns = "home/laptop-with-a-rather-long-namespace-name"
    token = view.server.create_token(name="a rather long token name for the ops laptop",
                                     namespace=long_ns)
    status, _, _ = sync(view.server.port, "GET", long_ns, "metadata", token,
                        headers={"X-OxideTerm-Client-Version": "1.2.3-beta.4+build.20260101"})
    assert status == 200
    view.open().login()
    page = view.page
    view.tab("tokens")
    row = view.row("tokens", **{"token-id": view.server.token_id(
        "a rather long token name for the ops laptop")})
    for label in ("Uses", "Last namespace", "Last IP", "Client version", "Actions"):
        expect(page.locator("#tokens-table th", has_text=label)).to_have_count(1)
    expect(row.locator("td[data-label='Client version']")).to_have_text(
        "1.2.3-beta.4+build.20260101")
    expect(row.locator("td[data-label='Last namespace']")).to_have_text(long_ns)
    expect(row.locator("td[data-label='Last IP']")).to_have_text("127.0.0.1")
    for tab in ("tokens", "namespaces", "conflicts", "users"):
        view.tab(tab)
        expect(page.locator(f"#{tab}-table tbody tr").first).to_be_visible()
        page.evaluate("() => window.scrollTo(0, 0)")
        problems = page.evaluate(COLUMNS_CHECK, f"{tab}-table")
        assert not problems, (tab, width, problems)


def test_delete_and_purge_dialogs_count_the_snapshot(ui):
    view = ui()
    token = view.server.create_token()
    assert put_blob(view.server.port, "home/box", token, b"x" * 2048)[0] == 200
    view.open().login().tab("namespaces")
    row = view.row("namespaces", namespace="home/box")
    row.locator("button[data-action='delete']").click()
    said = view.confirm("Delete namespace home/box", "its snapshot (2.0 KiB)")
    assert "0 objects" not in said, said
    # the state cell once read "deleted ,[object HTMLTimeElement]" (a nested array)
    state = row.locator("td[data-label='State']")
    expect(state).to_have_text(re.compile(r"^\s*deleted\s+just now\s*$"))
    expect(state.locator("time")).to_have_count(1)
    row.locator("button[data-action='purge']").click()
    said = view.confirm("Purge namespace home/box", "its snapshot (2.0 KiB)", accept=False)
    assert "0 objects" not in said, said


def test_form_errors_sit_at_their_field(ui):
    view = ui().open().login().tab("tokens")
    page = view.page
    page.click("#token-create")
    assert_field_error(page, "token-name", "Give the token a name")
    assert_field_error(page, "token-pattern", "Enter a namespace pattern")
    expect(page.locator("#token-name")).to_be_focused()
    expect(page.locator("#token-form-error")).to_be_hidden()
    # the hint stays described too, after the error
    assert page.locator("#token-name").get_attribute("aria-describedby").split() == [
        "token-name-error", "token-name-hint"]
    page.fill("#token-name", "laptop")
    expect(page.locator("#token-name")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#token-name-error")).to_be_hidden()
    assert page.locator("#token-name").get_attribute("aria-describedby") == "token-name-hint"

    # a refusal of the server that names a field is said at that field
    view.tab("users")
    page.fill("#user-name", "admin")
    page.fill("#user-password", "long enough 1")
    view.allow(409, "/admin/api/users")
    page.click("#user-create")
    assert_field_error(page, "user-name", "already exists")
    page.fill("#user-name", "bad name")
    page.click("#user-create")
    assert_field_error(page, "user-name", "a space is not allowed")


def test_namespace_and_user_actions_keep_focus_and_the_notice_in_view_on_a_phone(ui):
    view = ui(size=WIDTHS["phone"]).open().login()
    page = view.page
    for name in ("team/a", "team/b", "team/c", "team/d"):
        assert view.api("POST", "/namespaces", {"name": name})[0] == 201
    view.tab("namespaces")
    row = view.row("namespaces", namespace="team/d")
    row.locator("button[data-action='delete']").click()
    view.confirm("Delete namespace team/d")
    expect(row.locator("button[data-action='restore']")).to_be_focused()
    assert_in_view(page, "#namespaces-notice", "deleted")
    row.locator("button[data-action='restore']").click()
    expect(row.locator("button[data-action='delete']")).to_be_focused()
    assert_in_view(page, "#namespaces-notice", "restored")

    assert view.api("POST", "/users", {"username": "ops", "password": "ops password 1"})[0] == 201
    view.tab("users")
    ops = view.row("users", username="ops")
    ops.locator("button[data-action='disable']").click()
    expect(ops.locator("button[data-action='enable']")).to_be_focused()
    assert_in_view(page, "#users-notice", "disabled")


CONTRAST = """() => {
  const rgb = (color) => (color.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const background = (node) => {
    for (let n = node; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const input of document.querySelectorAll('input[type=text], input[type=password], input[type=datetime-local]')) {
    if (!input.offsetParent) continue;
    const style = getComputedStyle(input), border = rgb(style.borderTopColor);
    found.push([input.id, 'border', Math.min(ratio(border, background(input.parentElement)), ratio(border, background(input)))]);
    input.focus();
    const focused = getComputedStyle(input);
    found.push([input.id, 'focus ring', focused.outlineStyle === 'none' || parseFloat(focused.outlineWidth) < 2
      ? 0 : ratio(rgb(focused.outlineColor), background(input.parentElement))]);
    input.blur();
  }
  return found;
}"""

FOCUSED_RING = """() => {
  const node = document.activeElement, style = getComputedStyle(node);
  return [node.id || node.tagName, style.outlineStyle, parseFloat(style.outlineWidth), style.outlineColor,
          getComputedStyle(node.parentElement).backgroundColor];
}"""


def contrast(color_a: str, color_b: str) -> float:
    def luminance(color):
        r, g, b = (float(v) / 255 for v in re.findall(r"[\d.]+", color)[:3])
        f = lambda v: v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4  # noqa: E731
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b)
    high, low = sorted((luminance(color_a), luminance(color_b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_input_borders_and_focus_ring_have_3_to_1_contrast(ui, scheme):
    view = ui(color_scheme=scheme).open()
    page = view.page
    measured = page.evaluate(CONTRAST)
    # the keyboard's ring on a button (:focus-visible), against what is behind it
    page.locator("#login-password").focus()
    page.keyboard.press("Tab")
    name, style, width, ring, behind = page.evaluate(FOCUSED_RING)
    assert name == "login-submit" and style != "none" and width >= 2, (name, style, width)
    measured.append([name, "focus ring", contrast(ring, behind)])
    view.login()
    for tab in ("tokens", "namespaces", "users"):
        view.tab(tab)
        measured += page.evaluate(CONTRAST)
    assert len(measured) >= 10, measured
    low = [m for m in measured if m[2] < 3]
    assert not low, low


def test_times_are_relative_with_the_absolute_time_on_hover(ui):
    view = ui(timezone_id="Europe/Berlin")
    token = view.server.create_token(name="laptop", expires_at="2031-01-01T00:00:00Z")
    assert put_blob(view.server.port, NS, token)[0] == 200
    view.open().login().tab("tokens")
    page = view.page
    row = page.locator("#tokens-table tbody tr", has_text="laptop")
    used = row.locator("td[data-label='Last used'] time")
    deadline = time.monotonic() + 10
    while not used.count() and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        page.click("#tokens-refresh")
    absolute = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\+0[12]:00 \(Europe/Berlin\)$")
    expect(used).to_have_text(re.compile(r"^(just now|\d+ min ago)$"))
    expect(used).to_have_attribute("title", absolute)
    expires = row.locator("td[data-label='Expires'] time")
    expect(expires).to_have_text(re.compile(r"^in \d+ years \(2031-01-01 01:00\)$"))
    expect(expires).to_have_attribute("title", "2031-01-01 01:00:00 UTC+01:00 (Europe/Berlin)")
    view.tab("namespaces")
    written = view.row("namespaces", namespace=NS).locator("td[data-label='Last write'] time")
    expect(written).to_have_text("just now")
    expect(written).to_have_attribute("title", absolute)



# -- thousands of namespaces, tokens and devices ---------------------------------------------

BIG_NAMESPACES, BIG_TOKENS, BIG_DEVICES = 5000, 1000, 1000
PAGE_ROWS = 50       # admin.html's PAGE_SIZE: the DOM holds one page of rows
LARGEST = "home/largest"
DEEP = "seed-00040-real"     # sorts as the 45th of 5,000 by name: far down the first page


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One server for the module, seeded straight into its store with 5,000 namespaces,
    1,000 tokens and 1,000 devices, plus real syncs: a namespace far larger than the rest,
    one with a history deep in the first page, a device whose last upload got 412 and one
    whose token was disabled (401)."""
    with running_server(tmp_path_factory.mktemp("big"), env=ADMIN_ENV) as server:
        names = seed_namespaces(server, BIG_NAMESPACES)
        seed_tokens(server, BIG_TOKENS)
        # device i was last seen i minutes before "7 days ago + 500 min": from 500 on, stale
        seed_devices(server, BIG_DEVICES, names, now=time.time() - 7 * 86400 + 500 * 60)
        port = server.port
        assert put_blob(port, LARGEST, server.token, os.urandom(300_000))[0] == 200
        put_manifest(port, DEEP, server.token, "deep-1", connections=5)
        put_manifest(port, DEEP, server.token, "deep-2", connections=6)
        stuck = server.create_token(name="alice laptop", namespace="home/alice")
        device = {"X-OxideTerm-Device-Id": "alice-laptop", "X-OxideTerm-Client-Version": "1.4.2"}
        status, body, _ = sync(port, "PUT", "home/alice", "blob", stuck, b"one", {
            **device, "X-OxideTerm-Revision": "a1", "If-None-Match": "*"})
        assert status == 200, body
        status, body, _ = sync(port, "PUT", "home/alice", "blob", stuck, b"two", {
            **device, "X-OxideTerm-Revision": "a2", "If-Match": '"not-the-current-etag"'})
        assert status == 412, body
        revoked = server.create_token(name="bob phone", namespace="home/bob")
        phone = {"X-OxideTerm-Device-Id": "bob-phone", "X-OxideTerm-Client-Version": "1.3.0"}
        status, body, _ = sync(port, "PUT", "home/bob", "blob", revoked, b"bob", {
            **phone, "X-OxideTerm-Revision": "b1", "If-None-Match": "*"})
        assert status == 200, body
        server.cli("token", "disable", server.token_id("bob phone"))
        status, body, _ = sync(port, "GET", "home/bob", "metadata", revoked, headers=phone)
        assert status == 401, body
        yield server


def table_rows(page, table: str):
    return page.locator(f"#{table}-table tbody tr[data-namespace], "
                        f"#{table}-table tbody tr[data-token-id]")


def test_search_finds_one_namespace_among_5000(ui, big):
    view = ui(server=big).open().login().tab("namespaces")
    page = view.page
    total = view.api("GET", "/namespaces?limit=1")[1]["total"]
    assert total >= BIG_NAMESPACES
    expect(page.locator("#namespaces-count")).to_have_text(f"{total:,} namespaces")
    expect(table_rows(page, "namespaces")).to_have_count(PAGE_ROWS)
    asked = []
    page.on("request", lambda r: "/admin/api/namespaces?" in r.url and "q=" in r.url
            and asked.append(r.url))
    page.locator("#namespaces-search").press_sequentially("seed-04321", delay=20)
    expect(table_rows(page, "namespaces")).to_have_count(1)
    expect(view.row("namespaces", namespace="seed-04321")).to_be_visible()
    expect(page.locator("#namespaces-count")).to_have_text(f"1 of {total:,} namespaces match")
    assert 1 <= len(asked) < len("seed-04321"), asked   # asked once typing paused, not per key
    expect(page.locator("#namespaces-pager")).to_be_hidden()
    page.fill("#namespaces-search", "no-such-namespace")
    expect(page.locator("#namespaces-table td.empty")).to_contain_text(
        'No namespace matches "no-such-namespace"')
    expect(page.locator("#namespaces-count")).to_have_text(f"0 of {total:,} namespaces match")
    page.fill("#namespaces-search", "")
    expect(table_rows(page, "namespaces")).to_have_count(PAGE_ROWS)


def test_sort_by_size_puts_the_largest_first(ui, big):
    view = ui(server=big).open().login().tab("namespaces")
    page = view.page
    expect(table_rows(page, "namespaces").first).to_have_attribute("data-namespace",
                                                                    "home/alice")
    header = page.locator("#namespaces-table th", has_text="Total")
    header.locator("button.sort").click()
    expect(header).to_have_attribute("aria-sort", "descending")
    expect(table_rows(page, "namespaces").first).to_have_attribute("data-namespace", LARGEST)
    expect(page.locator("#namespaces-table th button[data-sort='size']")).to_be_focused()
    expect(page.locator("#namespaces-sort")).to_have_value("size:desc")
    sizes = [int(b) for b in page.locator(
        "#namespaces-table td[data-label='Total'] [data-bytes]").evaluate_all(
        "(nodes) => nodes.map((n) => n.getAttribute('data-bytes'))")]
    assert len(sizes) == PAGE_ROWS and sizes == sorted(sizes, reverse=True), sizes
    header.locator("button.sort").click()    # the second click reverses it
    expect(header).to_have_attribute("aria-sort", "ascending")
    expect(table_rows(page, "namespaces").first).not_to_have_attribute("data-namespace",
                                                                        LARGEST)
    expect(page.locator("#namespaces-table th[aria-sort]")).to_have_count(1)
    page.select_option("#namespaces-sort", "size:desc")   # the same from the select
    expect(table_rows(page, "namespaces").first).to_have_attribute("data-namespace", LARGEST)


def test_paging_reaches_the_last_namespace_and_comes_back(ui, big):
    view = ui(server=big).open().login().tab("namespaces")
    page = view.page
    status, last = view.api("GET", "/namespaces?sort=name&order=desc&limit=1")
    assert status == 200, last
    last_name, total = last["namespaces"][0]["name"], last["total"]
    first_page = table_rows(page, "namespaces").first.get_attribute("data-namespace")
    pages = 1
    while page.locator("#namespaces-next").is_enabled():
        shown = page.locator("#namespaces-range").inner_text()
        page.click("#namespaces-next")
        expect(page.locator("#namespaces-range")).not_to_have_text(shown)
        assert table_rows(page, "namespaces").count() <= PAGE_ROWS
        pages += 1
        assert pages <= total // PAGE_ROWS + 1, "Next never ends"
    assert pages == -(-total // PAGE_ROWS)
    expect(table_rows(page, "namespaces").last).to_have_attribute("data-namespace", last_name)
    start = (pages - 1) * PAGE_ROWS + 1
    expect(page.locator("#namespaces-range")).to_have_text(f"{start:,}–{total:,} of {total:,}")
    expect(page.locator("#namespaces-previous")).to_be_focused()   # Next went off at the end
    for _ in range(pages - 1):
        shown = page.locator("#namespaces-range").inner_text()
        page.click("#namespaces-previous")
        expect(page.locator("#namespaces-range")).not_to_have_text(shown)
    expect(table_rows(page, "namespaces").first).to_have_attribute("data-namespace", first_page)
    expect(page.locator("#namespaces-previous")).to_be_disabled()


def test_history_opens_over_the_list_which_stays_where_it_was(ui, big):
    view = ui(server=big).open().login().tab("namespaces")
    page = view.page
    row = view.row("namespaces", namespace=DEEP)
    opener = row.locator("button[data-action='history']")
    opener.scroll_into_view_if_needed()
    scrolled = page.evaluate("() => window.scrollY")
    assert scrolled > 2000, scrolled
    opener.click()
    sheet = page.locator("#history-panel")
    expect(sheet).to_be_visible()
    expect(page.locator("#history-title")).to_have_text(f"History of {DEEP}")
    expect(page.locator("#history-list li.version")).to_have_count(2)
    box = sheet.bounding_box()
    assert box["y"] >= 0 and box["y"] < 10, box    # in view, not below the table
    assert page.evaluate("() => window.scrollY") == scrolled
    page.keyboard.press("Escape")
    expect(sheet).to_be_hidden()
    expect(opener).to_be_focused()
    assert page.evaluate("() => window.scrollY") == scrolled


def device_row(page, device_id: str):
    return page.locator(f"#devices-table tbody tr[data-device-id='{device_id}']")


def test_devices_view_names_the_conflict_and_the_refusal(ui, big):
    view = ui(server=big).open().login().tab("devices")
    page = view.page
    total = view.api("GET", "/devices?limit=1")[1]["total"]
    assert total >= BIG_DEVICES + 2
    expect(page.locator("#devices-count")).to_have_text(f"{total:,} devices")
    assert page.locator("#devices-table tbody tr").count() <= PAGE_ROWS
    page.fill("#devices-search", "alice-laptop")
    alice = device_row(page, "alice-laptop")
    expect(alice).to_have_count(1)
    expect(alice.locator("td[data-label='Last result'] .badge")).to_have_text("conflict")
    expect(alice.locator("td[data-label='Client version']")).to_have_text("1.4.2")
    expect(alice.locator("td[data-label='Token']")).to_have_text("alice laptop")
    expect(alice.locator("td[data-label='Namespace']")).to_have_text("home/alice")
    page.fill("#devices-search", "bob-phone")
    bob = device_row(page, "bob-phone")
    expect(bob.locator("td[data-label='Last result'] .badge")).to_have_text("refused 401")
    expect(bob.locator("td[data-label='Flags']")).to_contain_text("problem")
    expect(bob).to_have_class(re.compile(r"\bproblem\b"))

    # its links: the token (the tokens tab, searched for it) and the namespace's history
    bob.locator("button[data-action='token']").click()
    expect(page.locator("#panel-tokens")).to_be_visible()
    token_id = big.token_id("bob phone")
    expect(page.locator("#tokens-search")).to_have_value(token_id)
    expect(page.locator("#tokens-table tbody tr")).to_have_count(1)
    expect(view.row("tokens", **{"token-id": token_id})).to_contain_text("disabled")
    view.tab("devices")
    device_row(page, "bob-phone").locator("button[data-action='history']").click()
    expect(page.locator("#history-title")).to_have_text("History of home/bob")
    page.click("#history-close")

    # the filters: problems only, then devices not seen lately
    page.fill("#devices-search", "")
    expect(page.locator("#devices-count")).to_have_text(f"{total:,} devices")
    flags = page.locator("#devices-table td[data-label='Flags']")
    for status, flag in (("problem", "problem"), ("stale", "not seen lately")):
        status_now = view.api("GET", f"/devices?status={status}&limit=1")[1]
        assert 0 < status_now["matched"] < total, status_now
        page.select_option("#devices-status", status)
        expect(page.locator("#devices-count")).to_have_text(
            f"{status_now['matched']:,} of {total:,} devices match")
        assert flags.count() == min(PAGE_ROWS, status_now["matched"])
        assert all(flag in text for text in flags.all_inner_texts()), status


def test_tokens_search_and_filter_among_1000(ui, big):
    view = ui(server=big).open().login().tab("tokens")
    page = view.page
    total = view.api("GET", "/tokens?limit=1")[1]["total"]
    expect(page.locator("#tokens-count")).to_have_text(f"{total:,} tokens")
    assert page.locator("#tokens-table tbody tr").count() == PAGE_ROWS
    page.fill("#tokens-search", "seed-token-00421")
    expect(page.locator("#tokens-table tbody tr")).to_have_count(1)
    expect(page.locator("#tokens-table tbody tr")).to_contain_text("seed-token-00421")
    page.fill("#tokens-search", "")
    page.select_option("#tokens-status", "disabled")
    status = page.locator("#tokens-table td[data-label='Status']")
    expect(status.first).to_contain_text("disabled")
    assert all("disabled" in text for text in status.all_inner_texts())


@pytest.mark.parametrize("device", list(WIDTHS))
def test_big_lists_fit_and_are_screenshotted(ui, big, device):
    view = ui(server=big, size=WIDTHS[device]).open().login()
    page = view.page
    width, height = WIDTHS[device]
    SHOTS.mkdir(parents=True, exist_ok=True)
    for tab in ("namespaces", "tokens", "devices"):
        view.tab(tab)
        expect(page.locator(f"#{tab}-pager")).to_be_visible()
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"big-{tab}-{width}x{height}.png"))
        layout = page.evaluate(LAYOUT_CHECK)
        assert layout["scrollWidth"] <= layout["innerWidth"], (tab, layout)
        assert not layout["wide"] and not layout["small"], (tab, layout)
        assert not layout["unlabelled"] and not layout["garbled"], (tab, layout)
    view.tab("namespaces")
    page.select_option("#namespaces-sort", "size:desc")   # the sort on a phone: the select
    expect(table_rows(page, "namespaces").first).to_have_attribute("data-namespace", LARGEST)
    page.fill("#namespaces-search", DEEP)
    expect(table_rows(page, "namespaces")).to_have_count(1)
    table_rows(page, "namespaces").locator("button[data-action='history']").click()
    expect(page.locator("#history-list li.version")).to_have_count(2)
    page.wait_for_timeout(150)
    page.screenshot(path=str(SHOTS / f"big-history-{width}x{height}.png"))
    layout = page.evaluate(LAYOUT_CHECK)
    assert not layout["wide"] and layout["scrollWidth"] <= layout["innerWidth"], layout


def test_twenty_namespaces_look_as_before(ui):
    """One page, no pager, the same columns as before the lists were paged."""
    view = ui().open().login()
    names = [f"team/n{i:02d}" for i in range(20)]
    for name in names:
        assert view.api("POST", "/namespaces", {"name": name})[0] == 201
    view.tab("namespaces")
    page = view.page
    expect(table_rows(page, "namespaces")).to_have_count(20)
    assert page.locator("#namespaces-table tbody tr").evaluate_all(
        "(rows) => rows.map((r) => r.getAttribute('data-namespace'))") == names
    expect(page.locator("#namespaces-count")).to_have_text("20 namespaces")
    expect(page.locator("#namespaces-pager")).to_be_hidden()
    assert page.locator("#namespaces-table tbody tr").first.locator("td").evaluate_all(
        "(cells) => cells.map((c) => c.getAttribute('data-label'))") == [
        "Name", "State", "Latest version", "Snapshot", "Snapshot history", "Objects", "Total",
        "Last write", "Actions"]
