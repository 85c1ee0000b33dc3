"""
The status page: rendered from the server's state (unit tests on a Clock),
served on the HTTP site of an in-process server, and rendered by a real
headless Chromium against a real server process.
"""

import json
import os
import re
import shutil
import socket
import subprocess

import pytest
import pytest_twisted

from evsrv.http.status import MAX_SUBSCRIBERS, StatusResource
from evsrv.testing import memory_evi
from tests.conftest import BASE_INI
from tests.test_http_mi import HTTP_INI, Client

HOSTILE = '<img src=x onerror="alert(1)">&amp;'


@pytest.fixture
def client():
    c = Client()
    yield c
    pytest_twisted.blockon(c.pool.closeCachedConnections())


def _page(evi, clock):
    return StatusResource(evi.statistics, evi, clock).page("NONCE")


def test_page_shows_state_and_counts_ttl_down():
    evi, clock, transport = memory_evi("E_X", "E_Y", recent=2)
    clock.advance(1000)
    evi.subscribe("E_X", "test:a", 60)
    evi.subscribe("E_X", "test:forever")
    evi.subscribe("E_Y", "test:b", 10)
    for n in range(3):
        evi.raise_event("E_X", {"n": n})
    html = _page(evi, clock)
    assert re.search(r'<td class="num ttl" data-ttl="60">60</td>', html)
    assert '<td class="num ttl">never</td>' in html
    assert "<td>E_X</td><td>test:a</td><td>test</td>" in html
    # the ring keeps the last 2, newest first
    assert html.index("n=2") < html.index("n=1")
    assert "n=0" not in html
    assert "Last 2 raised events" in html
    clock.advance(15)
    html = _page(evi, clock)
    assert 'data-ttl="45">45</td>' in html
    assert "test:b" not in html  # expired: skipped, and not swept by a read
    assert len(evi.event("E_Y").subscriptions) == 1


def test_page_escapes_client_values():
    evi, clock, transport = memory_evi("E_X", recent=5)
    evi.subscribe("E_X", "test:" + HOSTILE, 60)
    transport.fail.add("test:" + HOSTILE)
    evi.raise_event("E_X", {"who": HOSTILE})
    evi.raise_event("E_X", [HOSTILE, 7])
    html = _page(evi, clock)
    assert "<img" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;amp;" in html
    assert "refused by test" in html
    # the only script is the page's own, with the response's nonce
    assert html.count("<script") == 1 and '<script nonce="NONCE">' in html


def test_many_subscribers_are_capped():
    evi, clock, transport = memory_evi("E_X")
    for n in range(MAX_SUBSCRIBERS + 7):
        evi.subscribe("E_X", f"test:{n}", 60)
    html = _page(evi, clock)
    assert html.count('class="num ttl"') == MAX_SUBSCRIBERS
    assert "and 7 more" in html


@pytest_twisted.inlineCallbacks
def test_served_on_http_site(server_factory, client, udp_collector):
    server = server_factory(HTTP_INI)
    peer = udp_collector()
    yield server.evi.subscribe("E_TEST", "udp:%s:%d" % peer.address, 300)
    yield server.evi.raise_event("E_TEST", {"who": HOSTILE})
    yield peer.next()
    response, data = yield client.request(b"GET", server.http_url("/status"))
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    csp = headers.getRawHeaders(b"content-security-policy")[0].decode()
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    html = data.decode()
    assert f'<script nonce="{nonce}">' in html
    assert "udp:127.0.0.1:%d" % peer.address[1] in html
    assert "<img" not in html
    assert re.search(r"<td>udp</td>(<td class=\"num\">\d+</td>){3}", html)
    response, _ = yield client.request(b"POST", server.http_url("/status"), b"x")
    assert response.code == 405


@pytest_twisted.inlineCallbacks
def test_status_path_off(server_factory, client):
    server = server_factory(HTTP_INI + "status_path =\n")
    response, _ = yield client.request(b"GET", server.http_url("/status"))
    assert response.code == 404
    assert server.evi.recent_raises.maxlen == 0


# -- headless Chromium against a real server process --------------------------

def _chromium():
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("EVSRV_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (EVSRV_REQUIRE_BROWSER=1)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _mi(address, method, params):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        sock.sendto(json.dumps({"jsonrpc": "2.0", "method": method, "id": 1,
                                "params": params}).encode(), address)
        reply = json.loads(sock.recv(65536))
    finally:
        sock.close()
    assert "result" in reply, reply
    return reply["result"]


@pytest.mark.slow
def test_rendered_in_headless_chromium(server_process, tmpdir_short, tmp_path):
    chromium = _chromium()
    proc = server_process(BASE_INI + "[http]\nlisten = 127.0.0.1:0\n")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        target = "udp:127.0.0.1:%d" % peer.getsockname()[1]
        _mi(proc.udp, "event_subscribe", ["E_TEST", target, 600])
        for n in range(3):
            _mi(proc.udp, "raise_event", ["E_TEST", json.dumps({"n": n, "who": HOSTILE})])
            peer.recv(65536)
    finally:
        peer.close()
    url = proc.http.rsplit("/", 1)[0] + "/status"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    dom = result.stdout
    assert result.returncode == 0 and "<table" in dom, result.stderr[-3000:]
    events = re.search(r'<table id="events">.*?</table>', dom, re.S).group(0)
    assert re.search(r"<td>E_TEST</td><td class=\"num\">1</td><td class=\"num\">3</td>",
                     events), events
    subscribers = re.search(r'<table id="subscribers">.*?</table>', dom, re.S).group(0)
    row = re.search(r"<tr><td>E_TEST</td><td>" + re.escape(target) +
                    r"</td><td>udp</td><td class=\"num ttl\" data-ttl=\"(\d+)\">(\w+)</td>"
                    r"<td class=\"num\">3</td>", subscribers)
    assert row, subscribers
    assert 590 <= int(row.group(1)) <= 600 and row.group(2).isdigit()
    transports = re.search(r'<table id="transports">.*?</table>', dom, re.S).group(0)
    assert re.search(r"<td>udp</td><td class=\"num\">3</td><td class=\"num\">0</td>"
                     r"<td class=\"num\">0</td>", transports), transports
    raises = re.search(r'<table id="raises">.*?</table>', dom, re.S).group(0)
    assert raises.count("<td>E_TEST</td>") == 3
    assert raises.index('n=2') < raises.index('n=0')
    # the hostile params are text in the DOM, never an element
    assert "<img" not in dom
    assert "&lt;img src=x onerror=" in raises


@pytest.mark.parametrize("text, error", [
    ("status_path = status", "URL path"),
    ("status_path = /mi", "must differ"),
    ("status_recent = 1001", "between 0 and 1000"),
    ("status_recent = x", "status_recent"),
])
def test_bad_status_settings(tmpdir_short, text, error):
    from evsrv.config import ConfigError
    from tests.conftest import make_config
    with pytest.raises(ConfigError, match=error):
        make_config(HTTP_INI + text + "\n", tmpdir_short)


def test_status_settings(tmpdir_short):
    from tests.conftest import make_config
    config = make_config(HTTP_INI + "status_path = /s\nstatus_recent = 0\n", tmpdir_short)
    assert (config.http.status_path, config.http.status_recent) == ("/s", 0)
