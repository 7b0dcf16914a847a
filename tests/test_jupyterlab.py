"""JupyterLab for real: the interactive notebook from nbs/, opened in a JupyterLab server and run in Chromium; its widgets render."""
import json, os, shutil, subprocess, sys

import pytest
from browser import browser, console_errors, free_port, shot, wait_up
from conftest import ROOT


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server over a copy of nbs/65_interactive.ipynb (running it must not touch the repository), with its own settings and workspace."
    root = tmp_path / "lab"
    (root / "nbs").mkdir(parents=True)
    shutil.copy(ROOT / "nbs" / "65_interactive.ipynb", root / "nbs")
    shutil.copy(ROOT / "settings.ini", root)  # the notebook's last cell exports, into this copy
    (root / "sample_data").symlink_to(ROOT / "sample_data")
    port = free_port()
    token = "lab-test-token"
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path / "workspace"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}
    settings = tmp_path / "lab-settings"  # every cell rendered (no windowing: cells off screen exist in the page), no news pop-up
    for ext, values in {"notebook-extension/tracker": {"windowingMode": "none"}, "apputils-extension/notification": {"fetchNews": "false"}}.items():
        (settings / "@jupyterlab" / f"{ext}.jupyterlab-settings").parent.mkdir(parents=True, exist_ok=True)
        (settings / "@jupyterlab" / f"{ext}.jupyterlab-settings").write_text(json.dumps(values))
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(f"{url}/api/status", proc, "JupyterLab", tmp_path / "jupyterlab.log", params={"token": token})
        yield url, token, root
    finally:
        proc.terminate()
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()


def test_interactive_notebook_widgets_render_in_jupyterlab(lab):
    url, token, root = lab
    code_cells = sum(c["cell_type"] == "code" for c in json.loads((root / "nbs" / "65_interactive.ipynb").read_text())["cells"])
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        errors = console_errors(page)
        try:
            page.goto(f"{url}/lab/tree/nbs/65_interactive.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)  # the kernel is up
            # Run All once the kernel is connected and idle (pressed earlier, it runs nothing): JupyterLab's own command
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext", timeout=120_000)
            page.evaluate("""() => {  // remember every progress bar drawn, also those that close when done (an epoch's)
                window.__bars = new Set();
                new MutationObserver(() => document.querySelectorAll(".widget-hprogress").forEach(b => window.__bars.add((b.closest(".widget-hbox") || b).textContent.trim())))
                    .observe(document.body, {childList: true, subtree: true, characterData: true, attributes: true});
            }""")
            page.evaluate("""async () => {
                const nb = window.jupyterapp.shell.currentWidget;
                await nb.context.ready; await nb.sessionContext.ready;
                for (let i = 0; i < 600; i++) {
                    const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
                    if (k && k.connectionStatus === "connected" && k.status === "idle") break;
                    await new Promise(r => setTimeout(r, 200));
                }
                await window.jupyterapp.commands.execute("notebook:run-all-cells");
            }""")
            # every cell runs (no [*] left)
            page.locator(".jp-InputPrompt", has_text=f"[{code_cells}]:").wait_for(timeout=300_000)
            page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('*'))", timeout=300_000)
            outputs = page.locator(".jp-OutputArea").all_inner_texts()
            assert not [o for o in outputs if "Traceback" in o], [o[:800] for o in outputs if "Traceback" in o]
            # the job form: a field per typed parameter; its button runs the job on a kernel of its own
            form = page.locator(".jp-OutputArea .widget-vbox", has=page.locator(".widget-button", has_text="Run prepare")).first
            assert form.locator(".widget-checkbox").count() == 1 and form.locator(".widget-dropdown").count() == 1 and form.locator(".widget-text").count() == 3
            form.locator(".widget-button").click()
            form.get_by_text("running since").wait_for(timeout=30_000)
            form.get_by_text("succeeded in").wait_for(timeout=240_000)
            # the training's progress bars (one per epoch, closed when done), drawn by tqdm as widgets
            bars = page.evaluate("() => [...window.__bars]")
            assert any(b.startswith("epoch 2/2") for b in bars), bars
            # the prediction explorer: type, press, read the label, probabilities and shaded words
            explorer = page.locator(".jp-OutputArea .widget-vbox", has=page.locator(".widget-textarea")).first
            explorer.locator("textarea").fill("My card was charged twice, please refund the second payment")
            explorer.locator(".widget-button", has_text="Explain").click()
            explorer.locator(".explanation", has_text="refund").wait_for(timeout=120_000)  # the new text's explanation replaced the first one
            assert explorer.locator(".wb-prediction").count() == 1 and explorer.locator(".wb-probs tr").count() == 4
            assert explorer.locator(".explanation span").count() == len("My card was charged twice , please refund the second payment".split())
            # the value explorer: a dearer hand-handling cost, typed into its field, changes the saving shown
            value = page.locator(".jp-OutputArea .widget-vbox", has=page.locator(".wb-value")).first
            assert "4.00 USD handling cost" in value.inner_text(), value.inner_text()  # as the notebook left it
            field = value.locator(".widget-text", has_text="handling a text by hand").locator("input")
            field.fill("1000")
            field.press("Enter")
            value.get_by_text("1000.00 USD handling cost").wait_for(timeout=30_000)  # recomputed in the kernel, shown again
        except Exception as e:
            shot(page, "jupyterlab-failure")
            prompts = page.locator(".jp-InputPrompt").all_inner_texts()
            failed = [o[-1500:] for o in page.locator(".jp-OutputArea").all_inner_texts() if "Traceback" in o or "Error" in o]
            raise AssertionError(f"prompts {prompts}; failed outputs {failed}; console {errors[-5:]}") from e
        shot(page, "jupyterlab-interactive")
        assert not [e for e in errors if "widget" in e.lower()], errors
