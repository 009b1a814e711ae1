// The `sluice` command: check, eval, bench and serve.
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/bench.h"
#include "cli/eval.h"
#include "core/text.h"
#ifdef SLUICE_WITH_GRPC
#include "cli/grpc_bench.h"
#endif
#include "server/config.h"
#include "server/serve.h"
#include "sluice/sluice.h"
#include "store/redis/scripts.h"

namespace {

using sluice::cli::decision_json;
using sluice::cli::print_json_line;

// Parses --now; exits with a message on a bad value.
std::optional<std::chrono::microseconds> parse_now(const std::string& text) {
  if (text.empty()) return std::nullopt;
  auto d = sluice::parse_duration(text, /*allow_long=*/true);
  if (!d) throw CLI::ValidationError("--now", d.error().message());
  return *d;
}

// Opens the store at `uri`, on `manual` when it is set. Exits with a message on failure.
std::shared_ptr<sluice::store> open(const std::string& uri, const sluice::manual_clock* manual) {
  auto s = manual != nullptr ? sluice::open_store(uri, *manual) : sluice::open_store(uri);
  if (!s) throw CLI::ValidationError("--store", s.error().message());
  return *s;
}

struct check_args {
  std::string store = "memory://";
  std::string limit;
  std::string algorithm = "sliding_log";
  std::int64_t cost = 1;
  bool peek = false;
  std::string now;
  std::string on_failure;  // empty: a store failure is an error
  std::vector<std::string> keys;
};

// Prints one decision per key; returns 0 when all were allowed, 1 when any was denied and
// 2 when any failed. With --on-failure, a store that fails gives the failure mode's
// decision, marked "fallback", instead of an error.
int run_check(const check_args& a) {
  auto lim = sluice::parse_limit(a.limit);
  if (!lim) throw CLI::ValidationError("--limit", lim.error().message());
  auto algo = sluice::parse_algorithm(a.algorithm);
  if (!algo) throw CLI::ValidationError("--algorithm", algo.error().message());
  const auto now = parse_now(a.now);
  std::optional<sluice::manual_clock> manual;
  if (now) manual.emplace(*now);
  auto store = open(a.store, manual ? &*manual : nullptr);

  // With --on-failure, decisions go through a limiter with an unnamed policy (the keys are
  // the store's keys as they are), whose failure mode decides when the store fails.
  std::optional<sluice::limiter> lim_with_policy;
  sluice::policy p;
  if (!a.on_failure.empty()) {
    auto mode = sluice::parse_failure_mode(a.on_failure);
    if (!mode) throw CLI::ValidationError("--on-failure", mode.error().message());
    p.limit = *lim;
    p.algorithm = *algo;
    p.on_failure = *mode;
    sluice::limiter_options o;
    o.store = store;
    if (manual) o.time_source = &*manual;
    o.warn = [](std::string_view message) { std::cerr << message << '\n'; };
    lim_with_policy.emplace(std::move(o));
  }

  int status = 0;
  for (const std::string& key : a.keys) {
    sluice::result<sluice::decision> d;
    if (lim_with_policy) {
      d = a.peek ? lim_with_policy->peek(p, key, a.cost) : lim_with_policy->acquire(p, key, a.cost);
    } else {
      const sluice::request r{key, *lim, *algo, a.cost, {}};
      d = a.peek ? store->peek(r) : store->acquire(r);
    }
    nlohmann::ordered_json j;
    j["key"] = key;
    if (d) {
      if (const auto mode = sluice::fallback_of(d->source)) {
        j["fallback"] = std::string(sluice::to_string(*mode));
      }
    }
    if (!d) {
      j["error"] = d.error().message();
      status = 2;
    } else {
      j.update(decision_json(*d));
      if (!d->allowed && status == 0) status = 1;
    }
    print_json_line(std::cout, j);
  }
  return status;
}

struct eval_args {
  std::string store = "memory://";
  std::string now;
  bool echo = false;
  bool strict = false;
  std::string file;
};

int run_eval(const eval_args& a) {
  sluice::cli::eval_options options;
  options.start = parse_now(a.now);
  options.echo = a.echo;
  std::optional<sluice::manual_clock> manual;
  if (options.start) manual.emplace(*options.start);
  auto store = open(a.store, manual ? &*manual : nullptr);
  std::ifstream file;
  if (!a.file.empty() && a.file != "-") {
    file.open(a.file);
    if (!file) throw CLI::ValidationError("FILE", "cannot open " + a.file);
  }
  std::istream& in = file.is_open() ? file : std::cin;
  const int failed =
      sluice::cli::run_eval(in, std::cout, *store, manual ? &*manual : nullptr, options);
  return a.strict && failed > 0 ? 1 : 0;
}

struct bench_args {
  std::string store = "memory://";
  std::string algorithm = "sliding_log";
  std::string limit = "1000000/1s";
  std::size_t keys = 10000;
  double seconds = 5;
  std::size_t inflight = 256;
  std::size_t refill = 0;
  std::size_t threads = 1;
  std::string prefix = "bench";
  std::string print_script;
  // --grpc: Envoy's rate limit service at this host:port instead of a store.
  std::string grpc;
  std::string domain = "bench";
  int descriptors = 1;
  std::uint32_t hits = 0;
  std::size_t channels = 1;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // Through a limiter with one policy (--limiter), its deny cache on (--deny-cache).
  bool limiter = false;
  bool deny_cache = false;
};

// Returns the whole of `path` (a file CLI11 checked exists), or throws naming the option.
std::string read_pem(const std::string& option, const std::string& path) {
  if (path.empty()) return {};
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  if (!in) throw CLI::ValidationError(option, "cannot read " + path);
  return content.str();
}

// Prints the report's JSON line with what the run was; returns 0 when every call got a
// decision, 1 when some failed.
int print_bench(const sluice::cli::bench_report& report, nlohmann::ordered_json about) {
  auto j = sluice::cli::bench_json(report);
  j.update(about);
  print_json_line(std::cout, j);
  return report.errors + report.timeouts > 0 ? 1 : 0;
}

// `sluice bench --grpc`: the same figures for ShouldRateLimit calls (a decision per request).
int run_grpc_bench([[maybe_unused]] const bench_args& a) {
#ifdef SLUICE_WITH_GRPC
  sluice::cli::grpc_bench_options options;
  options.target = a.grpc;
  options.domain = a.domain;
  options.descriptors = a.descriptors;
  options.prefix = a.prefix;
  options.hits = a.hits;
  options.channels = a.channels;
  options.tls_ca_pem = read_pem("--tls-ca", a.tls_ca);
  options.tls_cert_pem = read_pem("--tls-cert", a.tls_cert);
  options.tls_key_pem = read_pem("--tls-key", a.tls_key);
  options.keys = a.keys;
  options.seconds = std::chrono::duration<double>(a.seconds);
  options.inflight = a.inflight;
  options.refill = a.refill;
  const auto report = sluice::cli::run_grpc_bench(options);
  if (!report) {
    nlohmann::ordered_json j;
    j["error"] = report.error().message();
    print_json_line(std::cout, j);
    return 2;
  }
  nlohmann::ordered_json about;
  about["grpc"] = options.target;
  about["domain"] = options.domain;
  about["descriptors"] = options.descriptors;
  about["keys"] = options.keys;
  about["inflight"] = options.inflight;
  about["channels"] = options.channels;
  about["tls"] = !options.tls_ca_pem.empty();
  return print_bench(*report, about);
#else
  throw CLI::ValidationError("--grpc", "this sluice was built without gRPC (SLUICE_WITH_GRPC)");
#endif
}

// Prints one JSON line of figures; returns 0 when every call got a decision, 1 when some
// failed, 2 when the store (or the --grpc service) does not answer at all. With --print-script,
// prints the Lua source the Redis store runs for that algorithm (or "batch": the batch script;
// "sliding_log_packed": sliding_log's in log_layout=packed),
// byte for byte, and nothing else.
int run_bench(const bench_args& a) {
  if (a.print_script == "batch") {
    std::cout << sluice::redis::batch_script_source() << std::flush;
    return 0;
  }
  if (a.print_script == "sliding_log_packed") {
    std::cout << sluice::redis::packed_log_script_source() << std::flush;
    return 0;
  }
  if (!a.print_script.empty()) {
    auto algo = sluice::parse_algorithm(a.print_script);
    if (!algo) throw CLI::ValidationError("--print-script", algo.error().message());
    std::cout << sluice::redis::script_source(*algo) << std::flush;
    return 0;
  }
  if (!a.grpc.empty()) return run_grpc_bench(a);
  sluice::cli::bench_options options;
  auto lim = sluice::parse_limit(a.limit);
  if (!lim) throw CLI::ValidationError("--limit", lim.error().message());
  options.limit = *lim;
  auto algo = sluice::parse_algorithm(a.algorithm);
  if (!algo) throw CLI::ValidationError("--algorithm", algo.error().message());
  options.algorithm = *algo;
  options.keys = a.keys;
  options.seconds = std::chrono::duration<double>(a.seconds);
  options.inflight = a.inflight;
  options.refill = a.refill;
  options.threads = a.threads;
  options.prefix = a.prefix;
  if (options.threads > options.keys) {
    throw CLI::ValidationError("--threads", "each thread needs keys of its own: at most --keys");
  }
  auto store = open(a.store, nullptr);

  // One call first, spending nothing: a store that is down fails here, not 5 s of errors.
  const std::string first = a.prefix + ":0";
  if (auto d = store->peek({first, options.limit, options.algorithm, 1, {}}); !d) {
    nlohmann::ordered_json j;
    j["error"] = d.error().message();
    print_json_line(std::cout, j);
    return 2;
  }
  sluice::cli::bench_report report;
  nlohmann::ordered_json about;
  about["store"] = store->describe();
  if (a.limiter || a.deny_cache) {
    if (!sluice::internal::valid_policy_name(a.prefix)) {
      throw CLI::ValidationError("--prefix",
                                 "with --limiter or --deny-cache the prefix is the "
                                 "policy's name: use 1 to 64 of A-Z a-z 0-9 _ . -");
    }
    sluice::limiter_options lo;
    lo.store = store;
    sluice::limiter limiter(lo);
    report = sluice::cli::run_limiter_bench(limiter, options, a.deny_cache);
    // A decision a failure mode made is no measure of the store: count it as an error.
    const sluice::limiter_stats st = limiter.stats();
    const std::uint64_t fallbacks = st.fallbacks_allow + st.fallbacks_deny + st.fallbacks_local;
    report.errors += fallbacks;
    about["deny_cache"] = a.deny_cache;
    about["deny_cache_hits"] = st.deny_cache_hits;
    about["store_errors"] = st.store_errors;
    about["fallbacks"] = fallbacks;
  } else {
    report = sluice::cli::run_bench(*store, options);
  }
  about["algorithm"] = std::string(sluice::to_string(options.algorithm));
  about["limit"] = sluice::to_string(options.limit);
  about["keys"] = options.keys;
  about["inflight"] = options.inflight;
  about["threads"] = options.threads;
  return print_bench(report, about);
}

struct serve_args {
  std::string config;
  std::string listen;
  std::string grpc_listen;
  std::string envoy_config;
  std::string store;
  std::size_t io_threads = 0;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  bool admin_open = false;
};

// Runs the server until SIGTERM/SIGINT; returns 0 after the drain, 2 on a bad config.
int run_serve(const serve_args& a, const CLI::App& cmd) {
  sluice::server::server_config config;
  if (!a.config.empty()) {
    auto loaded = sluice::server::load_config(a.config);
    if (!loaded) {
      std::cerr << "sluice serve: " << loaded.error().message() << "\n";
      return 2;
    }
    config = std::move(*loaded);
  }
  // Flags override the file.
  if (cmd.count("--listen") > 0) config.listen = a.listen;
  if (cmd.count("--grpc-listen") > 0) config.grpc_listen = a.grpc_listen;
  if (cmd.count("--envoy-config") > 0) config.envoy_config = a.envoy_config;
  if (cmd.count("--store") > 0) config.store = a.store;
  if (cmd.count("--io-threads") > 0) config.io_threads = a.io_threads;
  if (cmd.count("--tls-cert") > 0) config.tls.cert = a.tls_cert;
  if (cmd.count("--tls-key") > 0) config.tls.key = a.tls_key;
  if (cmd.count("--tls-client-ca") > 0) config.tls.client_ca = a.tls_client_ca;
  if (a.admin_open) config.admin_open = true;
  if (config.tls.cert.empty() != config.tls.key.empty() ||
      (!config.tls.client_ca.empty() && config.tls.cert.empty())) {
    std::cerr << "sluice serve: TLS needs both --tls-cert and --tls-key\n";
    return 2;
  }
  return sluice::server::serve(config, std::cout);
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  CLI::App app{"sluice: sliding-window rate limiting"};
  app.require_subcommand(1);

  check_args check;
  auto* check_cmd = app.add_subcommand(
      "check",
      "Decide for each KEY and print one JSON decision per line. Exit status: 0 all "
      "allowed, 1 some denied, 2 some failed.");
  check_cmd->add_option("--store", check.store, "Store URI (memory://)")->capture_default_str();
  check_cmd->add_option("--limit", check.limit, "Limit, e.g. 30/hour, 5/10s, 10 per minute")
      ->required();
  check_cmd->add_option("--algorithm", check.algorithm, "sliding_log, sliding_counter or gcra")
      ->capture_default_str();
  check_cmd->add_option("--cost", check.cost, "Units one request spends")->capture_default_str();
  check_cmd->add_flag("--peek", check.peek, "Decide without spending");
  check_cmd->add_option("--now", check.now,
                        "Fixed time since the Unix epoch (e.g. 0s, 1700000000s) instead of the "
                        "clock");
  check_cmd->add_option("--on-failure", check.on_failure,
                        "When the store fails: allow, deny or local (decide in-process); by "
                        "default the key gets an error");
  check_cmd->add_option("KEY", check.keys, "Keys to decide for")->required();

  eval_args eval;
  auto* eval_cmd = app.add_subcommand(
      "eval",
      "Read requests, one per line: KEY LIMIT [ALGORITHM] [COST] [peek|reset|refund]; '#' starts a "
      "comment; with --now, '@advance DURATION' moves the clock. Prints one JSON line each.");
  eval_cmd->add_option("--store", eval.store, "Store URI (memory://)")->capture_default_str();
  eval_cmd->add_option("--now", eval.now,
                       "Start a manual clock at this time since the Unix epoch (e.g. 0s)");
  eval_cmd->add_flag("--echo", eval.echo, "Print each input line (\"> line\") before its result");
  eval_cmd->add_flag("--strict", eval.strict, "Exit with status 1 when any line failed");
  eval_cmd->add_option("FILE", eval.file, "Input file (default: standard input)");

  bench_args bench;
  auto* bench_cmd = app.add_subcommand(
      "bench",
      "Keep --inflight acquires in flight over --keys keys (<prefix>:<i>, round robin) "
      "for --seconds, through the store's async API (or, with --grpc, as ShouldRateLimit "
      "calls to Envoy's rate limit service), and print one JSON line: decisions, seconds, "
      "per_second, allowed, denied, errors, timeouts, p50_us, p99_us, p999_us.");
  auto* bench_store =
      bench_cmd->add_option("--store", bench.store, "Store URI (memory://)")->capture_default_str();
  auto* bench_algorithm =
      bench_cmd->add_option("--algorithm", bench.algorithm, "sliding_log, sliding_counter or gcra")
          ->capture_default_str();
  auto* bench_limit =
      bench_cmd->add_option("--limit", bench.limit, "Limit of every key")->capture_default_str();
  bench_cmd->add_option("--keys", bench.keys, "Distinct keys")
      ->check(CLI::Range(std::size_t{1}, std::size_t{10'000'000}))
      ->capture_default_str();
  bench_cmd->add_option("--seconds", bench.seconds, "How long to run")
      ->check(CLI::Range(0.001, 3600.0))
      ->capture_default_str();
  bench_cmd->add_option("--inflight", bench.inflight, "Calls in flight at once")
      ->check(CLI::Range(std::size_t{1}, std::size_t{65536}))
      ->capture_default_str();
  auto* bench_threads =
      bench_cmd
          ->add_option("--threads", bench.threads,
                       "Generator threads on the one store, each with --inflight calls of its "
                       "own over its own share of the --keys")
          ->check(CLI::Range(std::size_t{1}, std::size_t{256}))
          ->capture_default_str();
  bench_cmd->add_option("--prefix", bench.prefix, "Prefix of the keys")->capture_default_str();
  bench_cmd->add_option("--refill", bench.refill, "Calls per top-up (0: inflight/16)")->group("");
  auto* bench_grpc =
      bench_cmd
          ->add_option("--grpc", bench.grpc,
                       "Instead of a store, call Envoy's rate limit service (ShouldRateLimit) at "
                       "HOST:PORT, as `sluice serve --grpc-listen`; its limits are the server's")
          ->excludes(bench_store, bench_algorithm, bench_limit, bench_threads);
  bench_cmd->add_option("--domain", bench.domain, "With --grpc: the requests' domain")
      ->needs(bench_grpc)
      ->capture_default_str();
  bench_cmd
      ->add_option("--descriptors", bench.descriptors,
                   "With --grpc: 1 (user=<prefix>:<i>) or 2 (and remote_address, over 1024 "
                   "addresses) per request, decided all or nothing")
      ->needs(bench_grpc)
      ->check(CLI::Range(1, 2))
      ->capture_default_str();
  bench_cmd->add_option("--hits", bench.hits, "With --grpc: hits_addend (0 means 1)")
      ->needs(bench_grpc)
      ->capture_default_str();
  bench_cmd
      ->add_option("--channels", bench.channels,
                   "With --grpc: connections, calls spread over them round robin")
      ->needs(bench_grpc)
      ->check(CLI::Range(std::size_t{1}, std::size_t{64}))
      ->capture_default_str();
  auto* bench_tls_ca =
      bench_cmd
          ->add_option("--tls-ca", bench.tls_ca,
                       "With --grpc: speak TLS, trusting the CA certificates in this PEM file")
          ->needs(bench_grpc)
          ->check(CLI::ExistingFile);
  auto* bench_tls_key =
      bench_cmd->add_option("--tls-key", bench.tls_key, "With --tls-ca: the PEM key of --tls-cert")
          ->needs(bench_tls_ca)
          ->check(CLI::ExistingFile);
  bench_cmd
      ->add_option("--tls-cert", bench.tls_cert,
                   "With --tls-ca: a PEM client certificate, for a server that asks for one")
      ->needs(bench_tls_ca, bench_tls_key)
      ->check(CLI::ExistingFile);
  auto* bench_limiter = bench_cmd->add_flag(
      "--limiter", bench.limiter,
      "Through a limiter's async API, with one policy named --prefix (the same store keys), "
      "not the store's");
  auto* bench_deny_cache = bench_cmd->add_flag(
      "--deny-cache", bench.deny_cache,
      "Through a limiter (as --limiter) whose policy has the deny cache on: denied keys are "
      "denied in-process until the store's retry_after");
  bench_grpc->excludes(bench_limiter, bench_deny_cache);
  bench_cmd
      ->add_option(
          "--print-script", bench.print_script,
          "Print the Redis store's Lua script for ALGORITHM (or batch, sliding_log_packed) "
          "and exit")
      ->group("");

  serve_args serve;
  auto* serve_cmd = app.add_subcommand(
      "serve",
      "Run the HTTP decision server. Prints 'sluice listening on HOST:PORT' as the first line "
      "of stdout (then 'sluice grpc listening on HOST:PORT' with --grpc-listen); logs go to "
      "stderr. SIGTERM or SIGINT drains requests in flight and exits 0.");
  serve_cmd->add_option("--config", serve.config, "YAML configuration (see examples/sluice.yaml)");
  serve_cmd->add_option("--listen", serve.listen,
                        "host:port to listen on, port 0 for a free one (default 127.0.0.1:8080)");
  serve_cmd->add_option("--grpc-listen", serve.grpc_listen,
                        "host:port to serve Envoy's rate limit service (gRPC) and "
                        "grpc.health.v1 on, port 0 for a free one (default: off)");
  serve_cmd->add_option("--envoy-config", serve.envoy_config,
                        "Directory of envoyproxy/ratelimit YAML files answered on --grpc-listen; "
                        "SIGHUP reloads it");
  serve_cmd->add_option("--store", serve.store, "Store URI (default memory://)");
  serve_cmd->add_option("--io-threads", serve.io_threads, "I/O threads (0: one per core)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1024}));
  serve_cmd
      ->add_option("--tls-cert", serve.tls_cert,
                   "PEM certificate chain: both listeners speak TLS (with --tls-key)")
      ->check(CLI::ExistingFile);
  serve_cmd->add_option("--tls-key", serve.tls_key, "PEM private key of --tls-cert")
      ->check(CLI::ExistingFile);
  serve_cmd
      ->add_option("--tls-client-ca", serve.tls_client_ca,
                   "PEM CA certificates: clients must present a certificate one of them signed")
      ->check(CLI::ExistingFile);

  serve_cmd->add_flag("--admin-open", serve.admin_open,
                      "With no admin token configured, let anyone reset keys (DELETE "
                      "/v1/keys/...); without it such calls are refused with 403");

  try {
    app.parse(argc, argv);
    if (*check_cmd) return run_check(check);
    if (*eval_cmd) return run_eval(eval);
    if (*bench_cmd) return run_bench(bench);
    if (*serve_cmd) return run_serve(serve, *serve_cmd);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return 0;
}
