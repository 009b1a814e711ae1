"""The chaos checker on hand-made records: it finds what is certain, only that, and tells lost
writes apart. Run: /usr/bin/python3 -m unittest benchmarks/chaos/test_checker.py"""

import os
import sys
import unittest

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checker  # noqa: E402
from topology import key_slot  # noqa: E402

S = 1_000_000_000  # ns in a second
BASE = 1_700_000_000 * S  # an aligned-enough wall time (a multiple of every window below)


def acq(key, t, cost=1, allowed=True, fallback=None, took=0.001, policy="p"):
    send = BASE + int(t * S)
    return (0, "acquire", policy, key, cost, send, send + int(took * S), 200, allowed, 0,
            fallback, None)


def reset(key, t, status=204, error=None, took=0.001, policy="p"):
    send = BASE + int(t * S)
    return (0, "reset", policy, key, 0, send, send + int(took * S), status, None, None, None,
            error)


def run(records, algorithm="sliding_log", count=3, window=1.0, faults=(), restarts=()):
    policies = {"p": checker.Policy("p", algorithm, count, int(window * 1e6), "deny")}
    return checker.check(sorted(records, key=lambda r: r[5]), policies, list(faults),
                         list(restarts), 100, 900, [])


def over(found):
    return [v for v in found["violations"] if v.startswith("over the limit")]


class SlidingLog(unittest.TestCase):
    # Verifies four admissions of a 3/1s key within 0.5 s are a violation.
    def test_excess_within_the_window(self):
        found = run([acq("k", t) for t in (0.0, 0.1, 0.2, 0.5)])
        self.assertEqual(len(over(found)), 1)

    # Verifies admissions spread over more than the window are not.
    def test_spread_over_the_window_is_fine(self):
        found = run([acq("k", t) for t in (0.0, 0.1, 0.2, 1.05, 1.1)])
        self.assertEqual(over(found), [])

    # Verifies an excess that depends on where in [send, recv] the store decided is counted
    # as undecided, not reported.
    def test_uncertain_timing_is_undecided(self):
        recs = [acq("k", 0.0, took=0.3), acq("k", 0.1), acq("k", 0.2), acq("k", 0.98, took=0.1)]
        found = run(recs)
        self.assertEqual(over(found), [])
        self.assertEqual(found["undecided_keys"], 1)

    # Verifies costs count as units and fallback or denied answers do not count.
    def test_costs_and_fallbacks(self):
        self.assertEqual(len(over(run([acq("k", 0.0, cost=2), acq("k", 0.1, cost=2)]))), 1)
        recs = [acq("k", 0.0, cost=2), acq("k", 0.1, cost=2, fallback="allow"),
                acq("k", 0.2, allowed=False)]
        self.assertEqual(over(run(recs)), [])

    # Verifies a reset answered 204 starts the key afresh, and admissions overlapping it are
    # left out rather than counted on either side.
    def test_reset_splits(self):
        recs = [acq("k", t) for t in (0.0, 0.1, 0.2)] + [reset("k", 0.3)] + \
               [acq("k", t) for t in (0.4, 0.5, 0.6)]
        self.assertEqual(over(run(recs)), [])
        recs.append(acq("k", 0.7))
        self.assertEqual(len(over(run(recs))), 1)
        recs = [acq("k", t) for t in (0.0, 0.1, 0.2)] + [reset("k", 0.3, took=0.2),
                                                         acq("k", 0.31, took=0.01)]
        self.assertEqual(over(run(recs)), [])

    # Verifies a reset with no answer may have happened later, and a refused one never did.
    def test_ambiguous_and_refused_resets(self):
        base = [acq("k", t) for t in (0.0, 0.1, 0.2)]
        late = [acq("k", t) for t in (0.6, 0.7, 0.8)]
        found = run(base + [reset("k", 0.3, status=0, error="timeout")] + late)
        self.assertEqual(over(found), [])
        self.assertEqual(found["ambiguous_resets"], 1)
        found = run(base + [reset("k", 0.3, status=0, error="refused")] + late)
        self.assertEqual(len(over(found)), 1)


class SlidingCounter(unittest.TestCase):
    # Verifies the aligned windows are checked: 3/1s admits 3 at the end of one second and 3
    # at the start of the next, but never 4 in one.
    def test_aligned_windows(self):
        recs = [acq("k", t) for t in (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)]
        self.assertEqual(over(run(recs, "sliding_counter")), [])
        recs.append(acq("k", 1.3))
        self.assertEqual(len(over(run(recs, "sliding_counter"))), 1)

    # Verifies an admission straddling a window boundary is not counted in either window.
    def test_straddling_is_undecided(self):
        recs = [acq("k", t) for t in (0.7, 0.8, 0.9)] + [acq("k", 0.95, took=0.1)]
        found = run(recs, "sliding_counter")
        self.assertEqual(over(found), [])
        self.assertEqual(found["undecided_keys"], 1)


class Gcra(unittest.TestCase):
    # Verifies a burst of count, then one unit per emission interval, is fine, and one more
    # unit than that is not.
    def test_burst_then_rate(self):
        recs = [acq("k", 0.0 + i * 0.001) for i in range(3)] + [acq("k", 0.34), acq("k", 0.68)]
        self.assertEqual(over(run(recs, "gcra")), [])
        recs.append(acq("k", 0.69))
        self.assertEqual(len(over(run(recs, "gcra"))), 1)


class Failover(unittest.TestCase):
    # Verifies an excess spanning a failover of the key's master is lost by Redis, and the
    # same excess on a key of another master is a violation.
    def test_lost_writes_are_apart(self):
        slot = key_slot(b"p:k")
        fault = {"kind": "kill_master", "node": 7001, "failover": True, "slots": [(slot, slot)],
                 "start_ns": BASE + int(0.25 * S), "failover_ns": BASE + int(0.3 * S),
                 "end_ns": BASE + int(0.4 * S)}
        recs = [acq("k", t) for t in (0.0, 0.1, 0.2, 0.5, 0.6)]
        found = run(recs, faults=[fault])
        self.assertEqual(over(found), [])
        self.assertEqual(found["lost"][0]["keys"], 1)
        self.assertEqual(found["lost"][0]["units"], 2)
        fault["slots"] = [((slot + 1) % 16384, (slot + 1) % 16384)]
        found = run(recs, faults=[fault])
        self.assertEqual(len(over(found)), 1)
        self.assertEqual(found["lost"][0]["keys"], 0)


class FailoverAfterResume(unittest.TestCase):
    # Verifies an excess entirely after the promotion, while the paused master that resumed
    # still takes writes (before the cluster is whole again), is lost by Redis too, and one
    # after the fault ended is a violation.
    def test_split_brain_window(self):
        slot = key_slot(b"p:k")
        fault = {"kind": "stop_master", "node": 7001, "failover": True, "slots": [(slot, slot)],
                 "start_ns": BASE, "failover_ns": BASE + int(0.1 * S),
                 "end_ns": BASE + int(0.6 * S)}
        recs = [acq("k", t) for t in (0.2, 0.3, 0.4, 0.5)]
        found = run(recs, faults=[fault])
        self.assertEqual(over(found), [])
        self.assertEqual(found["lost"][0]["keys"], 1)
        recs = [acq("k", t) for t in (0.7, 0.8, 0.9, 1.0)]
        self.assertEqual(len(over(run(recs, faults=[fault]))), 1)


class Answers(unittest.TestCase):
    # Verifies a refused connection is fine only while the server restarts, and an answer
    # past the deadline plus slack is a violation.
    def test_refused_and_late(self):
        refused = (0, "acquire", "p", "k", 1, BASE + S, BASE + S, 0, None, None, None,
                   "refused")
        found = run([refused], restarts=[(BASE + S - 1000, BASE + S + 1000)])
        self.assertEqual(found["violations"], [])
        self.assertEqual(found["refused_in_restart"], 1)
        self.assertEqual(len(run([refused])["violations"]), 1)
        # the keep-alive close race: closed just before SIGTERM is apart, refused is not
        closed = refused[:11] + ("eof",)
        found = run([closed], restarts=[(BASE + S + 10_000_000, BASE + S + 90_000_000)])
        self.assertEqual(found["violations"], [])
        self.assertEqual(found["closed_in_restart"], 1)
        found = run([refused], restarts=[(BASE + S + 10_000_000, BASE + S + 90_000_000)])
        self.assertEqual(len(found["violations"]), 1)
        found = run([closed], restarts=[(BASE + S + 60_000_000, BASE + S + 90_000_000)])
        self.assertEqual(len(found["violations"]), 1)
        found = run([acq("k", 0.0, took=1.2)])
        self.assertTrue(any(v.startswith("late answer") for v in found["violations"]))


def grpc_policy():
    """A gRPC rule as chaos.py builds it: sliding_log 3/1s, its own limiter key."""
    return checker.Policy("g", "sliding_log", 3, 1_000_000, "deny", "grpc",
                          lambda key: "envoy/5:chaos|1:g=%d:%s" % (len(key), key))


class Grpc(unittest.TestCase):
    # Verifies a gRPC key is checked by its rule, its lost writes found by the slot of its own
    # limiter key (not `g:k`'s), and its calls counted and timed apart.
    def test_grpc_keys_and_failover(self):
        policies = {"p": checker.Policy("p", "sliding_log", 3, 1_000_000, "deny"),
                    "g": grpc_policy()}
        recs = [acq("k", t, policy="g") for t in (0.0, 0.1, 0.2, 0.5)] + [acq("k", 0.3)]
        found = checker.check(sorted(recs, key=lambda r: r[5]), policies, [], [], 100, 900, [])
        self.assertEqual(len(over(found)), 1)
        self.assertIn("g/k", over(found)[0])
        self.assertEqual(found["grpc_requests"], 4)
        self.assertEqual(found["latency_grpc"]["n"], 4)
        slot = key_slot(b"envoy/5:chaos|1:g=1:k")
        self.assertNotEqual(slot, key_slot(b"g:k"))
        fault = {"kind": "kill_master", "node": 7001, "failover": True, "slots": [(slot, slot)],
                 "start_ns": BASE + int(0.25 * S), "failover_ns": BASE + int(0.3 * S),
                 "end_ns": BASE + int(0.4 * S)}
        found = checker.check(sorted(recs, key=lambda r: r[5]), policies, [fault], [], 100,
                              900, [])
        self.assertEqual(over(found), [])
        self.assertEqual(found["lost"][0]["units"], 1)

    # Verifies UNAVAILABLE and CANCELLED are apart only while the server restarts, and any
    # other gRPC error is a violation even then.
    def test_grpc_errors(self):
        policies = {"g": grpc_policy()}

        def failed(error):
            return (6, "acquire", "g", "k", 1, BASE + S, BASE + S + 1000, 0, None, None, None,
                    error)

        restart = [(BASE + S - 1000, BASE + S + 1000)]
        recs = [failed("grpc UNAVAILABLE"), failed("grpc CANCELLED")]
        found = checker.check(recs, policies, [], restart, 100, 900, [])
        self.assertEqual(found["violations"], [])
        self.assertEqual(found["grpc_unavailable_in_restart"], 2)
        self.assertEqual(len(checker.check(recs, policies, [], [], 100, 900,
                                           [])["violations"]), 2)
        found = checker.check([failed("grpc INTERNAL")], policies, [], restart, 100, 900, [])
        self.assertEqual(len(found["violations"]), 1)


if __name__ == "__main__":
    unittest.main()
