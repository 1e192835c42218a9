"""The checks a state-changing web request passes before its body is read."""
from donkey_saliency.requests_guard import declared_length, same_origin

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
