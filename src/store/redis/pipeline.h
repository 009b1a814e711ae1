// The request side of one Redis connection, without I/O: which reply belongs to which
// call (replies come back in the order commands were written), deadlines, and what to do
// with the replies of calls that already timed out. Tested by feeding it bytes.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/error.h"
#include "sluice/limit.h"
#include "store/redis/resp.h"

namespace sluice::redis {

using steady = std::chrono::steady_clock;

// What a script call asks: an algorithm's script on one key (`acquire`, `peek`, `refund`),
// or a script on several (`acquire_all`, `release`); see scripts.h.
enum class script_op : std::uint8_t { acquire, peek, refund, acquire_all, release };

// One key of a multi-key script call.
struct script_key {
  std::string key;
  algorithm algo = algorithm::sliding_log;
  std::int64_t count = 0;
  std::int64_t window_us = 0;
  std::int64_t cost = 0;               // 0: only checked
  std::optional<std::int64_t> now_us;  // set when it differs from the call's
  // `release` only: the reservation's time and reset_after for this key.
  std::int64_t reserved_at_us = 0;
  std::int64_t reserved_reset_us = 0;
  bool packed_log = false;  // the store keeps sliding_log in the packed layout

  // True when this key is decided by sliding_log_packed.
  bool packed() const noexcept { return packed_log && algo == algorithm::sliding_log; }
};

// A script call, kept so that it can be sent again as EVAL after a NOSCRIPT reply. A
// single-key call uses `algo` to `now_us`; a multi-key call `keys` (its own `now_us` is the
// call's time, that of every key without one).
struct script_call {
  algorithm algo = algorithm::sliding_log;
  std::string key;
  script_op op = script_op::acquire;
  std::int64_t count = 0;
  std::int64_t window_us = 0;
  std::int64_t cost = 1;
  std::optional<std::int64_t> now_us;
  std::string token;
  std::vector<script_key> keys;
  bool packed_log = false;  // the store keeps sliding_log in the packed layout

  // True when this call is decided by sliding_log_packed: its own script and batch letter.
  bool packed() const noexcept { return packed_log && algo == algorithm::sliding_log; }
  bool multi() const noexcept { return op == script_op::acquire_all || op == script_op::release; }
};

// Appends `EVALSHA sha <keys> ...` (or, with `source`, `EVAL source <keys> ...`).
void append_script_call(std::string& out, const script_call& c, std::string_view sha,
                        std::string_view source = {});

// Appends one run of the batch script deciding `calls` (single-key calls, at least one) in
// order: `EVALSHA sha <distinct keys> ...` (or, with `source`, `EVAL source ...`).
void append_batch_call(std::string& out, std::span<const script_call* const> calls,
                       std::string_view sha, std::string_view source = {});

// One command waiting for its reply, or one batch of script calls sent as one command.
struct pending {
  std::function<void(result<reply>)> done;  // empty once the caller has been answered
  steady::time_point deadline;
  std::optional<script_call> script;  // set for script calls: NOSCRIPT sends it again
  // A single-key script call not yet encoded: the connection encodes it when it writes,
  // alone or in a batch with others of the same `group` (a cluster's slot).
  bool batchable = false;
  int group = 0;
  // The bytes of the queued command this call's reply answers (`assemble`); 0 for calls
  // that share the command of the call before them (ASKING and its call).
  std::size_t wire = 0;
  // A batch: its calls in order, each answered from its slot of the one reply. `done` is
  // empty and `deadline` the earliest of theirs.
  std::vector<pending> batch;

  // True while some caller waits for this command's reply.
  bool live() const noexcept;
};

// The scripts `assemble` writes calls with.
struct script_shas {
  std::array<std::string_view, 3> single;  // indexed by algorithm
  std::string_view batch;
  std::string_view packed_log;  // sliding_log's in the packed layout

  // Returns the sha of the single-key script of `c`.
  std::string_view of(const script_call& c) const {
    if (c.packed()) return packed_log;
    return single[static_cast<std::size_t>(c.algo)];
  }
};

// What one `assemble` did.
struct assembled {
  std::size_t batches = 0;    // batch script runs written (2 calls or more each)
  std::size_t batched = 0;    // calls in them
  std::size_t timed_out = 0;  // calls answered `timeout` before they were written
};

// Not thread-safe: a connection drives it from its I/O thread.
class pipeline {
 public:
  // Adds a command that has been (or is being) written, after all earlier ones. Deadlines
  // need not come in order (a call sent again after a redirection keeps its own).
  void push(pending p) {
    if (p.live() && (!earliest_ || p.deadline < *earliest_)) earliest_ = p.deadline;
    waiting_.push_back(std::move(p));
  }

  // Feeds bytes read from the connection and answers every call whose reply is complete.
  // Script calls answered NOSCRIPT are not answered: they are appended to `resend` (a
  // batch whole, with the calls still waiting). A batch's calls are answered each from its
  // slot of the batch's reply; an error reply to the whole batch answers each of them.
  // Returns an error when the bytes are not RESP, or a reply arrives with no call waiting
  // for it; the connection must then be dropped (and `fail_all` called).
  result<void> on_bytes(std::string_view bytes, std::vector<pending>& resend);

  // Answers every call whose deadline is at or before `now` with `errc::timeout`. Their
  // replies, when they come, are read and dropped. Returns how many timed out.
  std::size_t expire(steady::time_point now);

  // Answers every waiting call with `e` and forgets them (the connection is gone).
  void fail_all(const error& e);

  // True when the oldest call's deadline passed more than `limit` ago with no reply: the
  // server is not answering.
  bool stalled(steady::time_point now, steady::duration limit) const;

  // When to call `expire` next: at or before the earliest deadline of a call not yet
  // answered (early at times: answered calls are not taken out of it until `expire`
  // runs), or nothing when no call is waiting for an answer.
  std::optional<steady::time_point> next_deadline() const;

  std::size_t size() const noexcept { return waiting_.size(); }

  // Hands every reply that arrives while no call waits (a pub/sub message) to `f`, instead
  // of failing `on_bytes`.
  void on_unsolicited(std::function<void(const reply&)> f) { unsolicited_ = std::move(f); }

  // Writes the queued `calls` to `out`, in order, and pushes them here. `bytes` holds the
  // encoded commands of the calls that are not batchable, one after the other (`wire`
  // bytes each). Batchable calls are encoded here: those of one group between two other
  // commands go as batch script runs of at most `max_calls` calls and about `max_bytes` of
  // arguments (a run of one call as its own single-key script); calls of other groups may
  // be written before or after them, never across a command that is not batchable. A
  // batchable call whose deadline is at or before `now` is answered `timeout` and not sent.
  assembled assemble(std::string_view bytes, std::vector<pending>& calls, const script_shas& shas,
                     std::size_t max_calls, std::size_t max_bytes, steady::time_point now,
                     std::string& out);

 private:
  reader reader_;
  std::deque<pending> waiting_;
  std::function<void(const reply&)> unsolicited_;
  // At or before the earliest deadline of the waiting calls with a completion; exact after
  // `expire`.
  std::optional<steady::time_point> earliest_;
};

}  // namespace sluice::redis
