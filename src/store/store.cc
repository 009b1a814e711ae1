#include "sluice/store.h"

#include <condition_variable>
#include <mutex>
#include <optional>
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

unexpected<error> io_thread_error(const store& s) {
  return make_error(errc::store_error, "store " + s.describe() +
                                           ": a synchronous call from a completion would wait "
                                           "for itself; use the async form there");
}

}  // namespace

result<decision> async_store::acquire(const request& r) {
  if (on_io_thread()) return io_thread_error(*this);
  waiter<decision> w;
  async_acquire(r, w.completion());
  return w.wait();
}

result<decision> async_store::peek(const request& r) {
  if (on_io_thread()) return io_thread_error(*this);
  waiter<decision> w;
  async_peek(r, w.completion());
  return w.wait();
}

result<void> async_store::reset(std::string_view key) {
  if (on_io_thread()) return io_thread_error(*this);
  waiter<void> w;
  async_reset(key, w.completion());
  return w.wait();
}

}  // namespace sluice
