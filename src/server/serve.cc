#include "server/serve.h"

#include <algorithm>
#include <exception>
#include <fstream>
#include <ostream>
#include <sstream>
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

#ifdef SLUICE_WITH_GRPC
#include "server/grpc_server.h"
#include "server/rls.h"
#endif

namespace sluice::server {

namespace {

// Returns the whole of a file the configuration named and checked (tls.*).
[[maybe_unused]] std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  if (!in) throw std::runtime_error("cannot read " + internal::quote(path));
  return content.str();
}

}  // namespace

#ifdef SLUICE_WITH_GRPC
struct service::grpc_listener {
  std::unique_ptr<rls_handler> handler;
  envoy_rls_handler* envoy = nullptr;   // `handler`, when it answers from envoy_config
  std::unique_ptr<grpc_server> server;  // declared after the handler it calls
};
#else
struct service::grpc_listener {};
#endif

std::unique_ptr<limiter> make_limiter(const server_config& config, std::shared_ptr<store> s,
                                      std::function<void(std::string_view)> warn) {
  limiter_options o;
  o.store = std::move(s);
  o.breaker = config.breaker;
  o.warn = std::move(warn);
  o.warn_interval = config.warn_interval;
  o.deny_cache_max_keys = config.deny_cache_max_keys;
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

service::service(const server_config& config, bool handle_signals, rls_handler_factory make_rls)
    : config_(config) {
  // spdlog makes its registry (and the default logger) on first use. Make that happen here,
  // on the thread that builds the service, before the store's I/O thread (which may warn as
  // soon as it connects) and the server's threads exist: a first use on two of them at once
  // is a race ThreadSanitizer reports (the registry's state seen half made).
  spdlog::default_logger_raw();
  std::vector<std::string> names;
  for (const served_policy& sp : config_.policies) names.push_back(sp.policy.name);
  metrics_ = std::make_unique<server::metrics>(std::move(names));

  // A memory store must hold the longest key the server accepts, scoped by a policy name
  // (up to 64 bytes and a colon), unless the URI says otherwise.
  open_options open;
  open.max_key_length = std::min<std::size_t>(65535, config_.max_key_bytes + 65);
  open.warn = [](std::string_view message) { spdlog::warn("{}", message); };
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
  // The gRPC listener drains, and is closed, with the HTTP server. It exists by the time
  // this runs: only after start().
  options.on_shutdown = [this](bool now) { stop_grpc(now); };
  if (!config_.envoy_config.empty()) options.on_reload = [this] { reload_envoy_config(); };
  io_threads_ = options.io_threads != 0 ? options.io_threads
                                        : std::max(1u, std::thread::hardware_concurrency());
  server_ = std::make_unique<http_server>(std::move(options), *handler_, *metrics_);
  // Last: nothing after it throws, so a running gRPC server is never left to the unwinding.
  if (!config_.grpc_listen.empty()) start_grpc(make_rls);
}

void service::start_grpc([[maybe_unused]] const rls_handler_factory& make_rls) {
#ifdef SLUICE_WITH_GRPC
  if (auto problem = listen_problem(config_.grpc_listen); !problem.empty()) {
    throw std::runtime_error("grpc_listen " + internal::quote(config_.grpc_listen) + ": " +
                             problem);
  }
  auto g = std::make_unique<grpc_listener>();
  if (make_rls) {
    g->handler = make_rls(config_, *limiter_, *metrics_);
  } else if (auto envoy = make_rls_handler(config_, *limiter_, *metrics_)) {
    g->envoy = envoy.get();
    g->handler = std::move(envoy);
  }
  if (!g->handler) {
    throw std::runtime_error(
        "grpc_listen needs envoy_config: Envoy's rate limit service has no descriptors to "
        "answer for without it");
  }
  grpc_server_options options;
  options.listen = config_.grpc_listen;
  if (config_.tls.enabled()) {
    // The HTTP listener has loaded and checked the same files by now.
    options.tls_cert_pem = read_file(config_.tls.cert);
    options.tls_key_pem = read_file(config_.tls.key);
    if (!config_.tls.client_ca.empty())
      options.tls_client_ca_pem = read_file(config_.tls.client_ca);
  }
  options.drain_timeout = config_.drain_timeout;
  // Cheap and without I/O, as the health service needs: what the store already knows.
  options.serving = [lim = limiter_.get()] { return lim->store().health().ready; };
  g->server = std::make_unique<grpc_server>(std::move(options), *g->handler);
  if (auto ok = g->server->start(); !ok) throw std::runtime_error(ok.error().message());
  grpc_ = std::move(g);
#else
  throw std::runtime_error("grpc_listen " + internal::quote(config_.grpc_listen) +
                           ": this sluice was built without gRPC (SLUICE_WITH_GRPC=OFF)");
#endif
}

void service::reload_envoy_config() {
#ifdef SLUICE_WITH_GRPC
  if (!grpc_ || grpc_->envoy == nullptr) return;
  if (auto files = grpc_->envoy->reload(config_.envoy_config)) {
    spdlog::info("sluice serve: envoy_config reloaded ({} files)", *files);
  } else {
    spdlog::error("sluice serve: envoy_config not reloaded, keeping the last one: {}",
                  files.error().message());
  }
#endif
}

void service::stop_grpc([[maybe_unused]] bool now) {
#ifdef SLUICE_WITH_GRPC
  if (!grpc_) return;
  if (now) {
    grpc_->server->shutdown_now();
  } else {
    grpc_->server->shutdown();
  }
#endif
}

void service::wait_grpc() {
#ifdef SLUICE_WITH_GRPC
  if (grpc_) grpc_->server->wait();
#endif
}

service::~service() {
  if (started_ && !stopped_) {
    server_->shutdown();
    server_->wait();
  }
  // gRPC calls use the limiter: they are over (answered, or cancelled) before it goes.
  stop_grpc(false);
  wait_grpc();
  limiter_.reset();
  server_.reset();
  grpc_.reset();
  handler_.reset();
  metrics_.reset();
}

std::string service::local_address() const { return server_->local_address(); }

std::uint16_t service::port() const { return server_->port(); }

std::string service::grpc_address() const {
#ifdef SLUICE_WITH_GRPC
  if (grpc_) return grpc_->server->local_address();
#endif
  return {};
}

void service::start() {
  if (started_) return;
  started_ = true;
  server_->start();
}

void service::shutdown() {
  server_->shutdown();
  stop_grpc(false);
}

void service::wait() {
  if (!started_ || stopped_) return;
  server_->wait();
  wait_grpc();
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
  if (config_.tls.enabled()) {
    out += config_.tls.client_ca.empty() ? "; TLS" : "; TLS with client certificates";
  }
  if (!config_.api_tokens.empty()) out += "; API tokens required";
  if (!config_.admin_tokens.empty()) {
    out += "; admin tokens required";
  } else if (config_.admin_open) {
    out += "; admin calls (reset) open to anyone (admin_open)";
  } else {
    out += "; admin calls (reset) refused: no admin token configured";
  }
  if (const std::string g = grpc_address(); !g.empty()) {
    out += "; gRPC (Envoy rate limit service, health) on " + g;
  }
  return out;
}

int serve(const server_config& config, std::ostream& out) {
  configure_logging(config.log_level);
  try {
    service s(config, /*handle_signals=*/true);
    s.start();
    // Only now: a script that reads this line and sends SIGTERM gets a drain, not a kill.
    out << "sluice listening on " << s.local_address() << std::endl;
    if (const std::string g = s.grpc_address(); !g.empty()) {
      out << "sluice grpc listening on " << g << std::endl;
    }
    spdlog::info("sluice serve: {}", s.summary());
    if (config.admin_tokens.empty() && config.admin_open) {
      spdlog::warn("sluice serve: admin_open: anyone who reaches {} may reset any key",
                   s.local_address());
    }
    s.wait();
    spdlog::info("sluice serve: stopped");
    return 0;
  } catch (const std::exception& e) {
    spdlog::error("sluice serve: {}", e.what());
    return 1;
  }
}

}  // namespace sluice::server
