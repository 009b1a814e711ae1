#include "server/serve.h"

#include <algorithm>
#include <exception>
#include <ostream>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "core/text.h"
#include "server/handlers.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "sluice/open_store.h"

namespace sluice::server {

std::unique_ptr<limiter> make_limiter(const server_config& config, std::shared_ptr<store> s,
                                      std::function<void(std::string_view)> warn) {
  limiter_options o;
  o.store = std::move(s);
  o.breaker = config.breaker;
  o.warn = std::move(warn);
  o.warn_interval = config.warn_interval;
  // The local fallback store holds scoped keys: `<policy>:<key>`, the name 64 bytes at most.
  o.local.max_key_length = std::min<std::size_t>(65535, config.max_key_bytes + 65);
  auto lim = std::make_unique<limiter>(std::move(o));
  for (const served_policy& sp : config.policies) {
    if (auto ok = lim->add_policy(sp.policy); !ok) throw std::runtime_error(ok.error().message());
  }
  return lim;
}

void configure_logging(const std::string& level) {
  auto logger =
      std::make_shared<spdlog::logger>("sluice", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(std::move(logger));
}

service::service(const server_config& config, bool handle_signals) : config_(config) {
  std::vector<std::string> names;
  for (const served_policy& sp : config_.policies) names.push_back(sp.policy.name);
  metrics_ = std::make_unique<server::metrics>(std::move(names));

  // A memory store must hold the longest key the server accepts, scoped by a policy name
  // (up to 64 bytes and a colon), unless the URI says otherwise.
  open_options open;
  open.max_key_length = std::min<std::size_t>(65535, config_.max_key_bytes + 65);
  auto opened = open_store(config_.store, open);
  if (!opened) {
    throw std::runtime_error("store " + internal::quote(config_.store) + ": " +
                             opened.error().message());
  }
  // The limiter owns the store, and outlives the handler.
  limiter_ = make_limiter(config_, std::move(*opened),
                          [](std::string_view message) { spdlog::warn("{}", message); });
  handler_ = std::make_unique<request_handler>(config_, *limiter_, *metrics_);

  http_server_options options = server_options(config_);
  options.handle_signals = handle_signals;
  io_threads_ = options.io_threads != 0 ? options.io_threads
                                        : std::max(1u, std::thread::hardware_concurrency());
  server_ = std::make_unique<http_server>(std::move(options), *handler_, *metrics_);
}

service::~service() {
  if (started_ && !stopped_) {
    server_->shutdown();
    server_->wait();
  }
  limiter_.reset();
  server_.reset();
  handler_.reset();
  metrics_.reset();
}

std::string service::local_address() const { return server_->local_address(); }

std::uint16_t service::port() const { return server_->port(); }

void service::start() {
  if (started_) return;
  started_ = true;
  server_->start();
}

void service::shutdown() { server_->shutdown(); }

void service::wait() {
  if (!started_ || stopped_) return;
  server_->wait();
  stopped_ = true;
}

std::string service::summary() const {
  std::string out = "listening on " + server_->local_address() + ", store " +
                    limiter_->store().describe() + ", " + std::to_string(io_threads_) +
                    " I/O thread(s), policies: ";
  if (config_.policies.empty()) out += "none (inline limits only)";
  for (std::size_t i = 0; i < config_.policies.size(); ++i) {
    const served_policy& sp = config_.policies[i];
    if (i > 0) out += ", ";
    out += sp.policy.name + " (" + to_string(sp.policy.limit) + " " +
           std::string(to_string(sp.policy.algorithm)) + ", on_failure " +
           std::string(to_string(sp.policy.on_failure)) + (sp.policy.shadow ? ", shadow" : "") +
           ")";
  }
  if (!config_.api_tokens.empty()) out += "; API tokens required";
  if (!config_.admin_tokens.empty()) out += "; admin tokens required";
  return out;
}

int serve(const server_config& config, std::ostream& out) {
  configure_logging(config.log_level);
  try {
    service s(config, /*handle_signals=*/true);
    s.start();
    // Only now: a script that reads this line and sends SIGTERM gets a drain, not a kill.
    out << "sluice listening on " << s.local_address() << std::endl;
    spdlog::info("sluice serve: {}", s.summary());
    s.wait();
    spdlog::info("sluice serve: stopped");
    return 0;
  } catch (const std::exception& e) {
    spdlog::error("sluice serve: {}", e.what());
    return 1;
  }
}

}  // namespace sluice::server
