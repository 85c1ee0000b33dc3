# -*- test-case-name: tests.test_status_page -*-
"""
The status page (C{GET [http] status_path}, default C{/status}): a small
read-only HTML view of the events, the live subscribers with their TTL
counting down, the per-transport notification counters and the last raised
events. It reloads itself every L{REFRESH} seconds (meta refresh); a few
lines of inline script count the TTLs down in between.

Every value shown comes from clients (event names, sockets, params, error
texts) and is HTML-escaped; the inline script is allowed by a per-response
CSP nonce, so nothing injected could run even if escaping were missed.
Built from in-memory state at each request: it never waits on a peer, and
it reads without changing anything (expired subscriptions are skipped, not
swept). A server with many subscribers shows the first L{MAX_SUBSCRIBERS}
only (the MI's C{subscribers_list} over HTTP has them all).
"""

import json
import os
import re
import time
from base64 import b64encode
from html import escape

from twisted.web.resource import Resource

from evsrv import __version__
from evsrv.http.mi import method_not_allowed


REFRESH = 5              # seconds between reloads of the page
MAX_SUBSCRIBERS = 500    # rows of the subscribers table; the rest are counted
MAX_PARAMS_TEXT = 300    # characters of a raise's params shown

_NOTIFICATIONS = re.compile(r"evi_(.+):notifications_(sent|failed|dropped)\Z")

_STYLE = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; }
"""

# Counts the TTL cells down between reloads; reads only data-ttl numbers.
_SCRIPT = """
(function () {
  var start = Date.now();
  function tick() {
    var elapsed = Math.floor((Date.now() - start) / 1000);
    document.querySelectorAll("td.ttl[data-ttl]").forEach(function (cell) {
      var left = parseInt(cell.getAttribute("data-ttl"), 10) - elapsed;
      cell.textContent = left > 0 ? String(left) : "expired";
    });
  }
  setInterval(tick, 1000);
})();
"""


def _e(value) -> str:
    return escape(str(value), quote=True)


def params_text(params) -> str:
    """
    C{name=value, ...} (values as JSON) or C{value, ...}, cut to
    L{MAX_PARAMS_TEXT} characters.
    """
    parts = []
    for param in params:
        value = json.dumps(param.value, ensure_ascii=False)
        parts.append(value if param.name is None else f"{param.name}={value}")
    text = ", ".join(parts)
    if len(text) > MAX_PARAMS_TEXT:
        text = text[:MAX_PARAMS_TEXT - 1] + "\u2026"
    return text


def _utc(seconds) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + "Z"


class StatusResource(Resource):
    """
    C{GET} (and C{HEAD}): the page; other methods 405.

    @param clock: the reactor (for TTLs and the raise times).
    """
    isLeaf = True

    def __init__(self, statistics, evi, clock):
        super().__init__()
        self.statistics = statistics
        self.evi = evi
        self.clock = clock

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET", b"HEAD")
        nonce = b64encode(os.urandom(12)).decode()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy",
                          f"default-src 'none'; style-src 'unsafe-inline'; "
                          f"script-src 'nonce-{nonce}'".encode())
        return self.page(nonce).encode("utf-8")

    def page(self, nonce: str) -> str:
        now = self.clock.seconds()
        out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
               f'<meta http-equiv="refresh" content="{REFRESH}">',
               f"<title>evsrv status</title><style>{_STYLE}</style></head><body>",
               f"<h1>evsrv {_e(__version__)}</h1>",
               f'<p class="muted">as of {_e(_utc(now))}; reloads every {REFRESH} s</p>']
        out += self._events()
        out += self._subscribers(now)
        out += self._transports()
        out += self._raises()
        out.append(f'<script nonce="{_e(nonce)}">{_SCRIPT}</script></body></html>')
        return "\n".join(out)

    def _events(self):
        rows = ['<h2>Events</h2><table id="events"><thead><tr><th>event</th>'
                "<th>subscribers</th><th>raised</th></tr></thead><tbody>"]
        for event in sorted(self.evi.events, key=lambda e: e.name):
            rows.append(f"<tr><td>{_e(event.name)}</td>"
                        f'<td class="num">{len(event.subscriptions)}</td>'
                        f'<td class="num">{event.raised}</td></tr>')
        rows.append("</tbody></table>")
        return rows

    def _subscribers(self, now):
        rows = ['<h2>Subscribers</h2><table id="subscribers"><thead><tr><th>event</th>'
                "<th>socket</th><th>transport</th><th>TTL (s)</th><th>sent</th>"
                "<th>failed</th><th>dropped</th><th>last error</th></tr></thead><tbody>"]
        shown = more = 0
        for event in sorted(self.evi.events, key=lambda e: e.name):
            for sub in reversed(event.subscriptions.values()):
                ttl = sub.ttl(now)
                if ttl is not None and ttl <= 0:
                    continue  # expired, not yet swept
                if shown >= MAX_SUBSCRIBERS:
                    more += 1
                    continue
                shown += 1
                ttl_cell = ('<td class="num ttl">never</td>' if ttl is None else
                            f'<td class="num ttl" data-ttl="{ttl}">{ttl}</td>')
                error = sub.last_error
                rows.append(f"<tr><td>{_e(event.name)}</td><td>{_e(sub.socket)}</td>"
                            f"<td>{_e(sub.transport.name)}</td>{ttl_cell}"
                            f'<td class="num">{sub.sent}</td><td class="num">{sub.failed}</td>'
                            f'<td class="num">{sub.dropped}</td>'
                            f"<td>{_e(error) if error else ''}</td></tr>")
        rows.append("</tbody></table>")
        if more:
            rows.append(f'<p class="muted">and {more} more (the MI\'s subscribers_list '
                        "has them all)</p>")
        return rows

    def _transports(self):
        counts = {}
        for stat in self.statistics.kinds():
            match = _NOTIFICATIONS.match(stat)
            if match:
                counts.setdefault(match.group(1), {})[match.group(2)] = \
                    self.statistics.value(stat)
        rows = ['<h2>Transports</h2><table id="transports"><thead><tr><th>transport</th>'
                "<th>sent</th><th>failed</th><th>dropped</th></tr></thead><tbody>"]
        for name in sorted(counts):
            c = counts[name]
            rows.append(f"<tr><td>{_e(name)}</td>"
                        + "".join(f'<td class="num">{c.get(k, 0)}</td>'
                                  for k in ("sent", "failed", "dropped")) + "</tr>")
        rows.append("</tbody></table>")
        return rows

    def _raises(self):
        recent = self.evi.recent_raises
        rows = [f"<h2>Last {recent.maxlen} raised events</h2>"
                '<table id="raises"><thead><tr><th>time</th><th>event</th><th>params</th>'
                "<th>subscribers</th><th>delivered</th><th>failed</th><th>dropped</th>"
                "</tr></thead><tbody>"]
        for at, name, params, report in reversed(recent):
            rows.append(f"<tr><td>{_e(_utc(at))}</td><td>{_e(name)}</td>"
                        f"<td>{_e(params_text(params))}</td>"
                        f'<td class="num">{report.subscribers}</td>'
                        f'<td class="num">{report.delivered}</td>'
                        f'<td class="num">{report.failed}</td>'
                        f'<td class="num">{report.dropped}</td></tr>')
        rows.append("</tbody></table>")
        return rows
