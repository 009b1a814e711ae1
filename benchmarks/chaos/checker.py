"""The soak's checker: what the record proves about sluice.

Times. A decision made by the store read Redis's TIME (the machine's wall clock) after the
request was sent and before its answer came back, so an admission happened at some time in
[send, recv] (microseconds, rounded outward). A violation is reported only when it holds for
every placement of the admissions inside their intervals; when it holds for some placement
and not all, the window is counted as undecided.

Rules, for the acquires the store admitted (HTTP 200, "allowed": true, no "fallback" field),
per key, between resets:
- sliding_log: a set of admissions with max(recv) - min(send) < window holds at most `count`
  units (any span shorter than the window).
- sliding_counter: the admissions certainly inside one aligned window [k*w, (k+1)*w) (sluice
  aligns to multiples of the window since the Unix epoch, DESIGN.md section 4) hold at most
  `count` units.
- gcra: the admissions from one (by send time) onwards hold at most
  count + (max(recv) - that send) / T units, T = ceil(window / count) us.
Resets: a reset answered 204 happened inside its [send, recv]; admissions overlapping it are
left out of the certain checks (they may be on either side). A reset answered otherwise (503,
no answer) may have happened up to AMBIGUOUS_RESET_US later (a paused master runs what it was
sent when it resumes): it splits the key's admissions the same way and is counted apart.
A reset refused at connect (server down) never reached the server and is ignored.

Failovers: Redis replicates asynchronously, so a killed master may take writes it
acknowledged with it, and a paused master that resumes after its replica took over accepts
writes as a master until it hears so, then drops them as it becomes a replica. An excess on
a key whose slot that master served, in a set of admissions that overlaps the fault (from
its start until the cluster was whole again), is counted for that failover as lost by
Redis, not as a violation.

Answers: each request has one outcome. Transport errors are violations except a refused
connection while the server restarts (SIGTERM until it listens again), and a connection
closed or reset by the draining server for a request sent up to DRAIN_RACE_US before the
SIGTERM (the server closes idle keep-alive connections; a request it had not read yet is
lost with it, as HTTP/1.1 allows, and a client retries it); both are counted apart.

gRPC: a policy with transport "grpc" is a rate limit of the Envoy service, asked with
ShouldRateLimit; its records read as HTTP acquires (200 for a call that returned) and its
keys are checked by the same rules (every gRPC rule is on_failure: deny, and a response does
not say whether a fallback decided, so an OK is always the store's). A call failed with
UNAVAILABLE or CANCELLED (GRPC_REFUSED) while the server restarts (from DRAIN_RACE_US before
SIGTERM until it listens again) is counted apart, like a refused connection; any other gRPC
error, or those at another time, is a violation.
Its latencies are reported apart too.
"""

import bisect
from collections import defaultdict

from topology import key_slot

AMBIGUOUS_RESET_US = 5_000_000
DRAIN_RACE_US = 50_000
# gRPC errors of a call the stopping server refused: UNAVAILABLE (sluice's drain, or no
# listener), CANCELLED (gRPC's Shutdown cancels a call it had received but not started).
GRPC_REFUSED = ("grpc UNAVAILABLE", "grpc CANCELLED")


def _us_floor(ns):
    return ns // 1000


def _us_ceil(ns):
    return -(-ns // 1000)


class Policy:
    def __init__(self, name, algorithm, count, window_us, on_failure, transport="http",
                 store_key=None):
        """store_key(key) is the limiter's key of `key` (its Redis Cluster slot decides which
        failover may have lost its writes); by default `name:key`, a scoped policy's."""
        self.name = name
        self.transport = transport
        self.store_key = store_key or (lambda key: "%s:%s" % (name, key))
        self.algorithm = algorithm
        self.count = count
        self.window_us = window_us
        self.on_failure = on_failure
        self.t_us = -(-window_us // count)  # gcra's emission interval


def _segments(admissions, resets):
    """Splits admissions [(a, b, cost)] by reset intervals [(ra, rb)].

    Returns (certain, possible): certain[k] holds the admissions certainly after reset block
    k-1 and before block k; possible[k] also holds those overlapping the blocks around it."""
    blocks = []
    for ra, rb in sorted(resets):
        if blocks and ra <= blocks[-1][1]:
            blocks[-1][1] = max(blocks[-1][1], rb)
        else:
            blocks.append([ra, rb])
    starts = [b[0] for b in blocks]
    certain = defaultdict(list)
    possible = defaultdict(list)
    for adm in admissions:
        a, b, _ = adm
        k = bisect.bisect_right(starts, b)  # blocks starting at or before b: 0..k-1
        # certainly after block k-1 when a > its end and before block k (which starts > b)
        if k == 0 or a > blocks[k - 1][1]:
            certain[k].append(adm)
            possible[k].append(adm)
        else:
            # overlaps block k-1 (and maybe earlier ones): it may fall in any segment whose
            # span it touches
            first = bisect.bisect_right([bl[1] for bl in blocks], a - 1)
            for seg in range(first, k + 1):
                possible[seg].append(adm)
    return certain, possible


def _excess_log(items, policy, certain):
    """Yields (excess, min_a, max_b) for the worst set anchored at each admission."""
    items = sorted(items)
    w = policy.window_us
    n = len(items)
    starts = [a for a, _, _ in items]
    longest = max((b - a for a, b, _ in items), default=0)
    for j in range(n):
        anchor = items[j][0] if certain else items[j][1]
        units = 0
        hi = None
        # (possible: an admission with b >= anchor has a >= anchor - longest)
        first = j if certain else bisect.bisect_left(starts, anchor - longest)
        for i in range(first, n):
            a, b, c = items[i]
            if certain:
                if a >= anchor + w:
                    break
                if b < anchor + w:
                    units += c
                    hi = b if hi is None else max(hi, b)
            else:
                # placeable in [anchor, anchor + w): a < anchor + w and b >= anchor
                if a >= anchor + w:
                    break
                if b >= anchor:
                    units += c
        if units > policy.count:
            yield units - policy.count, anchor, hi if hi is not None else anchor


def _excess_counter(items, policy, certain):
    w = policy.window_us
    per = defaultdict(int)
    for a, b, c in items:
        ka, kb = a // w, b // w
        if ka == kb:
            per[ka] += c
        elif not certain:
            for k in range(ka, kb + 1):
                per[k] += c
    for k, units in per.items():
        if units > policy.count:
            yield units - policy.count, k * w, (k + 1) * w - 1


def _excess_gcra(items, policy, certain):
    items = sorted(items)
    t = policy.t_us
    n = len(items)
    for j in range(n):
        a0 = items[j][0] if certain else items[j][1]
        units = 0
        hi = a0
        for i in range(j, n):
            a, b, c = items[i]
            if a - a0 > 4 * policy.window_us:
                break
            units += c
            if certain:
                hi = max(hi, b)
                span = hi - a0
            else:
                hi = max(hi, a)
                span = max(0, hi - a0)
            allowed = policy.count + span // t
            if units > allowed:
                yield units - allowed, a0, hi


_EXCESS = {"sliding_log": _excess_log, "sliding_counter": _excess_counter,
           "gcra": _excess_gcra}


def _percentiles(values):
    if not values:
        return None
    v = sorted(values)

    def p(q):
        return v[min(len(v) - 1, int(q * len(v)))]

    return {"n": len(v), "p50": p(0.50), "p99": p(0.99), "max": v[-1]}


def check(records, policies, faults, restarts, deadline_ms, slack_ms, samples,
          warmup_s=5.0, rss_growth_bytes=32 << 20, fd_growth=32):
    """Returns the findings as a dict; findings["violations"] lists every violation."""
    violations = []
    out = {"violations": violations}
    restart_us = [(_us_floor(s), _us_ceil(e)) for s, e in restarts]

    def in_restart(a, error):
        # A connection the draining server closed may have carried a request sent just
        # before SIGTERM that the server had not read yet (HTTP/1.1's keep-alive close race).
        margin = DRAIN_RACE_US if error != "refused" else 0
        return any(s - margin <= a <= e for s, e in restart_us)

    # ---- every request got one answer, in time ----
    by_op = defaultdict(lambda: defaultdict(int))
    fallbacks = defaultdict(int)
    refused_in_restart = 0
    closed_in_restart = 0
    grpc_unavailable_in_restart = 0
    grpc_requests = 0
    lat_grpc = []
    bound_ms = deadline_ms + slack_ms
    late = []
    lat_fault, lat_calm = [], []
    fault_us = [(_us_floor(f["start_ns"]), _us_ceil(f["end_ns"]) + 1_000_000) for f in faults]
    for r in records:
        (_w, op, policy, key, cost, send, recv, status, allowed, _rem, fallback, error) = r
        a = _us_floor(send)
        grpc = policies[policy].transport == "grpc" if policy in policies else False
        grpc_requests += grpc
        if error is not None:
            by_op[op][error] += 1
            if grpc and error in GRPC_REFUSED and in_restart(a, error):
                grpc_unavailable_in_restart += 1
            elif error in ("refused", "eof", "reset") and in_restart(a, error):
                if error == "refused":
                    refused_in_restart += 1
                else:
                    closed_in_restart += 1
            else:
                violations.append("no answer: %s %s/%s sent at %.3f: %s" %
                                  (op, policy, key, send / 1e9, error))
            continue
        by_op[op][str(status)] += 1
        if fallback is not None:
            fallbacks[fallback] += 1
        ms = (recv - send) / 1e6
        if grpc:
            lat_grpc.append(ms)
        if ms > bound_ms:
            late.append((ms, op, policy, key, send))
        (lat_fault if any(s <= a <= e for s, e in fault_us) else lat_calm).append(ms)
        if op in ("acquire", "peek") and status != 200:
            violations.append("%s %s/%s answered %d at %.3f" % (op, policy, key, status,
                                                                 send / 1e9))
    for ms, op, policy, key, send in late:
        violations.append("late answer: %s %s/%s took %.0f ms (bound %d ms), sent at %.3f" %
                          (op, policy, key, ms, bound_ms, send / 1e9))
    # Per fault: the fallbacks answered from its start to the next fault's, and when the last
    # was (how long decisions kept falling back; compare with the failover's time).
    fallback_sends = sorted(r[6] for r in records if r[10] is not None and r[11] is None)
    for i, f in enumerate(faults):
        nxt = faults[i + 1]["start_ns"] if i + 1 < len(faults) else float("inf")
        seg = fallback_sends[bisect.bisect_left(fallback_sends, f["start_ns"]):
                             bisect.bisect_left(fallback_sends, nxt)]
        f["fallbacks"] = len(seg)
        f["last_fallback_s"] = (seg[-1] - f["start_ns"]) / 1e9 if seg else None
    out.update(requests=len(records), by_op={k: dict(v) for k, v in by_op.items()},
               fallbacks=dict(fallbacks), refused_in_restart=refused_in_restart,
               closed_in_restart=closed_in_restart, answer_bound_ms=bound_ms,
               grpc_requests=grpc_requests,
               grpc_unavailable_in_restart=grpc_unavailable_in_restart,
               latency_grpc=_percentiles(lat_grpc),
               latency_fault=_percentiles(lat_fault), latency_calm=_percentiles(lat_calm))

    # ---- no key admitted more than its limit ----
    admissions = defaultdict(list)
    resets = defaultdict(list)
    ambiguous_resets = 0
    store_admitted = 0
    for r in records:
        (_w, op, policy, key, cost, send, recv, status, allowed, _rem, fallback, error) = r
        a, b = _us_floor(send), _us_ceil(recv)
        if op == "acquire" and error is None and status == 200 and allowed and fallback is None:
            admissions[(policy, key)].append((a, b, cost))
            store_admitted += 1
        elif op == "reset":
            if error is None and status == 204:
                resets[(policy, key)].append((a, b))
            elif error != "refused":
                resets[(policy, key)].append((a, b + AMBIGUOUS_RESET_US))
                ambiguous_resets += 1
    failovers = [f for f in faults if f.get("failover")]
    lost = [{"fault": f, "keys": 0, "units": 0, "examples": []} for f in failovers]
    undecided = 0
    checked_windows = 0
    excess_keys = []
    for (policy_name, key), items in admissions.items():
        policy = policies[policy_name]
        fn = _EXCESS[policy.algorithm]
        certain, possible = _segments(items, resets.get((policy_name, key), []))
        worst = None
        per_failover = defaultdict(int)
        # The cluster store keeps `sluice:{<limiter key>}`: the slot of the limiter's key.
        slot = key_slot(policy.store_key(key).encode())
        for seg, seg_items in certain.items():
            checked_windows += len(seg_items)
            for excess, lo, hi in fn(seg_items, policy, True):
                blame = None
                for i, f in enumerate(failovers):
                    if not any(a <= slot <= b for a, b in f["slots"]):
                        continue
                    # The set overlaps the fault: from its start until the cluster was whole
                    # again (a paused master that resumes takes writes as a master until it
                    # hears it was replaced, and loses them when it becomes a replica).
                    if lo <= _us_ceil(f["end_ns"]) and hi >= _us_floor(f["start_ns"]):
                        blame = i
                        break
                if blame is None:
                    if worst is None or excess > worst[0]:
                        worst = (excess, lo, hi)
                else:
                    per_failover[blame] = max(per_failover[blame], excess)
        for i, units in per_failover.items():
            lost[i]["keys"] += 1
            lost[i]["units"] += units
            lost[i]["examples"].append("%s/%s +%d" % (policy_name, key, units))
        if worst is not None:
            excess_keys.append((policy_name, key, worst))
            violations.append(
                "over the limit: %s/%s (%s %d/%.3fs): %d units too many in [%.6f, %.6f]" %
                (policy_name, key, policy.algorithm, policy.count, policy.window_us / 1e6,
                 worst[0], worst[1] / 1e6, worst[2] / 1e6))
        elif not per_failover:
            for seg, seg_items in possible.items():
                if next(fn(seg_items, policy, False), None) is not None:
                    undecided += 1
                    break
    for entry in lost:
        entry["fault"]["lost_units"] = entry["units"]
    out.update(store_admitted=store_admitted, keys_admitted=len(admissions),
               ambiguous_resets=ambiguous_resets, undecided_keys=undecided, lost=lost,
               resets_answered=sum(len(v) for v in resets.values()) - ambiguous_resets)

    # ---- the server's memory and file descriptors stayed bounded ----
    by_pid = defaultdict(list)
    for t_ns, pid, rss, fds, source in samples:
        by_pid[pid].append((t_ns, rss, fds, source))
    resources = []
    for pid, rows in by_pid.items():
        rows.sort()
        t0 = rows[0][0]
        warm = [r for r in rows if r[0] - t0 <= warmup_s * 1e9]
        later = [r for r in rows if r[0] - t0 > warmup_s * 1e9]
        base_rss = max(r[1] for r in warm)
        base_fds = max(r[2] for r in warm)
        max_rss = max(r[1] for r in rows)
        max_fds = max(r[2] for r in rows)
        resources.append({"pid": pid, "samples": len(rows), "source": rows[0][3],
                          "warm_rss": base_rss, "max_rss": max_rss, "warm_fds": base_fds,
                          "max_fds": max_fds})
        for t_ns, rss, fds, _ in later:
            if rss > base_rss + rss_growth_bytes:
                violations.append("server pid %d RSS %d MiB at %.3f, over %d MiB after warm-up"
                                  % (pid, rss >> 20, t_ns / 1e9, (base_rss + rss_growth_bytes) >> 20))
                break
        for t_ns, rss, fds, _ in later:
            if fds > base_fds + fd_growth:
                violations.append("server pid %d has %d open fds at %.3f, over %d" %
                                  (pid, fds, t_ns / 1e9, base_fds + fd_growth))
                break
    out.update(resources=resources, rss_growth_bytes=rss_growth_bytes, fd_growth=fd_growth,
               warmup_s=warmup_s)
    return out
