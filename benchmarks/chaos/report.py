"""The soak's one-page report, from the checker's findings."""

from collections import Counter

MAX_LISTED = 24  # faults listed one a line; a longer run gets a summary per kind


def _lat(p):
    if p is None:
        return "none"
    return "p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d answers)" % (p["p50"], p["p99"],
                                                                  p["max"], p["n"])


def render(args, found, faults, policies, out, elapsed):
    t0 = faults[0]["start_ns"] if faults else 0
    lines = []
    add = lines.append
    grpc_workers = getattr(args, "grpc_workers", 0)
    add("sluice chaos soak: round %s, seed %d, %.0f s of load at %d req/s over %d "
        "connections (%d of them gRPC), %d keys" % (args.round, args.seed, args.duration,
                                                    args.rate, args.workers, grpc_workers,
                                                    args.keys))
    add("policies: " + ", ".join("%s %s %d/%ds on_failure=%s" % (n, a, c, w, f)
                                 for n, (a, c, w, f) in policies.items()))
    add("")
    add("requests: %d" % found["requests"])
    for op, counts in sorted(found["by_op"].items()):
        add("  %-8s %s" % (op, ", ".join("%s: %d" % kv for kv in sorted(counts.items()))))
    add("  store admitted %d acquires over %d keys; resets answered 204: %d, ambiguous: %d" %
        (found["store_admitted"], found["keys_admitted"], found["resets_answered"],
         found["ambiguous_resets"]))
    add("  while sluice serve restarted: %d connections refused, %d closed before an answer "
        "(counted apart)" % (found["refused_in_restart"], found["closed_in_restart"]))
    if grpc_workers:
        add("  over gRPC (ShouldRateLimit acquires, counted in the above): %d requests, %d "
            "UNAVAILABLE or CANCELLED while sluice serve restarted (counted apart); latency %s" % (
                found["grpc_requests"], found["grpc_unavailable_in_restart"],
                _lat(found["latency_grpc"])))
    add("fallbacks by mode%s: " % (" (HTTP; a gRPC answer does not say)" if grpc_workers
                                   else "") +
        (", ".join("%s %d" % kv for kv in sorted(found["fallbacks"].items())) or "none"))
    add("")
    kinds = Counter(f["kind"] for f in faults)
    add("faults injected: %d (%s); times from each fault's start" % (
        len(faults), ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
    listed = faults if len(faults) <= MAX_LISTED else \
        [f for f in faults if f.get("failover") and f.get("lost_units")][:MAX_LISTED]
    if len(faults) > MAX_LISTED:
        for kind in sorted(kinds):
            of = [f for f in faults if f["kind"] == kind]
            took = sorted((f["end_ns"] - f["start_ns"]) / 1e9 for f in of)
            add("  %-17s %3d, %3d failed over, median %.2f s, max %.2f s, %d fallbacks" % (
                kind, len(of), sum(1 for f in of if f.get("failover")), took[len(took) // 2],
                took[-1], sum(f.get("fallbacks", 0) for f in of)))
        add("  (all %d in faults.json; below, only those that lost writes)" % len(faults))
    for f in listed:
        what = f["kind"]
        extra = ""
        if what in ("kill_master", "stop_master", "restart_replica", "sentinel_failover"):
            extra = "node :%d" % f["node"]
        if what == "stop_master":
            extra += ", paused %.1f s" % f["pause_s"]
        if what == "reshard":
            extra = "%d slots :%d -> :%d" % (f["slots_moved"], f["node"], f["to"])
        if what == "restart_sluice":
            extra = "drained, exit %d, new pid %d" % (f["exit_code"], f["node"])
        if f.get("failover"):
            extra += ", failed over at +%.2f s" % ((f["failover_ns"] - f["start_ns"]) / 1e9)
        if f.get("fallbacks"):
            extra += "; %d fallbacks, the last answered at +%.2f s" % (f["fallbacks"],
                                                             f["last_fallback_s"])
        add("  +%6.2f s  %-15s %5.2f s  %s" % ((f["start_ns"] - t0) / 1e9, what,
                                              (f["end_ns"] - f["start_ns"]) / 1e9, extra))
    add("")
    add("latency during faults (fault start to 1 s after it ends): " +
        _lat(found["latency_fault"]))
    add("latency outside faults:                                   " +
        _lat(found["latency_calm"]))
    add("answer bound: the store deadline plus slack = %d ms" % found["answer_bound_ms"])
    add("")
    add("lost by Redis (excess admissions on a failed-over master's keys, overlapping the "
        "fault):")
    if not found["lost"]:
        add("  no failover")
    lost = found["lost"] if len(found["lost"]) <= MAX_LISTED else \
        [e for e in found["lost"] if e["keys"]]
    for entry in lost:
        f = entry["fault"]
        add("  %s of :%d at +%.2f s: %d keys, %d units over their limits%s" %
            (f["kind"], f["node"], (f["start_ns"] - t0) / 1e9, entry["keys"], entry["units"],
             " (" + ", ".join(entry["examples"][:4]) + ")" if entry["examples"] else ""))
    if len(found["lost"]) > len(lost):
        add("  the other %d failovers: none" % (len(found["lost"]) - len(lost)))
    add("  in all: %d units over %d failovers" % (sum(e["units"] for e in found["lost"]),
                                                 len(found["lost"])))
    add("undecided: %d keys could exceed a limit for some placement of their admissions in "
        "their [send, recv] intervals but not for all (not violations)" % found["undecided_keys"])
    add("")
    add("server resources (bound: RSS at most %d MiB and open fds at most %d above the "
        "first %.0f s of each process):" % (found["rss_growth_bytes"] >> 20, found["fd_growth"],
                                            found["warmup_s"]))
    res = found["resources"]
    if len(res) > 6:
        add("  %d server processes: RSS after warm-up %.1f-%.1f MiB, max %.1f MiB; fds after "
            "warm-up %d-%d, max %d" % (
                len(res), min(r["warm_rss"] for r in res) / 2**20,
                max(r["warm_rss"] for r in res) / 2**20, max(r["max_rss"] for r in res) / 2**20,
                min(r["warm_fds"] for r in res), max(r["warm_fds"] for r in res),
                max(r["max_fds"] for r in res)))
        res = []
    if not found["resources"]:
        add("  no samples")
    for r in res:
        add("  pid %d (%s, %d samples): RSS %.1f MiB after warm-up, max %.1f MiB; fds %d, "
            "max %d" % (r["pid"], r["source"], r["samples"], r["warm_rss"] / 2**20,
                        r["max_rss"] / 2**20, r["warm_fds"], r["max_fds"]))
    add("breakers not closed at the end, all faults over (sluice_breakers_open): %s" %
        found.get("breakers_open_at_end"))
    add("")
    v = found["violations"]
    add("VIOLATIONS: %d" % len(v))
    for line in v[:20]:
        add("  " + line)
    if len(v) > 20:
        add("  ... and %d more" % (len(v) - 20))
    add("record: %s/record.jsonl, faults: %s/faults.json (soak took %.0f s)" %
        (out, out, elapsed))
    return "\n".join(lines) + "\n"
