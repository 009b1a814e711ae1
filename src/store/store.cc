#include "sluice/store.h"

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace sluice {
namespace {

// Blocks the calling thread until a completion runs. An async_store answers every call by
// its deadline, so the wait is bounded.
template <class T>
class waiter {
 public:
  std::function<void(result<T>)> completion() {
    return [this](result<T> r) {
      const std::lock_guard lock(mu_);
      value_.emplace(std::move(r));
      cv_.notify_one();
    };
  }
  result<T> wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return value_.has_value(); });
    return std::move(*value_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<result<T>> value_;
};

// Starts an async call, `start(completion)`, and waits for its result, unless the caller is
// the store's own I/O thread, where the wait would never end.
template <class T, class Start>
result<T> wait_for(const store& s, bool on_io_thread, Start&& start) {
  if (on_io_thread) {
    return make_error(errc::store_error, "store " + s.describe() +
                                             ": a synchronous call from a completion would wait "
                                             "for itself; use the async form there");
  }
  waiter<T> w;
  std::forward<Start>(start)(w.completion());
  return w.wait();
}

}  // namespace

result<decision> async_store::acquire(const request& r) {
  return wait_for<decision>(*this, on_io_thread(),
                            [&](completion done) { async_acquire(r, std::move(done)); });
}

result<decision> async_store::peek(const request& r) {
  return wait_for<decision>(*this, on_io_thread(),
                            [&](completion done) { async_peek(r, std::move(done)); });
}

result<void> async_store::reset(std::string_view key) {
  return wait_for<void>(*this, on_io_thread(),
                        [&](reset_completion done) { async_reset(key, std::move(done)); });
}

result<std::vector<decision>> async_store::acquire_all(std::span<const request> rs) {
  return wait_for<std::vector<decision>>(
      *this, on_io_thread(), [&](all_completion done) { async_acquire_all(rs, std::move(done)); });
}

result<decision> async_store::refund(const request& r) {
  return wait_for<decision>(*this, on_io_thread(),
                            [&](completion done) { async_refund(r, std::move(done)); });
}

result<std::vector<request>> merge_requests(std::span<const request> rs,
                                            std::vector<std::size_t>& group) {
  if (rs.size() > max_requests_per_call) {
    return make_error(errc::invalid_cost, std::to_string(rs.size()) +
                                              " requests in one call; the most is " +
                                              std::to_string(max_requests_per_call));
  }
  std::vector<request> merged;
  merged.reserve(rs.size());
  group.clear();
  group.reserve(rs.size());
  for (const request& r : rs) {
    if (r.cost < 0) return make_error(errc::invalid_cost, "cost must not be negative");
    std::size_t g = 0;
    while (g < merged.size() && merged[g].key != r.key) ++g;  // a few requests: no hashing
    if (g == merged.size()) {
      merged.push_back(r);
    } else {
      request& m = merged[g];
      if (m.limit != r.limit || m.algorithm != r.algorithm) {
        return make_error(errc::invalid_key, "one call asks for key \"" +
                                                 std::string(r.key.substr(0, 64)) +
                                                 "\" twice with different limits or algorithms");
      }
      if (r.cost > m.limit.count - m.cost) {
        return make_error(errc::cost_exceeds_limit, "the requests on key \"" +
                                                        std::string(r.key.substr(0, 64)) +
                                                        "\" cost more than its limit together (" +
                                                        std::to_string(m.limit.count) + ")");
      }
      m.cost += r.cost;
    }
    group.push_back(g);
  }
  return merged;
}

}  // namespace sluice
