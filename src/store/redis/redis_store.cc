#include "sluice/redis_store.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "store/redis/connection.h"
#include "store/redis/single.h"

namespace sluice {
namespace {

namespace asio = boost::asio;
using redis::script_op;

}  // namespace

struct redis_store::impl {
  explicit impl(redis_store_options o) : shared(std::make_shared<redis::shared_state>(o)) {}

  std::shared_ptr<redis::shared_state> shared;
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::shared_ptr<redis::connection>> connections;
  std::atomic<std::size_t> next{0};
  std::thread thread;

  redis::connection& pick() {
    return *connections[next.fetch_add(1, std::memory_order_relaxed) % connections.size()];
  }

  void decide(const request& r, script_op op, completion done) {
    redis::submit_decide(shared, pick(), r, op, std::move(done));
  }
  void decide_all(std::span<const request> rs, all_completion done) {
    redis::submit_decide_all(shared, pick(), rs, std::move(done));
  }
  void reset(std::string_view key, reset_completion done) {
    redis::submit_reset(shared, pick(), key, std::move(done));
  }
};

redis_store::redis_store(redis_store_options options) {
  options.pool = std::clamp<std::size_t>(options.pool, 1, 64);
  impl_ = std::make_shared<impl>(std::move(options));
  const auto& o = impl_->shared->options;
  redis::endpoint to{o.host, o.port, o.unix_socket};
  impl_->work.emplace(impl_->io.get_executor());
  // One server, one failure domain: any connection back means the server answers again.
  impl_->shared->on_reconnected = [s = impl_->shared.get()](const redis::endpoint&) {
    s->emit({store_event::kind::reachable, 0, {}});
  };
  for (std::size_t i = 0; i < o.pool; ++i) {
    impl_->connections.push_back(redis::make_connection(impl_->io, impl_->shared, to));
  }
  for (auto& c : impl_->connections) c->start();
  impl_->thread = std::thread([io = &impl_->io] { io->run(); });
  for (auto& c : impl_->connections) c->wait_first_attempt(o.connect_timeout);
}

void redis_store::set_listener(event_listener listen) {
  impl_->shared->set_listener(std::move(listen));
}

redis_store::~redis_store() {
  for (auto& c : impl_->connections) c->close();
  impl_->work.reset();
  // Let the closes run, then stop whatever timers are still armed.
  asio::post(impl_->io, [io = &impl_->io] { io->stop(); });
  impl_->thread.join();
}

void redis_store::async_acquire(const request& r, completion done) {
  impl_->decide(r, script_op::acquire, std::move(done));
}

void redis_store::async_peek(const request& r, completion done) {
  impl_->decide(r, script_op::peek, std::move(done));
}

void redis_store::async_acquire_all(std::span<const request> rs, all_completion done) {
  impl_->decide_all(rs, std::move(done));
}

void redis_store::async_refund(const request& r, completion done) {
  impl_->decide(r, script_op::refund, std::move(done));
}

void redis_store::async_reset(std::string_view key, reset_completion done) {
  impl_->reset(key, std::move(done));
}

std::string redis_store::describe() const {
  const auto& o = impl_->shared->options;
  if (!o.unix_socket.empty()) return "unix://" + o.unix_socket + redis::describe_batching(o);
  return std::string(o.tls ? "rediss://" : "redis://") +
         redis::endpoint{o.host, o.port, {}}.text() + "/" + std::to_string(o.db) +
         redis::describe_batching(o);
}

redis_store_stats redis_store::stats() const {
  redis_store_stats out;
  redis::read_common_stats(*impl_->shared, out);
  return out;
}

bool redis_store::on_io_thread() const noexcept {
  return std::this_thread::get_id() == impl_->thread.get_id();
}

store_health redis_store::health() const {
  store_health h;
  std::size_t up = 0;
  for (const auto& c : impl_->connections) {
    if (c->ready()) {
      ++up;
    } else if (h.detail.empty()) {
      h.detail = c->unavailable_reason();
    }
  }
  h.ready = up > 0;
  if (h.ready && !h.detail.empty()) {
    h.detail = std::to_string(up) + " of " + std::to_string(impl_->connections.size()) +
               " connections up; " + h.detail;
  }
  return h;
}

void redis_store::visit_metrics(const metric_visitor& visit) const {
  redis::visit_common_metrics(visit, stats());
}

}  // namespace sluice
