"""The checks a state-changing web request passes before its body is read."""
import logging
import socket

import pytest

from donkey_saliency.web.guard import AllowedHosts, RefusalLog, declared_length, host_name, json_fields, same_origin

HOST = "car.local:8887"


def test_a_page_of_the_car_itself_may_write():
    assert same_origin({"Origin": "http://car.local:8887"}, HOST)
    assert same_origin({"Origin": "http://CAR.local:8887"}, HOST)
    assert same_origin({"Referer": "http://car.local:8887/saliency"}, HOST)


def test_another_site_or_port_or_scheme_may_not():
    for claimed in ("http://evil.example", "http://car.local:8888", "file://car.local:8887", "null", "http://"):
        assert not same_origin({"Origin": claimed}, HOST), claimed
    assert not same_origin({"Referer": "http://evil.example/page"}, HOST)
    assert not same_origin({"Origin": "http://evil.example", "Referer": "http://car.local:8887/"}, HOST)


def test_a_request_with_neither_header_is_a_script_unless_an_origin_is_required():
    assert same_origin({}, HOST)
    assert not same_origin({}, HOST, origin_required=True)
    # Where the Origin is required a Referer does not stand in for it.
    assert not same_origin({"Referer": "http://car.local:8887/"}, HOST, origin_required=True)
    assert same_origin({"Origin": "http://car.local:8887"}, HOST, origin_required=True)


def test_declared_length():
    assert declared_length({}, 10) == 0
    assert declared_length({"Content-Length": "7"}, 10) == 7
    assert declared_length({"Content-Length": "lots"}, 10) == 11


def test_host_name_strips_the_port_and_refuses_what_is_not_a_host():
    assert host_name("Car.Local:8887") == "car.local"
    assert host_name("[::1]:8887") == "::1" and host_name("[::1]") == "::1"
    assert host_name("example.com.") == "example.com"
    for bad in ("", "a:b", "[::1", "[::1]x", ":8887"):
        assert host_name(bad) == "", bad


def test_allowed_hosts_are_loopback_this_machine_and_the_allow_list():
    hosts = AllowedHosts(["mycar.lan", ".home.arpa"])
    for host in ("localhost:8887", "127.0.0.1:8887", "127.8.9.1", "[::1]:8887", "app.localhost",
                 socket.gethostname() + ":8887", socket.gethostname().split(".")[0] + ".local:8887",
                 "MyCar.lan:8887", "car.home.arpa", "home.arpa"):
        assert hosts.allows(host), host
    # A rebound name, an address this request did not arrive at, an empty or broken Host: refused.
    for host in ("evil.example:8887", "mycar.lan.evil.example", "xhome.arpa", "10.1.2.3:8887", "", "[::1"):
        assert not hosts.allows(host), host
    assert hosts.allows("10.1.2.3:8887", local_address="10.1.2.3")
    assert hosts.allows("10.1.2.3", local_address="::ffff:10.1.2.3")  # a dual-stack socket's name for it
    assert AllowedHosts(["*"]).allows("anything.example")
    assert AllowedHosts("mycar.lan").allows("mycar.lan") and not AllowedHosts("mycar.lan").allows("m")


def test_refusals_are_logged_at_most_once_a_period_with_the_count(caplog):
    now = [100.0]
    log = RefusalLog(logging.getLogger("test.refusals"), every_s=60, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="test.refusals"):
        assert log.refused("host", "Host 'a'")
        assert not any(log.refused("host", "Host 'b'") for _ in range(99))
        assert log.refused("slow", "a slow client")  # another kind has its own line
        now[0] += 61
        assert log.refused("host", "Host 'c'")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and log.counts == {"host": 101, "slow": 1}
    assert "Host 'c'" in lines[2] and "99 more like it in the last 61 s" in lines[2]


DELETE = [("index", int), ("deleted", bool)]


def test_a_body_is_one_flat_object_with_exactly_the_expected_keys_and_types():
    assert json_fields(b' {"deleted": true, "index": 3}\r\n', DELETE) == [3, True]
    assert json_fields(b'{"on": false}', [("on", bool)]) == [False]
    for bad in (b"", b"{", b"[3]", b"\xff", b'{"index": "3", "deleted": true}', b'{"index": 3, "deleted": 1}',
                b'{"index": true, "deleted": true}', b'{"index": 3}', b'{"index": 3, "deleted": true, "x": 0}',
                b'{"index": 3, "deleted": {"a": true}}', b'{"index": [3], "deleted": true}', b'{"index": 3.0, "deleted": true}'):
        with pytest.raises(ValueError):
            json_fields(bad, DELETE)


def test_a_deep_body_never_reaches_the_parser(monkeypatch):
    """A bracket beyond the object's own refuses the body before json.loads sees it (donkeycar raises
    the recursion limit: a deep body must never reach a parser)."""
    import json

    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    for deep in (b"[" * 900, b'{"on": ' + b"[" * 900 + b"}", b"{" * 900 + b"}" * 900):
        with pytest.raises(ValueError):
            json_fields(deep, [("on", bool)])
