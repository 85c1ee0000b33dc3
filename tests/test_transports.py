"""
The shared pieces of the transports (L{evsrv.transports}): host names are
checked before anything resolves them, and every resolution ends in time.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock

from evsrv.interfaces import BadSocket
from evsrv.transports import RESOLVE_DEADLINE, check_host_name, resolve_once


class Resolver(Clock):
    """
    A clock whose resolver answers as the test says; C{None}: never.
    """

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.asked = []

    def resolve(self, name, timeout=None):
        self.asked.append(name)
        if self.answer is None:
            return Deferred()
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)


def outcome(d):
    results = []
    d.addBoth(results.append)
    return results


@pytest.mark.parametrize("name, ascii_form", [
    ("example.com", "example.com"),
    ("Example.COM.", "example.com"),
    ("my_service.internal", "my_service.internal"),
    ("localhost", "localhost"),
    ("b\u00fccher.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
    (".".join(["a" * 63] * 3) + "." + "a" * 61, ".".join(["a" * 63] * 3) + "." + "a" * 61),
])
def test_host_names_that_pass(name, ascii_form):
    assert check_host_name(name) == ascii_form


@pytest.mark.parametrize("name, reason", [
    ("", "empty host name"),
    (".", "empty host name"),
    ("a..b", "empty label"),
    (".a", "empty label"),
    ("a" * 64, "label longer than 63"),
    (".".join(["a" * 63] * 4), "longer than 253"),
    ("x" * 100000, "longer than 253"),
    ("-a.example", "starting or ending with '-'"),
    ("a-.example", "starting or ending with '-'"),
    ("a b", "character ' '"),
    ("a/b", "character '/'"),
    ("a@b", "character '@'"),
    ("a\x00b", "character '\\x00'"),
    ("xn--\u00e9", "IDNA"),
    ("\u00e9" * 70, "IDNA"),
    ("a\udcffb", "IDNA"),
])
def test_host_names_that_are_refused(name, reason):
    with pytest.raises(BadSocket) as refused:
        check_host_name(name)
    assert reason in str(refused.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_host_name_or_a_bad_socket(text):
    try:
        name = check_host_name(text)
    except BadSocket:
        return
    assert name.isascii() and 0 < len(name) <= 253


def test_a_bad_name_never_reaches_the_resolver():
    resolver = Resolver("192.0.2.1")
    with pytest.raises(BadSocket):
        resolve_once(resolver, "a..b", lambda ip: ip)
    assert resolver.asked == []


def test_the_resolver_gets_the_ascii_form():
    resolver = Resolver("192.0.2.1")
    assert outcome(resolve_once(resolver, "B\u00fccher.example.", lambda ip: ip)) == \
        ["192.0.2.1"]
    assert resolver.asked == ["xn--bcher-kva.example"]


def test_ip_literals_are_not_resolved():
    resolver = Resolver(None)
    assert resolve_once(resolver, "2001:db8::1", lambda ip: ("made", ip)) == \
        ("made", "2001:db8::1")
    assert resolver.asked == []


def test_a_resolver_that_never_answers_is_cut_off_at_the_deadline():
    resolver = Resolver(None)
    results = outcome(resolve_once(resolver, "slow.example", lambda ip: ip))
    resolver.advance(RESOLVE_DEADLINE - 0.1)
    assert results == []
    resolver.advance(0.1)
    assert results[0].check(BadSocket)
    assert str(results[0].value) == \
        f"cannot resolve 'slow.example': no answer within {RESOLVE_DEADLINE:g} s"
    assert resolver.getDelayedCalls() == []


def test_a_failed_resolution_is_a_bad_socket_at_once():
    resolver = Resolver(DNSLookupError("nowhere.invalid"))
    results = outcome(resolve_once(resolver, "nowhere.invalid", lambda ip: ip))
    assert results[0].check(BadSocket)
    assert str(results[0].value).startswith("cannot resolve 'nowhere.invalid'")
    assert resolver.getDelayedCalls() == []


def test_a_resolver_that_raises_is_a_bad_socket():
    class Broken(Clock):
        def resolve(self, name, timeout=None):
            raise UnicodeError("label empty or too long")
    results = outcome(resolve_once(Broken(), "fine.example", lambda ip: ip))
    assert results[0].check(BadSocket)
    assert "label empty or too long" in str(results[0].value)


def test_a_subscribe_whose_name_never_resolves_is_answered(server):
    # through the MI of a real in-process server: the resolver hangs, the
    # client still gets its 400 at the deadline
    resolver = Resolver(None)
    server.transports["udp"].reactor = resolver
    replies = outcome(server.dispatcher.handle(
        b'{"jsonrpc":"2.0","method":"event_subscribe",'
        b'"params":["E_TEST","udp:hangs.example:5000",60],"id":7}'))
    assert replies == []
    resolver.advance(RESOLVE_DEADLINE)
    assert replies == [
        b'{"jsonrpc":"2.0","error":{"code":400,"message":"Bad parameter value","data":'
        b'"cannot resolve \'hangs.example\': no answer within 5 s"},"id":7}']
