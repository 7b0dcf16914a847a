"""The dashboard against hostile data and hostile clients.

A real workspace built by the `workbench` command whose dataset and model names, texts and metadata carry script
payloads, shown in a real browser (Playwright + Debian's Chromium); the login's throttling, sign-out and the routes
open without a login, over HTTP against a real `workbench dashboard`.
"""
import contextlib, html, os, re, subprocess, sys, time
from pathlib import Path

import polars as pl
import pytest
import requests
import yaml
from conftest import ROOT, workbench_cmd

IMG = '<img src=x onerror="window.__xss=1;alert(1)">'
SCRIPT = "<script>window.__xss=1</script>"
SVG = '<svg onload="window.__xss=1;alert(1)">'  # no slash: a dataset name is a folder name
PASSWORD = "right-pw"


@contextlib.contextmanager
def dashboard(home: Path, log: Path, env: dict | None = None):
    "`workbench dashboard` with a password on the workspace `home`, on a free port: its URL while it runs."
    from browser import free_port, wait_up
    port = free_port()
    exe = Path(sys.executable).parent / "workbench"
    env = {**os.environ, "WORKBENCH_HOME": str(home), "WORKBENCH_DASHBOARD_PASSWORD": PASSWORD, **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "dashboard", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_up(f"{url}/login", proc, "the dashboard", log)
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


class _FromAddress(requests.adapters.HTTPAdapter):
    "Connections from a given local address: every 127.x.y.z is this machine, and a client of its own to the server."
    def __init__(self, ip: str):
        self.ip = ip
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=(self.ip, 0), **kwargs)


def client(ip: str) -> requests.Session:
    "A requests session whose connections come from `ip`."
    s = requests.Session()
    s.mount("http://", _FromAddress(ip))
    return s


def sign_in(s: requests.Session, url: str, password: str = PASSWORD) -> requests.Response:
    return s.post(f"{url}/login", data={"username": "me", "password": password}, allow_redirects=False, timeout=10)


# ---------------------------------------------------------------- a hostile workspace in a real browser

def _tickets(n: int, seed: int) -> pl.DataFrame:
    "Sample tickets with script payloads in their texts and metadata, on three queues."
    from workbench.sample import generate_tickets
    i = pl.int_range(pl.len())
    return generate_tickets(n, seed=seed).with_columns(
        label=pl.col("label").replace_strict({"billing": "billing", "refunds": "refunds"}, default="other"),
        channel=pl.when(i % 3 == 0).then(pl.lit(f"chat {IMG}")).otherwise(pl.lit("email")),
        product=pl.when(i % 2 == 0).then(pl.lit(f"router {SCRIPT}")).otherwise(pl.lit("storage")),
        subject=pl.col("subject") + f" {IMG}", body=pl.col("body") + f" {SCRIPT}")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A workspace made by the real pipelines (prepare, train, evaluate, score, monitor, govern) from tickets whose
    dataset name, model name, texts and metadata carry script payloads; and a dataset whose labels carry them too
    (prepared only: MLflow refuses `<` in the per-label metric names that training logs)."""
    root = tmp_path_factory.mktemp("hostile")
    env = {"WORKBENCH_HOME": str(root / "workspace")}
    _tickets(160, 1).write_csv(root / "tickets.csv")
    _tickets(60, 2).write_csv(root / "new.csv")
    contract = yaml.safe_load((ROOT / "sample_data" / "contract.yaml").read_text())
    (root / "contract.yaml").write_text(yaml.safe_dump({**contract, "labels": ["billing", "other", "refunds"]}))
    names = {"dataset": f"data {IMG}", "contract": str(root / "contract.yaml")}
    model = f"model {IMG}"
    train = {**names, "source": str(root / "tickets.csv"), "name": model, "train_rows": 0, "max_length": 32, "epochs": 1, "method": "lora",
             "min_lift_sd": 0, "max_parity_drop": 1, "max_p95_ms": 10000, "latency_samples": 3}
    monitor = {**names, "source": str(root / "new.csv"), "model": f"models:/{model}@champion", "explain_rows": 4,
               "embedding_rows": 0, "min_slice_rows": 1, "features": "channel,product,region"}
    report = {"model": f"models:/{model}@champion"}  # the stakeholder report of a model with a payload for a name
    for pipeline, params in (("train", train), ("monitor", monitor), ("report", report)):
        (root / f"{pipeline}.yaml").write_text(yaml.safe_dump(params))
        r = workbench_cmd("run", pipeline, "-q", "-f", root / f"{pipeline}.yaml", env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    labelled = _tickets(60, 3).with_columns(label=pl.col("label").replace_strict(
        {"billing": f"billing {IMG}", "refunds": f"refunds {SCRIPT}"}, default="other"))
    labelled.write_csv(root / "labelled.csv")
    (root / "labels.yaml").write_text(yaml.safe_dump({**contract, "labels": [f"billing {IMG}", f"refunds {SCRIPT}", "other"]}))
    r = workbench_cmd("prepare", root / "labelled.csv", "--name", f"labels {SVG}", "--contract", root / "labels.yaml", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root / "workspace"


# elements that carry a payload as markup: an event handler or a script that mentions it, in the page or a shadow root
_INJECTED = """() => {
  const found = [];
  const walk = root => {
    for (const el of root.querySelectorAll("*")) {
      if (el.tagName === "SCRIPT" && el.textContent.includes("__xss")) found.push(el.outerHTML);
      if ([...el.attributes].some(a => a.name.startsWith("on") && a.value.includes("__xss"))) found.push(el.outerHTML);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return found;
}"""


def _visible(locator) -> bool:
    return any(el.is_visible() for el in locator.all())


def test_hostile_workspace_shows_payloads_as_text(hostile, tmp_path):
    "Every page of the dashboard on the hostile workspace: no script runs, no dialog opens, and the payloads are shown as text."
    from browser import browser, login, shot, visit
    from workbench.dashboard import PAGES
    shows = {"overview": [IMG], "data": [IMG, SCRIPT, SVG], "governance": [IMG, SCRIPT], "explore": [IMG]}  # as text on the page itself
    with dashboard(hostile, tmp_path / "dashboard.log") as url, browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1600})
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(f"{page.url}: {d.message}"), d.dismiss()))
        login(page, url, "me", PASSWORD)
        for key in PAGES:
            try:
                seen = visit(page, url, key)
                if key == "explore":  # a payload typed by the user, classified and explained
                    page.locator("textarea").fill(f"Refund me {IMG} {SCRIPT}")
                    page.locator(".bk-btn", has_text="Classify and explain").click()
                    page.locator(".wb-explanation", has_text="onerror").wait_for(timeout=120_000)
                page.wait_for_timeout(500)
            finally: shot(page, f"dashboard-hostile-{key}")
            assert not seen["failed"], (key, seen)
            assert page.evaluate("typeof window.__xss") == "undefined" and not dialogs, (key, dialogs)
            assert not page.evaluate(_INJECTED), (key, page.evaluate(_INJECTED))
            assert page.locator("img[src=x], svg[onload]").count() == 0, key
            for payload in shows.get(key, []):
                assert _visible(page.get_by_text(payload)), (key, payload)
            if key == "report":  # the report in its sandboxed frame names the model, as text
                frame = page.frame_locator("iframe.wb-report")
                assert frame.locator("img[src=x]").count() == 0 and _visible(frame.get_by_text(IMG).first), key
            if key == "jobs":  # the executed notebook in its sandboxed frame shows the dataset name, as text
                frame = page.frame_locator("iframe.wb-notebook")
                assert frame.locator("img[src=x]").count() == 0 and _visible(frame.get_by_text(IMG)), key
        # the Data page's tables hold the payloads as cell text (Tabulator renders no HTML), the labels included
        visit(page, url, "data")
        cells = page.locator(".tabulator-cell").all_inner_texts()
        assert {f"billing {IMG}", f"refunds {SCRIPT}", f"data {IMG}", f"labels {SVG}"} <= set(cells), cells


# ---------------------------------------------------------------- the login, sign-out and open routes over HTTP

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "A dashboard on an empty workspace, with a module on its import path that leaves a file behind when imported."
    root = tmp_path_factory.mktemp("served")
    marker = root / "imported"
    (root / "probe").mkdir()
    (root / "probe" / "wb_import_probe.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass Thing:\n    __css__ = ['x.css']\n")
    (root / "probe" / "x.css").write_text("body{}")
    env = {"PYTHONPATH": os.pathsep.join([str(root / "probe"), os.environ.get("PYTHONPATH", "")])}
    with dashboard(root / "workspace", root / "dashboard.log", env) as url:
        yield {"url": url, "marker": marker}


def test_failed_logins_are_throttled_per_client(served):
    "After five failures a client is locked out, for longer each time (429 with Retry-After); other clients still sign in."
    url = served["url"]
    attacker, user = client("127.0.0.3"), client("127.0.0.4")
    t0 = time.monotonic()
    codes = [sign_in(attacker, url, f"guess-{i}").status_code for i in range(40)]
    took = time.monotonic() - t0
    checked = codes.count(302)  # attempts whose password was checked (and refused)
    assert checked <= 7 and codes.count(429) >= 30 and codes[-1] == 429, (codes, took)
    locked = sign_in(attacker, url)  # even the right password waits for the lock-out to end
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text, locked.text[-500:]
    wait = int(locked.headers["Retry-After"])
    assert wait >= 1
    ok = sign_in(user, url)  # another client is not affected
    assert ok.status_code == 302 and "error" not in ok.headers["location"]
    assert user.get(f"{url}/overview", allow_redirects=False, timeout=30).status_code == 200
    time.sleep(wait + 0.2)  # after the lock-out, one more failure locks the client out for twice as long
    assert "error=" in sign_in(attacker, url, "guess-again").headers["location"]
    again = sign_in(attacker, url, "and-again")
    assert again.status_code == 429 and int(again.headers["Retry-After"]) >= 2 * wait, again.headers
    print(f"{checked} of 40 wrong passwords checked in {took:.2f} s; the rest refused with 429")


def test_logout_ends_the_session_server_side(served):
    "A cookie saved before signing out opens nothing afterwards; another sign-in of the same user stays open."
    url = served["url"]
    first, second = client("127.0.0.5"), client("127.0.0.5")
    assert sign_in(first, url).status_code == 302 and sign_in(second, url).status_code == 302
    saved = requests.utils.dict_from_cookiejar(first.cookies)
    assert first.get(f"{url}/overview", allow_redirects=False, timeout=30).status_code == 200
    first.get(f"{url}/logout", timeout=10)
    replay = client("127.0.0.5")
    replay.cookies.update(saved)
    r = replay.get(f"{url}/overview", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/login" in r.headers["location"], (r.status_code, saved)
    assert replay.get(f"{url}/overview/metadata", allow_redirects=False, timeout=10).status_code == 302
    assert second.get(f"{url}/overview", allow_redirects=False, timeout=30).status_code == 200


def test_components_route_imports_nothing(served):
    "Panel's /components/ route: without a login a redirect to it, with one no import of a module that is not loaded yet."
    url, marker = served["url"], served["marker"]
    probe = "/components/wb_import_probe/Thing/__css__/x.css"
    anon = client("127.0.0.6")
    r = anon.get(url + probe, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/login" in r.headers["location"] and not marker.exists(), (r.status_code, r.text[:200])
    signed = client("127.0.0.6")
    assert sign_in(signed, url).status_code == 302
    r = signed.get(url + probe, allow_redirects=False, timeout=10)
    assert r.status_code == 404 and not marker.exists(), (r.status_code, r.text[:200])
    assert signed.get(f"{url}/overview", timeout=30).ok  # builds the page's template: its module is loaded
    css = signed.get(f"{url}/components/panel.template.fast.list/FastListTemplate/_css/fast_list_template.css", timeout=10)
    assert css.status_code == 200 and "{" in css.text  # Panel's own component files still come


def test_only_static_assets_are_open_without_login(served):
    "Without a login: the login page and Bokeh's and Panel's own static files; every other route redirects or refuses."
    from workbench.dashboard import PAGES
    url = served["url"]
    anon = client("127.0.0.7")
    for path in ("/login", "/logout", "/favicon.ico", "/static/js/bokeh.min.js", "/static/extensions/panel/panel.min.js"):
        assert anon.get(url + path, allow_redirects=False, timeout=10).status_code == 200, path
    closed = ["/", *(f"/{k}" for k in PAGES), "/overview/metadata",
              f"/overview/autoload.js?bokeh-autoload-element=x&bokeh-absolute-url={url}/overview",
              "/components/panel.template.fast.list/FastListTemplate/_css/fast_list_template.css", "/components/json/JSONDecoder/css/x"]
    for path in closed:
        r = anon.get(url + path, allow_redirects=False, timeout=30)
        assert r.status_code == 302 and "login" in r.headers["location"], (path, r.status_code)
    ws = anon.get(f"{url}/overview/ws", timeout=10, headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": url})
    assert ws.status_code == 403, ws.status_code
    for path in ("/static/../../../etc/passwd", "/static/extensions/panel/../../auth.py", "/overview/static/../../etc/passwd"):
        assert anon.get(url + path, allow_redirects=False, timeout=10).status_code in (403, 404), path


# ---------------------------------------------------------------- md_text, for any text

def test_md_text_shows_any_text_literally():
    "Rendered as Panel renders Markdown (markdown-it, gfm-like), `md_text` of any text is that text: no tag, no syntax."
    from hypothesis import given, settings, strategies as st
    from markdown_it import MarkdownIt
    from workbench.dashboard import md_text
    md = MarkdownIt("gfm-like")
    alphabet = st.sampled_from(list("<>&\"'`*_[]()#!|~\\/:=;-+.$@{}^%?, \n\tabcxyz019") + ["&amp;", "<img src=x>", "javascript:", "www.x.io", "é"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(alphabet, max_size=30).map("".join))
    def check(s):
        out = md.render(md_text(s))
        inner = re.sub(r"^<p>|</p>\n$", "", out)
        assert "<" not in inner, (s, out)
        assert html.unescape(inner) == " ".join(s.split()), (s, out)
    check()
