"""The dashboard in a real headless Chromium against a real 3-node cluster.

Node 0 coordinates and serves the HTTP API with a token (no model); nodes 1
and 2 serve SmolLM2 (node 2 with the ``noisy`` adapter).  The page, opened
with the token in its URL fragment, must list the three peers and their
experts, stream an answer to a question asked from its box, and draw that
answer's trace naming the serving peer; the live query feed must show it too.
A second question through ``vote`` must draw one proposer branch per expert.
A screenshot lands in the test's tmp_path.

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/install.sh installs
them when run as root); skips cleanly without them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx
import pytest
import trio

from node.config import HttpConfig
from tests.cluster.harness import REPO_ROOT
from tests.cluster.test_query import expert_cluster

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token"
BOX_QUESTION = "Name a primary colour."

pytestmark = [
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (scripts/install.sh installs them as root)"),
    # A browser start plus a streamed generation on a loaded 2-core box: more than the default 120 s cap.
    pytest.mark.timeout(300),
]


def browser(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The system driver, given explicitly: selenium never looks one up or downloads it.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def drive(url: str, peers: dict[str, str], experts: set[str], profile: Path, screenshot: Path) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser(profile)
    try:
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        driver.get(f"{url}/#token={TOKEN}")

        def peer_rows(d):
            rows = d.find_elements(By.CSS_SELECTOR, "#peers tbody tr[data-peer-id]")
            return rows if {r.get_attribute("data-peer-id") for r in rows} == set(peers) else False

        rows = wait.until(peer_rows)
        listed = {r.get_attribute("data-peer-id"): r.text for r in rows}
        assert "token" not in driver.current_url  # the page drops the fragment once read
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))

        Select(driver.find_element(By.ID, "strategy")).select_by_value("mosaic/route")
        driver.find_element(By.ID, "question").send_keys(BOX_QUESTION)
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("12")
        # Every text the meta line shows, recorded by the page itself: a 12-token answer can stream
        # and finish between two of the driver's polls (it did, and the wait for "answering" hung).
        driver.execute_script("""
            window.metaSeen = [];
            new MutationObserver(() => window.metaSeen.push(document.getElementById("ask-meta").textContent))
              .observe(document.getElementById("ask-meta"), {childList: true, characterData: true, subtree: true});
        """)
        driver.find_element(By.ID, "ask-button").click()
        wait.until(lambda d: d.find_element(By.ID, "ask-trace").get_attribute("data-done") == "1"
                   or "error" in d.find_element(By.ID, "ask-meta").text)
        meta = driver.find_element(By.ID, "ask-meta").text
        meta_seen = driver.execute_script("return window.metaSeen")
        answer = driver.find_element(By.ID, "answer").text
        trace_peers = [e.get_attribute("data-peer") for e in driver.find_elements(By.CSS_SELECTOR, "#ask-trace [data-peer]")]
        trace_text = driver.find_element(By.ID, "ask-trace").text
        # The live feed (SSE) shows the same query, finished, with its trace.
        feed = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#queries li .status-ok ~ *") and
                          d.find_elements(By.CSS_SELECTOR, "#queries li .trace [data-peer]"))
        feed_peers = [e.get_attribute("data-peer") for e in feed]
        usage_rows = [r.get_attribute("data-peer-id") for r in driver.find_elements(By.CSS_SELECTOR, "#usage tbody tr")]

        # A fan-out strategy: its trace is a tree with one proposer step per expert, with their votes.
        Select(driver.find_element(By.ID, "strategy")).select_by_value("mosaic/vote")
        driver.find_element(By.ID, "question").clear()
        driver.find_element(By.ID, "question").send_keys("What is 2 + 2? Answer with a number.")
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("8")
        driver.execute_script("document.getElementById('ask-trace').dataset.done = ''")
        driver.find_element(By.ID, "ask-button").click()
        wait.until(lambda d: d.find_element(By.ID, "ask-trace").get_attribute("data-done") == "1"
                   or "error" in d.find_element(By.ID, "ask-meta").text)
        # ... then redrawn from the node's own record of it, whose receipts the node checked (SSE).
        wait.until(lambda d: d.find_element(By.ID, "ask-trace").get_attribute("data-checked") == "1")
        vote_meta = driver.find_element(By.ID, "ask-meta").text
        vote_steps = [(e.get_attribute("data-step"), [p.get_attribute("data-peer") for p in
                       e.find_elements(By.CSS_SELECTOR, ":scope > .head [data-peer]")])
                      for e in driver.find_elements(By.CSS_SELECTOR, "#ask-trace li.step[data-step]")]
        vote_text = driver.find_element(By.ID, "ask-trace").text
        driver.save_screenshot(str(screenshot))
        return {"listed": listed, "meta": meta, "meta_seen": meta_seen, "answer": answer, "trace_peers": trace_peers,
                "trace_text": trace_text, "feed_peers": feed_peers, "usage_rows": usage_rows,
                "vote_meta": vote_meta, "vote_steps": vote_steps, "vote_text": vote_text}
    finally:
        driver.quit()


async def test_dashboard_lists_peers_and_answers_from_the_page(base_expert, adapter_expert, tmp_path):
    with trio.fail_after(260):  # the page, then the same question from an API client and the CLI
        http = HttpConfig(listen="127.0.0.1:0", token=TOKEN)
        async with expert_cluster(base_expert, adapter_expert, http=http) as c:
            await c.coordinator.registry.wait_for(lambda r: len(r) == 3, timeout=15)
            peers = {n.peer_id: n.config.name for n in (c.coordinator, c.base, c.noisy)}
            screenshot = tmp_path / "dashboard.png"
            seen = await trio.to_thread.run_sync(
                drive, c.http.url, peers, {"node-1", "node-2"}, tmp_path / "profile", screenshot)
            # The box's first question again, from an API client and from `node query`, each with
            # nothing but the question, the strategy and the length: the coordinator must get the
            # same request settings from all three doors (issue 18: the same quality as the API).
            async with httpx.AsyncClient(timeout=120) as client:
                reply = await client.post(f"{c.http.url}/v1/chat/completions", headers={
                    "authorization": f"Bearer {TOKEN}"}, json={
                    "model": "mosaic/route", "max_tokens": 12,
                    "messages": [{"role": "user", "content": BOX_QUESTION}]})
                assert reply.status_code == 200, reply.text
            cli = await trio.run_process(
                [sys.executable, "-m", "node", "query", "--peer", c.coordinator.full_multiaddrs()[0],
                 "--max-tokens", "12", BOX_QUESTION],
                cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
            assert cli.returncode == 0, cli.stderr.decode()[-2000:]
            asked = [q for q in c.coordinator.activity.recent if q.prompt == BOX_QUESTION]

    for peer_id, name in peers.items():
        assert name in seen["listed"][peer_id]
    assert "no model" in seen["listed"][c.coordinator.peer_id]
    for expert in (c.base, c.noisy):
        assert base_expert.model_id in seen["listed"][expert.peer_id]
    assert "noisy" in seen["listed"][c.noisy.peer_id]  # its adapter, with the adapter's CID
    assert seen["answer"].strip(), seen["meta"]
    assert "error" not in seen["meta"] and "tokens" in seen["meta"]
    # While the answer streamed, the page named the serving expert from the response headers.
    answering = [t for t in seen["meta_seen"] if t.startswith("answering")]
    assert answering and any(peers[p] in answering[0] for p in (c.base.peer_id, c.noisy.peer_id)), seen["meta_seen"]
    served = [p for p in seen["trace_peers"] if p in (c.base.peer_id, c.noisy.peer_id)]
    assert served, seen["trace_text"]
    assert served[0] in seen["feed_peers"] and served[0] in seen["usage_rows"]
    assert "strategy vote" in seen["vote_meta"], seen["vote_meta"]
    step_peers = {peer for _, peers in seen["vote_steps"] for peer in peers}
    assert {c.base.peer_id, c.noisy.peer_id} <= step_peers, seen["vote_text"]  # one branch per expert
    assert "votes" in seen["vote_text"] and "proposer" in seen["vote_text"], seen["vote_text"]
    # The node checked each expert's signed receipt against the step it shows.
    assert seen["vote_text"].count("receipt verified") >= 2 and "NOT verified" not in seen["vote_text"]
    assert screenshot.stat().st_size > 10_000
    assert [q.protocol for q in asked] == ["http", "http", "libp2p"], asked  # the box, the API client, the CLI
    box, api_client, cli_client = (q.settings for q in asked)
    assert box == api_client == cli_client, asked
    assert box["temperature"] == 0.0 and box["max_new_tokens"] == 12  # greedy for a question (decoding.py)
    assert all(q.status == "ok" and q.answer.strip() for q in asked), asked
    print(f"screenshot: {screenshot}")


def test_the_query_feed_numbers_are_not_clipped(tmp_path: Path) -> None:
    """The feed is a reversed <ol> that scrolls (overflow: auto clips what sticks out of it):
    its left padding must hold the widest marker, "50. " (it keeps 50 queries); with 1.5em
    the newcomer saw "." for 18."""
    static = Path(__file__).resolve().parents[2] / "node" / "api" / "static"
    page = tmp_path / "feed.html"
    items = "".join(f"<li>query {i}</li>" for i in range(50))
    page.write_text(f'<!doctype html><link rel="stylesheet" href="{(static / "style.css").as_uri()}">'
                    f'<section><ol id="queries" reversed>{items}</ol></section>')
    driver = browser(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        padding, marker = driver.execute_script("""
            const ol = document.getElementById("queries"), li = ol.firstElementChild;
            const probe = document.createElement("span");
            probe.style.font = getComputedStyle(li).font; probe.style.whiteSpace = "pre";
            probe.textContent = "50. "; document.body.appendChild(probe);
            return [parseFloat(getComputedStyle(ol).paddingLeft), probe.getBoundingClientRect().width];
        """)
    finally:
        driver.quit()
    assert padding >= marker + 2, (padding, marker)
