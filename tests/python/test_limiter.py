"""sluice.Limiter on the memory store: decisions, policies, limits, errors, threads."""

import threading

import pytest

import sluice


def test_first_allowed_limit_th_allowed_next_denied():
    """Verifies the shape of a window's decisions: limit-1 left, then 0, then a denial."""
    lim = sluice.Limiter("memory://", {"chat": "3/1m"})
    first = lim.acquire("chat", "user:1")
    assert first.allowed and first.limit == 3 and first.remaining == 2
    assert first.retry_after == 0.0 and first.fallback is None and not first.shadow
    lim.acquire("chat", "user:1")
    third = lim.acquire("chat", "user:1")
    assert third.allowed and third.remaining == 0
    denied = lim.acquire("chat", "user:1")
    assert not denied and not denied.allowed and denied.remaining == 0
    assert 0.0 < denied.retry_after <= 60.0
    assert 0.0 < denied.reset_after <= 60.0


def test_peek_spends_nothing():
    """Verifies that peek answers what acquire would, and leaves the key as it was."""
    lim = sluice.Limiter(policies={"p": "2/1h"})
    lim.acquire("p", "k")
    for _ in range(3):
        assert lim.peek("p", "k").remaining == 1
    assert lim.acquire("p", "k").remaining == 0
    assert not lim.peek("p", "k").allowed


def test_reset_forgets_the_key():
    """Verifies that a reset key has its full limit again, and other keys are untouched."""
    lim = sluice.Limiter(policies={"p": "1/1h"})
    lim.acquire("p", "a")
    lim.acquire("p", "b")
    assert not lim.acquire("p", "a")
    assert lim.reset("p", "a") is None
    assert lim.acquire("p", "a").allowed
    assert not lim.acquire("p", "b")


def test_inline_limits_string_and_tuple_share_unscoped_keys():
    """Verifies inline limits: "2/1m" and (2, 60.0) are the same unscoped policy."""
    lim = sluice.Limiter(policies={"named": "2/1m"})
    assert lim.acquire("2/1m", "k").remaining == 1
    assert lim.acquire((2, 60.0), "k").remaining == 0
    assert not lim.acquire((2, 60), "k")
    # A named policy scopes its keys: the same key there is untouched.
    assert lim.acquire("named", "k").remaining == 1
    assert lim.acquire("10 per minute", "k2").limit == 10


@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_counter", "gcra"])
def test_every_algorithm_by_name(algorithm):
    """Verifies each algorithm admits exactly the limit of a fresh key, then denies."""
    lim = sluice.Limiter(policies={"p": {"limit": (5, 60.0), "algorithm": algorithm}})
    decisions = [lim.acquire("p", b"key") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].retry_after > 0


def test_shadow_policy_answers_allowed_and_says_so():
    """Verifies that a shadow policy's denial is answered allowed with shadow=True."""
    lim = sluice.Limiter(policies={"s": {"limit": "1/1h", "shadow": True}})
    assert not lim.acquire("s", "k").shadow
    d = lim.acquire("s", "k")
    assert d.allowed and d.shadow and d.retry_after == 0.0


def test_deny_cache_policy_denies_as_the_store_did():
    """Verifies that a deny_cache policy's repeated denials look like the store's: denied,
    nothing remaining, the wait counting down; a smaller cost is still decided by the store."""
    lim = sluice.Limiter(policies={"d": {"limit": "4/1h", "deny_cache": True}})
    assert lim.acquire("d", "k", 3)
    first = lim.acquire("d", "k", 2)
    assert not first and first.retry_after > 3500
    again = lim.acquire("d", "k", 2)
    assert not again and again.remaining == 0 and again.retry_after <= first.retry_after
    assert lim.acquire("d", "k", 1)  # the last unit: below the cost seen denied
    lim.reset("d", "k")
    assert lim.acquire("d", "k", 4)


def test_cost_spends_units():
    """Verifies that a cost spends that many units."""
    lim = sluice.Limiter(policies={"p": "10/1m"})
    assert lim.acquire("p", "k", cost=4).remaining == 6
    assert lim.acquire("p", "k", 6).remaining == 0
    assert not lim.acquire("p", "k", cost=1)


def test_str_and_bytes_keys_are_the_same_utf8_key():
    """Verifies that a str key is its UTF-8 bytes."""
    lim = sluice.Limiter(policies={"p": "2/1m"})
    lim.acquire("p", "caf\u00e9")
    assert lim.acquire("p", "caf\u00e9".encode()).remaining == 0


def test_decision_is_immutable_comparable_and_printable():
    """Verifies Decision: read-only fields, no new attributes, ==, hash and repr."""
    d = sluice.Limiter().acquire("1/1s", "k")
    with pytest.raises(AttributeError):
        d.allowed = False
    with pytest.raises(AttributeError):
        d.extra = 1
    same = sluice.Decision(allowed=True, limit=1, remaining=0, reset_after=d.reset_after)
    assert d == same and hash(d) == hash(same)
    assert d != sluice.Decision(allowed=False, limit=1, remaining=0)
    assert repr(d).startswith("Decision(allowed=True, limit=1, remaining=0, retry_after=0.0")
    assert d != (True, 1, 0) and not bool(sluice.Decision(allowed=False, limit=1, remaining=0))
    assert {d, same} == {d}
    fell_back = sluice.Decision(allowed=True, limit=5, remaining=5, fallback="allow")
    assert fell_back.fallback == "allow" and fell_back != sluice.Decision(
        allowed=True, limit=5, remaining=5)
    assert repr(fell_back).endswith("fallback='allow', shadow=False)")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"limit": 1, "remaining": 0}, TypeError, "allowed, limit and remaining"),
        ({"allowed": True, "limit": "1", "remaining": 0}, TypeError, "must be int"),
        ({"allowed": True, "limit": 1, "remaining": 0, "fallback": "maybe"}, ValueError,
         "fallback"),
        ({"allowed": True, "limit": 1, "remaining": 0, "retry_after": "soon"}, TypeError, ""),
        ({"allowed": True, "limit": 1, "remaining": 0, "colour": 1}, TypeError, "colour"),
        ({"allowed": True, "limit": 2**70, "remaining": 0}, OverflowError, ""),
    ],
)
def test_decision_constructor_checks_its_arguments(kwargs, error, match):
    """Verifies that Decision(...) refuses missing, mistyped and unknown arguments."""
    with pytest.raises(error, match=match):
        sluice.Decision(**kwargs)
    with pytest.raises(TypeError, match="positional"):
        sluice.Decision(True, 1, 0)


@pytest.mark.parametrize(
    "call, message, code",
    [
        (lambda l: l.acquire("p", "k", cost=-1), "cost", "invalid_cost"),
        (lambda l: l.acquire("p", "k", cost=0), "cost", "invalid_cost"),
        (lambda l: l.acquire("p", "k", cost=11), "exceeds", "cost_exceeds_limit"),
        (lambda l: l.acquire("10/fortnight", "k"), "fortnight", "invalid_limit"),
        (lambda l: l.acquire((0, 60.0), "k"), "count", "invalid_limit"),
        (lambda l: l.acquire((1, float("nan")), "k"), "", "invalid_limit"),
        (lambda l: l.acquire("p", ""), "", "invalid_key"),
        (lambda l: l.acquire("p", "x" * 5000), "", "invalid_key"),
        (lambda l: l.peek("p", b"y" * 5000), "", "invalid_key"),
    ],
)
def test_bad_input_is_a_value_error_with_sluices_message(call, message, code):
    """Verifies that bad input raises ValueError carrying sluice's message and code."""
    lim = sluice.Limiter(policies={"p": "10/1m"})
    with pytest.raises(ValueError, match=message) as info:
        call(lim)
    assert info.value.code == code
    assert str(info.value)


def test_huge_key_message_names_the_length():
    """Verifies the memory store's key-length error reaches Python as sluice says it."""
    lim = sluice.Limiter(policies={"p": "10/1m"})
    with pytest.raises(ValueError) as info:
        lim.acquire("p", "x" * 5000)
    assert "1024" in str(info.value) or "long" in str(info.value)


def test_wrong_types_are_type_errors():
    """Verifies that keys, costs, limits and policies of the wrong type raise TypeError."""
    lim = sluice.Limiter(policies={"p": "10/1m"})
    with pytest.raises(TypeError, match="key must be str or bytes, not int"):
        lim.acquire("p", 42)
    with pytest.raises(TypeError):
        lim.acquire("p", "k", cost="1")
    with pytest.raises(TypeError):
        lim.acquire("p", "k", cost=2**70)
    with pytest.raises(TypeError):
        lim.acquire(3.5, "k")
    with pytest.raises(TypeError):
        lim.acquire(("10", 60), "k")
    with pytest.raises(TypeError):
        sluice.Limiter(policies={"p": {"limit": "1/1s", "shadow": "yes"}})
    with pytest.raises(TypeError, match="deny_cache must be a bool, not str"):
        sluice.Limiter(policies={"p": {"limit": "1/1s", "deny_cache": "true"}})
    with pytest.raises(TypeError):
        sluice.Limiter(policies=["p"])


def test_unknown_policy_is_a_lookup_error():
    """Verifies that a name no policy has raises UnknownPolicyError (a LookupError)."""
    lim = sluice.Limiter(policies={"p": "10/1m"})
    with pytest.raises(sluice.UnknownPolicyError, match='no policy named "q"') as info:
        lim.acquire("q", "k")
    assert isinstance(info.value, LookupError) and info.value.code == "unknown_policy"
    with pytest.raises(LookupError):
        lim.reset("q", "k")


@pytest.mark.parametrize(
    "policies, match",
    [
        ({"p": {"limit": "1/1s", "algorithm": "leaky"}}, "leaky"),
        ({"p": {"limit": "1/1s", "on_failure": "maybe"}}, "maybe"),
        ({"p": {"limit": "1/1s", "burst": 3}}, "burst"),
        ({"p": {"algorithm": "gcra"}}, "limit is required"),
        ({"bad name": "1/1s"}, "bad name"),
    ],
)
def test_bad_policies_are_value_errors(policies, match):
    """Verifies that a bad policy is refused when the limiter is built, naming the problem."""
    with pytest.raises(ValueError, match=match):
        sluice.Limiter(policies=policies)


def test_bad_store_uris():
    """Verifies a bad URI is a ValueError and the store is described without credentials."""
    with pytest.raises(ValueError) as info:
        sluice.Limiter("nosuch://x")
    assert info.value.code == "invalid_store_uri"
    assert sluice.Limiter("memory://").store.startswith("memory://")


def test_threads_racing_admit_exactly_the_limit():
    """Verifies 8 threads racing 1,000 acquires on one key, limit 100, admit exactly 100."""
    lim = sluice.Limiter(policies={"p": "100/1h"})
    admitted = []
    start = threading.Barrier(8)

    def worker():
        start.wait()
        n = sum(1 for _ in range(125) if lim.acquire("p", "shared"))
        admitted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(admitted) == 8
    assert sum(admitted) == 100


def test_acquire_all_is_all_or_nothing():
    """Verifies acquire_all: admitted while every limit admits, then denied as a whole with
    the other limits uncharged; cost 0 only checks."""
    lim = sluice.Limiter(policies={"user": "2/1m", "ip": "3/1m"})
    items = [("user", "u1"), ("ip", b"10.0.0.1"), ("10/1h", "u1", 0)]
    for left in (1, 0):
        ds = lim.acquire_all(items)
        assert [d.allowed for d in ds] == [True, True, True]
        assert ds[0].remaining == left and ds[2].remaining == 10
    denied = lim.acquire_all(items)
    assert [d.allowed for d in denied] == [False, True, True]
    assert denied[0].retry_after > 0
    assert lim.peek("ip", "10.0.0.1").remaining == 1  # charged twice, not three times
    with pytest.raises(ValueError, match="key"):
        lim.acquire_all([("user", "u1"), ("user", "")])
    with pytest.raises(TypeError, match="tuple"):
        lim.acquire_all([("user",)])
    with pytest.raises(TypeError):
        lim.acquire_all("user")


def test_refund_gives_back_at_most_what_was_spent():
    """Verifies refund: units come back, never past the full limit."""
    lim = sluice.Limiter(policies={"tokens": {"limit": "1000/1m", "algorithm": "gcra"}})
    assert lim.acquire("tokens", "u", 800).remaining == 200
    assert lim.refund("tokens", "u", 500).remaining == 700
    assert lim.refund("tokens", "u", 5000).remaining == 1000
    with pytest.raises(ValueError):
        lim.refund("tokens", "u", 0)
