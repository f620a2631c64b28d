"""`snakemake --report` on the test config: every report() output is in it, and it renders in Chromium.

The list of report outputs is read from the workflow itself (Snakemake's API: every rule output
flagged by report()), never written down here, so a new report() output is checked automatically.
The browser check drives headless Chromium over the DevTools protocol on a pipe (no extra
packages): it collects script exceptions, console errors and failed loads, shows every image result
through the report's own viewer and checks that it decodes with a non-zero size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TEST_SWEEP_FAILING_RUN, copy_workflow, snakemake

CONFIG = "config/test.yaml"
# the report's sidebar sorts categories by name: numbered, they follow the journey
CATEGORIES = [
    "1 overview",
    "2 data",
    "3 training",
    "4 sweep",
    "5 evaluation",
    "6 slices",
    "7 throughput",
    "8 cost",
]
# one run of the test config fails on every attempt (fault injection), as runs of a real sweep do
FAILING_RUN = TEST_SWEEP_FAILING_RUN
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# Prints one JSON line per rule output flagged by report(): [rule name, regex of the output path].
REPORT_PATTERNS_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

workdir, configfile = Path(sys.argv[1]), Path(sys.argv[2])
with SnakemakeApi(OutputSettings()) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[configfile]),
        storage_settings=StorageSettings(),
        workdir=workdir,
        snakefile=workdir / "Snakefile",
    )
    for rule in workflow_api._workflow.rules:
        for output in rule.output:
            if is_flagged(output, "report"):
                print("PATTERN " + json.dumps([rule.name, output.regex().pattern]))
"""


@pytest.fixture(scope="module")
def finished_report(finished_test_sweep, tmp_path_factory) -> Path:
    """The whole workflow run on the test config (conftest; one run failing on every attempt), then
    its report built, in a copy (other tests read the shared sweep meanwhile). The run's terminal
    output is kept in terminal.txt."""
    workdir = copy_workflow(finished_test_sweep, tmp_path_factory.mktemp("report") / "wf")
    snakemake(workdir, "--configfile", CONFIG, "--report", "report.html")
    return workdir


def report_variable(html: str, name: str, script_id: str | None = None):
    """A JSON value the report embeds as `var <name> = ...;` in its own <script> element."""
    script_id = script_id or name
    match = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', html, re.S)
    assert match, f"report has no `var {name}`"
    return json.loads(match.group(1))


def report_output_patterns(workdir: Path) -> list[tuple[str, str]]:
    proc = subprocess.run(
        [sys.executable, "-c", REPORT_PATTERNS_SCRIPT, str(workdir), str(workdir / CONFIG)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(json.loads(line[8:])) for line in proc.stdout.splitlines() if line.startswith("PATTERN ")]


@pytest.mark.slow
def test_every_report_output_is_in_the_report(finished_report):
    html = (finished_report / "report.html").read_text()
    results = report_variable(html, "results")
    patterns = report_output_patterns(finished_report)
    assert len(patterns) > 10
    produced = [p.relative_to(finished_report).as_posix() for p in (finished_report / "results").rglob("*")]
    for rule, regex in patterns:
        matched = [path for path in produced if re.match(regex, path)]
        assert matched, f"rule {rule}: the run produced no file for its report output {regex}"
        missing = sorted(set(matched) - set(results))
        assert not missing, f"rule {rule}: report() outputs missing from report.html: {missing}"
    assert sorted(report_variable(html, "categories")) == CATEGORIES
    uncaptioned = [path for path, r in results.items() if not (r["caption"] or "").strip()]
    assert not uncaptioned, f"results without a caption: {uncaptioned}"


@pytest.mark.slow
def test_the_report_and_the_terminal_give_the_answer_first_and_name_the_failed_run(finished_report):
    first_page = report_variable(
        (finished_report / "report.html").read_text(), "workflow_desc", "workflow-desc"
    )
    assert first_page.index("The answer first") < first_page.index("pcamflow trained every grid point")
    for expected in (
        "champion (chosen on validation)",
        "model~cnn/lr~0.001/batch_size~32/optimizer~adam",  # every mlp seed must succeed to compete
        "test AUC",
        "test F2",
        "majority class",
        "always positive",
        "1 of 4",
        f"{FAILING_RUN}: InjectedFailure: failure injected",
        "data audit: train",
        "prepare kept all",
        "tiles shared between splits",
        "throughput: gpu_a100",  # skipped for want of CUDA, and said so
        "no CUDA",
        "val_auc, the area under the ROC curve on the validation split",  # how to read it
        "The validation threshold is the decision threshold",
        "champion.metric: val_f2",
        "at that threshold and",  # why F2 at the validation threshold differs from F2 at 0.5
        "javascript:(function(n,p,r,v)",  # the details cells open the results
    ):
        assert expected in first_page, expected
    terminal = (finished_report / "terminal.txt").read_text()
    lines = terminal[terminal.index("pcamflow: the sweep is done.") :].splitlines()
    assert lines[1].startswith("  champion   model~cnn/lr~0.001/batch_size~32/optimizer~adam")
    assert re.match(r"  test AUC   0\.\d{4} \[0\.\d{4}, [01]\.\d{4}\]  \(95% bootstrap interval\)", lines[2])
    assert lines[3].startswith("  test F2    ")
    assert lines[4].startswith("  data       train: ") and lines[5].startswith(
        "             prepare kept all"
    )
    assert lines[6].startswith("  FAILED     1 run(s)") and FAILING_RUN in lines[7]
    assert lines[8].startswith("  skipped    throughput on gpu_a100: ") and "no CUDA" in lines[8]
    assert "snakemake --forcerun $(cat results/summary/failed_runs.txt)" in lines[9]
    assert "snakemake --report report.html" in lines[10] and "pcamflow status" in lines[11]


# ---------------------------------------------------------------- headless Chromium over a CDP pipe


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, user_data_dir: Path):
        assert Path(CHROMIUM).exists(), (
            f"{CHROMIUM} missing: run tests/install_system_deps.sh (make test does)"
        )
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def plumb():  # in the child, before exec: the two pipe ends become fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={user_data_dir}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=plumb,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        for i, seen in enumerate(self.events):
            if seen.get("method") == event:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message.get("method") == event:
                return message
            self.events.append(message)

    def open(self, url: str) -> str:
        """A new page with Runtime, Log and Page events on, loaded with url; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str, timeout: float = 120):
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=timeout,
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def errors(self) -> list[str]:
        """Script exceptions, console errors and failed loads seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['source']}: {params['entry']['text']}")
        return found

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            assert chunk, "Chromium closed its DevTools pipe"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, AssertionError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture
def chromium(tmp_path):
    browser = Chromium(tmp_path / "chromium-profile")
    yield browser
    browser.close()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


# Every image result shown through the report's own viewer (the global `app` of its React UI),
# then decoded; every HTML result fetched and parsed. Returns counts and failures.
SHOW_EVERY_RESULT = r"""
(async () => {
  const sleep = ms => new Promise(done => setTimeout(done, ms));
  const out = {images: 0, html: 0, failures: []};
  for (const [path, result] of Object.entries(results)) {
    if (result.mime_type.startsWith("image/")) {
      app.setView({content: "img", contentPath: result.data_uri, resultPath: path});
      let img;
      for (let i = 0; i < 500 && !img; i++) {
        await sleep(20);
        img = Array.from(document.images).find(e => e.src === result.data_uri);
      }
      if (!img) { out.failures.push(path + ": not shown"); continue; }
      try { await img.decode(); } catch (err) { out.failures.push(path + ": " + err); continue; }
      const drawn = img.complete && img.naturalWidth > 0 && img.naturalHeight > 0;
      if (!drawn) out.failures.push(path + ": empty");
      out.images++;
    } else if (result.mime_type === "text/html") {
      app.setView({content: "html", contentPath: result.data_uri, resultPath: path});
      const page = new DOMParser().parseFromString(await (await fetch(result.data_uri)).text(), "text/html");
      if (!page.querySelector("table")) out.failures.push(path + ": no table");
      out.html++;
    }
  }
  return out;
})()
"""

# Every <img> of a plain page, decoded.
CHECK_PAGE_IMAGES = r"""
(async () => {
  const failures = [];
  for (const img of Array.from(document.images)) {
    try { await img.decode(); } catch (err) { failures.push(img.alt || img.src.slice(0, 40)); continue; }
    if (!(img.naturalWidth > 0)) failures.push(img.alt);
  }
  return failures;
})()
"""


@pytest.mark.slow
@pytest.mark.browser
def test_report_loads_in_chromium_without_script_errors_and_its_images_render(finished_report, chromium):
    html = (finished_report / "report.html").read_text()
    n_images = sum(r["mime_type"].startswith("image/") for r in report_variable(html, "results").values())
    session = chromium.open((finished_report / "report.html").as_uri())
    assert (
        chromium.evaluate(session, "document.querySelector('#app').children.length") > 0
    )  # the app rendered
    # the first page opens on the overview table; the rule graph comes after it, not first
    overview_top, graph_top = chromium.evaluate(
        session,
        "[document.querySelector('table.pcamflow-overview').getBoundingClientRect().top,"
        " document.querySelector('#rulegraph').getBoundingClientRect().top]",
    )
    assert overview_top < 150 < graph_top
    shown = chromium.evaluate(session, SHOW_EVERY_RESULT)
    assert shown["failures"] == []
    assert shown["images"] == n_images > 5
    assert shown["html"] > 0
    assert chromium.errors() == []


@pytest.mark.browser
def test_the_browser_check_catches_script_errors_and_broken_images(tmp_path, chromium):
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><img alt='broken' src='data:image/png;base64,iVBORw0KGgo='>"
        "<script>notDefinedAnywhere();</script></body></html>"
    )
    session = chromium.open(page.as_uri())
    assert chromium.evaluate(session, CHECK_PAGE_IMAGES) == ["broken"]
    assert any("notDefinedAnywhere" in error for error in chromium.errors())


# ---------------------------------------------------------------- one click on a details link

# Clicks a details link of the first page once (a real click on the <a>) and reads what the report
# then shows: the table of an HTML result (its iframe), an image, or the text of another file.
CLICK_DETAILS = r"""
(async (name) => {
  const sleep = ms => new Promise(done => setTimeout(done, ms));
  const links = Array.from(document.querySelectorAll('table.pcamflow-overview a'));
  const link = links.find(a => a.textContent === name);
  if (!link) return {error: "no details link " + name};
  const path = Object.keys(results).find(k => k.endsWith('/' + name));
  link.click();
  for (let i = 0; i < 200; i++) {
    await sleep(25);
    const frame = document.querySelector('iframe');
    if (frame && frame.src.startsWith('data:')) {
      const page = new DOMParser().parseFromString(await (await fetch(frame.src)).text(), 'text/html');
      return {shown: 'html', table: page.querySelector('table') ? page.querySelector('table').innerText : null};
    }
    const img = Array.from(document.images).find(e => e.src === results[path].data_uri);
    if (img) { await img.decode(); return {shown: 'img', width: img.naturalWidth}; }
    const pre = document.querySelector('pre');
    if (pre && pre.innerText) return {shown: 'text', text: pre.innerText};
  }
  return {error: "nothing shown after clicking " + name};
})
"""


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize(
    ("name", "shown", "expect"),
    [
        ("evaluate.html", "html", "majority class"),
        ("train.png", "img", None),
        ("runs.csv", "text", "run_dir"),
    ],
)
def test_one_click_on_a_details_link_shows_what_it_names(finished_report, chromium, name, shown, expect):
    session = chromium.open((finished_report / "report.html").as_uri())
    # the overview leads the page; the rule graph below it is small
    graph = chromium.evaluate(session, "document.querySelector('#rulegraph').getBoundingClientRect().width")
    assert 0 < graph <= 500
    result = chromium.evaluate(session, f"({CLICK_DETAILS})({json.dumps(name)})")
    assert result.get("shown") == shown, result
    if shown == "img":
        assert result["width"] > 0
    else:
        assert expect in result["table" if shown == "html" else "text"], result
    assert chromium.errors() == []
