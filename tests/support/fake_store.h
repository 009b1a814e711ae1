// The one fake store of sluice's tests, for what sits on top of a store (the limiter, the
// request handler). A real memory_store decides every call; the test injects only what a
// remote store adds to it: failures, completions that come later, failure domains and
// health. It derives from async_store, as the Redis stores do, so its sync forms are the
// base's: they start the async form and wait for it (a held sync call waits until another
// thread calls release()). Thread-safe.
//
//   sluice::test::fake_store s({.time_source = &clock});
//   s.fail(errc::timeout);        // every call fails with `timeout`, detail "injected by test"
//   s.recover();                  // the memory store decides again
//   s.hold();                     // completions wait ...
//   s.release();                  // ... until this runs them, on the calling thread
//   s.set_health({false, "connection refused"});
//
//   // Three failure domains, the key's domain chosen by the test; domain 1 goes down.
//   sluice::test::fake_store c({.domains = 3, .domain_of = [](std::string_view k) {...}});
//   c.fail_domain(1);             // its calls fail with store_unavailable, "domain 1 down"
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/memory_store.h"
#include "sluice/store.h"
#include "support/test_util.h"

namespace sluice::test {

struct fake_store_options {
  // What describe() says.
  std::string uri = "fake://test";
  // The memory store's clock; must outlive the store.
  const clock* time_source = &system_clock();
  // What failure_domains() says: any value, out of range too (the limiter clamps it).
  std::size_t domains = 1;
  // What failure_domain(key) says for a store key (`policy:key`); may be out of range, and
  // may change its answer over time (a failover). Empty: every key is in domain 0.
  std::function<std::size_t(std::string_view key)> domain_of = nullptr;
};

class fake_store final : public async_store {
 public:
  explicit fake_store(fake_store_options o = {})
      : o_(std::move(o)), inner_(memory_options(*o_.time_source)) {}

  // Failures. A call's domain is the one `domain_of` gives when the call is made; whether it
  // fails is decided when it completes. A failing call checks its input first (an empty
  // key, a cost, limit or time out of range get their own error), as a remote store does
  // before any I/O; then it fails with the injected error instead of deciding.

  // Makes every call fail with `code` and `detail`.
  void fail(errc code = errc::store_unavailable, std::string detail = "injected by test") {
    const std::lock_guard lock(mu_);
    all_ = error{make_error_code(code), std::move(detail)};
  }
  // Makes the calls to domain `d` fail with `code` and `detail` ("domain <d> down" if empty),
  // whatever fail() says.
  void fail_domain(std::size_t d, errc code = errc::store_unavailable, std::string detail = {}) {
    if (detail.empty()) detail = "domain " + std::to_string(d) + " down";
    const std::lock_guard lock(mu_);
    domains_[d].failure = error{make_error_code(code), std::move(detail)};
  }
  // Ends every injected failure: the memory store decides again.
  void recover() {
    const std::lock_guard lock(mu_);
    all_.reset();
    for (auto& [d, state] : domains_) state.failure.reset();
  }
  // Ends the failure of domain `d` (not one injected by fail()).
  void recover_domain(std::size_t d) {
    const std::lock_guard lock(mu_);
    domains_[d].failure.reset();
  }

  // Timing. While holding, completions are queued (the call's copy of its request and key
  // with them) instead of running inline; release() runs them, deciding then, on the
  // calling thread, which stands for the store's I/O thread.
  void hold(bool on = true) { holding_.store(on); }
  // Runs the completions held so far; returns how many ran.
  std::size_t release() { return held_.run(); }

  // What health() returns from now on (ready, no detail at first).
  void set_health(store_health h) {
    const std::lock_guard lock(mu_);
    health_ = std::move(h);
  }

  // Calls made to the store (acquire, peek, reset; sync or async; failed or not), counted
  // when made, in all and by the domain they went to.
  int calls() const { return calls_.load(); }
  int calls_to(std::size_t d) const {
    const std::lock_guard lock(mu_);
    const auto it = domains_.find(d);
    return it == domains_.end() ? 0 : it->second.calls;
  }
  // How many times failure_domain() was asked.
  int domain_queries() const { return queries_.load(); }
  // Multi-key calls made (acquire_all), each counted once.
  int multi_key_calls() const { return multi_calls_.load(); }

  // The memory store that decides.
  memory_store& inner() { return inner_; }

  void async_acquire(const request& r, completion done) override {
    decide(r, true, std::move(done));
  }
  void async_peek(const request& r, completion done) override { decide(r, false, std::move(done)); }
  void async_reset(std::string_view key, reset_completion done) override {
    const std::size_t d = reached(key);
    complete([this, d, key = std::string(key), done = std::move(done)] {
      if (const std::optional<error> e = injected(d)) {
        if (key.empty()) return done(make_error(errc::invalid_key, "key is empty"));
        return done(sluice::fail(*e));
      }
      done(inner_.reset(key));
    });
  }

  // A multi-key call is counted once per key, against each key's domain, and fails when
  // any of those domains fails (as a cluster's reservations do).
  void async_acquire_all(std::span<const request> rs, all_completion done) override {
    multi_calls_.fetch_add(1);
    std::vector<std::size_t> ds;
    std::vector<std::string> keys;
    for (const request& r : rs) {
      ds.push_back(reached(r.key));
      keys.emplace_back(r.key);
    }
    complete([this, ds, keys, copies = std::vector<request>(rs.begin(), rs.end()),
              done = std::move(done)]() mutable {
      for (std::size_t i = 0; i < copies.size(); ++i) copies[i].key = keys[i];
      for (const std::size_t d : ds) {
        if (const std::optional<error> e = injected(d)) {
          for (request r : copies) {
            r.cost = std::max<std::int64_t>(r.cost, 1);  // a check (cost 0) is valid input
            if (auto bad = refuse(r, *e); bad.error().code != e->code) {
              return done(sluice::fail(bad.error()));
            }
          }
          return done(sluice::fail(*e));
        }
      }
      done(inner_.acquire_all(copies));
    });
  }
  void async_refund(const request& r, completion done) override {
    const std::size_t d = reached(r.key);
    complete([this, d, key = std::string(r.key), r, done = std::move(done)] {
      request copy = r;
      copy.key = key;
      if (const std::optional<error> e = injected(d)) return done(refuse(copy, *e));
      done(inner_.refund(copy));
    });
  }

  std::string describe() const override { return o_.uri; }
  store_health health() const override {
    const std::lock_guard lock(mu_);
    return health_;
  }
  void visit_metrics(const metric_visitor& visit) const override { inner_.visit_metrics(visit); }
  std::size_t failure_domains() const noexcept override { return o_.domains; }
  std::size_t failure_domain(std::string_view key) const noexcept override {
    queries_.fetch_add(1);
    return domain_of(key);
  }

 private:
  struct domain_state {
    int calls = 0;
    std::optional<error> failure;
  };

  static memory_store_options memory_options(const clock& c) {
    memory_store_options m;
    m.time_source = &c;
    return m;
  }

  // A completion is running on this thread for this store: a sync call from it would wait
  // for itself, which async_store refuses.
  bool on_io_thread() const noexcept override { return completing_ == this; }

  std::size_t domain_of(std::string_view key) const { return o_.domain_of ? o_.domain_of(key) : 0; }

  // Counts a call to the domain of `key`, and returns that domain.
  std::size_t reached(std::string_view key) {
    const std::size_t d = domain_of(key);
    calls_.fetch_add(1);
    const std::lock_guard lock(mu_);
    ++domains_[d].calls;
    return d;
  }

  std::optional<error> injected(std::size_t d) const {
    const std::lock_guard lock(mu_);
    const auto it = domains_.find(d);
    if (it != domains_.end() && it->second.failure) return it->second.failure;
    return all_;
  }

  result<decision> refuse(const request& r, const error& e) const {
    if (r.key.empty()) return make_error(errc::invalid_key, "key is empty");
    const result<void> ok = check_request(r.limit, r.cost, r.now.value_or(o_.time_source->now()));
    if (!ok) return sluice::fail(ok.error());
    return sluice::fail(e);
  }

  void decide(const request& r, bool acquire, completion done) {
    const std::size_t d = reached(r.key);
    complete([this, d, key = std::string(r.key), r, acquire, done = std::move(done)] {
      request copy = r;
      copy.key = key;
      if (const std::optional<error> e = injected(d)) return done(refuse(copy, *e));
      done(acquire ? inner_.acquire(copy) : inner_.peek(copy));
    });
  }

  // Runs `call` now, or queues it while holding; either way as this store's I/O thread.
  void complete(std::function<void()> call) {
    auto as_io_thread = [this, call = std::move(call)] {
      const fake_store* outer = completing_;
      completing_ = this;
      call();
      completing_ = outer;
    };
    if (holding_.load()) {
      held_.push(std::move(as_io_thread));
    } else {
      as_io_thread();
    }
  }

  static inline thread_local const fake_store* completing_ = nullptr;

  const fake_store_options o_;
  memory_store inner_;
  deferred_calls held_;
  std::atomic<bool> holding_{false};
  std::atomic<int> calls_{0};
  mutable std::atomic<int> queries_{0};
  std::atomic<int> multi_calls_{0};
  mutable std::mutex mu_;
  std::optional<error> all_;                     // fail()
  std::map<std::size_t, domain_state> domains_;  // by the domain `domain_of` gives
  store_health health_;
};

}  // namespace sluice::test
