#include "server/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <system_error>

#include "server/rls_metrics.h"

namespace sluice::server {
namespace {

constexpr std::string_view kOutcomes[] = {"allowed", "denied", "shadow_denied"};

// The histogram's `le` labels, as Prometheus clients print these bounds.
constexpr std::string_view kBucketLabels[] = {"5e-05",  "0.0001", "0.00025", "0.0005", "0.001",
                                              "0.0025", "0.005",  "0.01",    "0.025",  "0.05",
                                              "0.1",    "0.25",   "0.5",     "1"};
static_assert(std::size(kBucketLabels) == metrics::duration_buckets.size());

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, std::string_view name, std::string_view labels, std::uint64_t value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += std::to_string(value);
  out += '\n';
}

void sample(std::string& out, std::string_view name, double value) {
  char text[40];
  // The shortest text that reads back as `value` (0.03, not 0.029999999999999999).
  const auto [end, ec] = std::to_chars(text, text + sizeof text, value);
  out += name;
  out += ' ';
  out.append(text, ec == std::errc{} ? end : text);
  out += '\n';
}

// Returns the whole of a small /proc file, or "" when it cannot be read.
std::string slurp(const char* path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Returns the system's boot time (btime of /proc/stat), Unix seconds, or 0.
std::uint64_t boot_time() {
  std::istringstream in(slurp("/proc/stat"));
  std::string word;
  while (in >> word) {
    if (word == "btime") {
      std::uint64_t t = 0;
      in >> t;
      return t;
    }
  }
  return 0;
}

std::uint64_t load(const std::atomic<std::uint64_t>& a) noexcept {
  return a.load(std::memory_order_relaxed);
}

}  // namespace

std::string escape_label(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

bool append_label_text(std::string& out, std::string_view bytes, std::size_t max_bytes) {
  constexpr char kHex[] = "0123456789abcdef";
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  const auto continuation = [&](std::size_t i, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
    return i < bytes.size() && byte(i) >= lo && byte(i) <= hi;
  };
  for (std::size_t i = 0; i < bytes.size();) {
    const unsigned char c = byte(i);
    // The length of the UTF-8 sequence at i (RFC 3629: no overlong forms, no surrogates,
    // nothing above U+10FFFF), or 0 for a byte written as \xNN.
    std::size_t n = 0;
    if (c >= 0x20 && c < 0x7F) {
      n = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = continuation(i + 1) ? 2 : 0;
    } else if (c >= 0xE0 && c <= 0xEF) {
      const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80;
      const unsigned char hi = c == 0xED ? 0x9F : 0xBF;
      n = continuation(i + 1, lo, hi) && continuation(i + 2) ? 3 : 0;
    } else if (c >= 0xF0 && c <= 0xF4) {
      const unsigned char lo = c == 0xF0 ? 0x90 : 0x80;
      const unsigned char hi = c == 0xF4 ? 0x8F : 0xBF;
      n = continuation(i + 1, lo, hi) && continuation(i + 2) && continuation(i + 3) ? 4 : 0;
    }
    if (out.size() + (n == 0 ? 4 : n) > max_bytes) return false;
    if (n == 0) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
      ++i;
    } else {
      out.append(bytes.substr(i, n));
      i += n;
    }
  }
  return true;
}

std::string label_text(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_label_text(out, bytes, static_cast<std::size_t>(-1));
  return out;
}

std::string_view to_string(route r) noexcept {
  switch (r) {
    case route::acquire:
      return "/v1/acquire";
    case route::peek:
      return "/v1/peek";
    case route::reset:
      return "/v1/keys";
    case route::gate:
      return "/v1/gate";
    case route::metrics:
      return "/metrics";
    case route::healthz:
      return "/healthz";
    case route::readyz:
      return "/readyz";
    case route::other:
      return "other";
    case route::refund:
      return "/v1/refund";
  }
  return "other";
}

metrics::metrics(std::vector<std::string> policies)
    : policies_(std::move(policies)),
      counts_(std::make_unique<internal::striped_counters>(route_count * kPerRoute +
                                                           3 * (policies_.size() + 1))),
      rls_(std::make_unique<rls_metrics>()) {}

metrics::~metrics() = default;

std::size_t metrics::code_index(unsigned status) noexcept {
  for (std::size_t i = 0; i + 1 < codes_.size(); ++i) {
    if (codes_[i] == status) return i;
  }
  return codes_.size() - 1;
}

std::size_t metrics::slot(std::string_view name) const noexcept {
  for (std::size_t i = 0; i < policies_.size(); ++i) {
    if (policies_[i] == name) return i;
  }
  return inline_slot();
}

void metrics::count_decision(std::size_t slot, outcome o) noexcept {
  if (slot > policies_.size()) return;
  counts_->add(decision_counter(slot, o));
}

void metrics::count_request(route r, unsigned status, std::chrono::nanoseconds took) noexcept {
  counts_->add(code_counter(r, code_index(status)));
  const double seconds = std::chrono::duration<double>(took).count();
  std::size_t b = 0;
  while (b < duration_buckets.size() && seconds > duration_buckets[b]) ++b;
  counts_->add(bucket_counter(r, b));
  counts_->add(sum_counter(r), static_cast<std::uint64_t>(std::max<std::int64_t>(0, took.count())));
}

std::uint64_t metrics::decisions(std::size_t slot, outcome o) const noexcept {
  if (slot > policies_.size()) return 0;
  return counts_->sum(decision_counter(slot, o));
}

std::uint64_t metrics::requests(route r, unsigned status) const noexcept {
  return counts_->sum(code_counter(r, code_index(status)));
}

std::string metrics::render(const limiter_stats& stats) const {
  std::string out;
  out.reserve(4096);

  header(out, "sluice_decisions_total", "counter", "Decisions by policy and outcome.");
  for (std::size_t slot = 0; slot <= policies_.size(); ++slot) {
    const std::string policy = slot < policies_.size() ? escape_label(policies_[slot]) : "(inline)";
    for (std::size_t o = 0; o < std::size(kOutcomes); ++o) {
      sample(out, "sluice_decisions_total",
             "policy=\"" + policy + "\",outcome=\"" + std::string(kOutcomes[o]) + "\"",
             counts_->sum(decision_counter(slot, static_cast<outcome>(o))));
    }
  }

  header(out, "sluice_store_errors_total", "counter", "Store calls that failed.");
  sample(out, "sluice_store_errors_total", "", stats.store_errors);
  header(out, "sluice_fallbacks_total", "counter",
         "Decisions made by a failure mode while the store failed or the breaker was open.");
  sample(out, "sluice_fallbacks_total", "mode=\"allow\"", stats.fallbacks_allow);
  sample(out, "sluice_fallbacks_total", "mode=\"deny\"", stats.fallbacks_deny);
  sample(out, "sluice_fallbacks_total", "mode=\"local\"", stats.fallbacks_local);
  header(out, "sluice_breaker_state", "gauge",
         "The worst of the store's circuit breakers (one per failure domain): 0 closed, 1 open "
         "(any is open), 2 half_open (none open, some probing).");
  sample(out, "sluice_breaker_state", "", static_cast<std::uint64_t>(stats.breaker));
  header(out, "sluice_breakers", "gauge",
         "Circuit breakers: one per failure domain of the store (a cluster's masters).");
  sample(out, "sluice_breakers", "", stats.breakers);
  header(out, "sluice_breakers_open", "gauge",
         "Circuit breakers that are not closed (open or half_open).");
  sample(out, "sluice_breakers_open", "", stats.breakers_open);
  header(out, "sluice_breaker_opened_total", "counter",
         "Times a circuit breaker opened, summed over the failure domains.");
  sample(out, "sluice_breaker_opened_total", "", stats.breaker_opened);

  header(out, "sluice_http_requests_total", "counter", "HTTP responses by route and status.");
  for (std::size_t r = 0; r < route_count; ++r) {
    const std::string route_label =
        "route=\"" + std::string(to_string(static_cast<route>(r))) + "\",code=\"";
    for (std::size_t i = 0; i < codes_.size(); ++i) {
      const std::uint64_t n = counts_->sum(code_counter(static_cast<route>(r), i));
      if (n == 0) continue;
      const std::string code = codes_[i] == 0 ? "other" : std::to_string(codes_[i]);
      sample(out, "sluice_http_requests_total", route_label + code + "\"", n);
    }
  }

  header(out, "sluice_request_duration_seconds", "histogram",
         "Time from a request's header to its response, by route.");
  for (std::size_t r = 0; r < route_count; ++r) {
    const auto rt = static_cast<route>(r);
    std::uint64_t counts[duration_buckets.size() + 1];
    std::uint64_t total = 0;
    for (std::size_t b = 0; b <= duration_buckets.size(); ++b) {
      counts[b] = counts_->sum(bucket_counter(rt, b));
      total += counts[b];
    }
    if (total == 0) continue;
    const std::string route_label = "route=\"" + std::string(to_string(rt)) + "\"";
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < duration_buckets.size(); ++b) {
      cumulative += counts[b];
      sample(out, "sluice_request_duration_seconds_bucket",
             route_label + ",le=\"" + std::string(kBucketLabels[b]) + "\"", cumulative);
    }
    sample(out, "sluice_request_duration_seconds_bucket", route_label + ",le=\"+Inf\"", total);
    char sum[32];
    std::snprintf(sum, sizeof sum, "%.9f",
                  static_cast<double>(counts_->sum(sum_counter(rt))) / 1e9);
    out += "sluice_request_duration_seconds_sum{" + route_label + "} " + sum + "\n";
    sample(out, "sluice_request_duration_seconds_count", route_label, total);
  }

  header(out, "sluice_open_connections", "gauge", "Client connections open now.");
  out += "sluice_open_connections " + std::to_string(open_connections()) + "\n";
  header(out, "sluice_connections_refused_total", "counter",
         "Connections closed at once because max_connections were open.");
  sample(out, "sluice_connections_refused_total", "", load(refused_));
  return out;
}

std::optional<process_stats> read_process_stats() {
  // /proc/self/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so
  // the fields are counted from the last ')'. After it come field 3 (state) onwards; utime
  // is 14, stime 15, starttime 22, vsize 23, rss 24 (proc(5)).
  const std::string stat = slurp("/proc/self/stat");
  const std::size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  std::uint64_t utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
  for (int i = 3; i <= 24 && fields >> field; ++i) {
    std::uint64_t* into = i == 14   ? &utime
                          : i == 15 ? &stime
                          : i == 22 ? &start
                          : i == 23 ? &vsize
                          : i == 24 ? &rss
                                    : nullptr;
    if (into == nullptr) continue;
    const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), *into);
    if (ec != std::errc{} || end != field.data() + field.size()) return std::nullopt;
    if (i == 24) {
      const long ticks = ::sysconf(_SC_CLK_TCK);
      const long page = ::sysconf(_SC_PAGESIZE);
      if (ticks <= 0 || page <= 0) return std::nullopt;
      process_stats p;
      p.resident_memory_bytes = rss * static_cast<std::uint64_t>(page);
      p.virtual_memory_bytes = vsize;
      p.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(ticks);
      p.start_time_seconds = static_cast<double>(boot_time()) +
                             static_cast<double>(start) / static_cast<double>(ticks);
      std::error_code ec_dir;
      for (std::filesystem::directory_iterator it("/proc/self/fd", ec_dir), end_it;
           !ec_dir && it != end_it; it.increment(ec_dir)) {
        ++p.open_fds;
      }
      // The directory iterator held one descriptor of its own while it counted.
      if (p.open_fds > 0) --p.open_fds;
      rlimit limit{};
      if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
        p.max_fds = static_cast<std::uint64_t>(limit.rlim_cur);
      }
      return p;
    }
  }
  return std::nullopt;
}

void render_process_metrics(std::string& out) {
  if (const std::optional<process_stats> p = read_process_stats()) {
    header(out, "process_cpu_seconds_total", "counter",
           "Total user and system CPU time spent in seconds.");
    sample(out, "process_cpu_seconds_total", p->cpu_seconds);
    header(out, "process_open_fds", "gauge", "Number of open file descriptors.");
    sample(out, "process_open_fds", "", p->open_fds);
    if (p->max_fds != 0) {
      header(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
      sample(out, "process_max_fds", "", p->max_fds);
    }
    header(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    sample(out, "process_virtual_memory_bytes", "", p->virtual_memory_bytes);
    header(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    sample(out, "process_resident_memory_bytes", "", p->resident_memory_bytes);
    header(out, "process_start_time_seconds", "gauge",
           "Start time of the process since unix epoch in seconds.");
    sample(out, "process_start_time_seconds", p->start_time_seconds);
  }
  header(out, "sluice_build_info", "gauge",
         "Always 1; the labels say which build of sluice answers.");
#if defined(__clang__)
  const std::string compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  const std::string compiler = "gcc " __VERSION__;
#else
  const std::string compiler = "unknown";
#endif
  sample(out, "sluice_build_info",
         "version=\"" + escape_label(SLUICE_VERSION) + "\",build_type=\"" +
             escape_label(SLUICE_BUILD_TYPE) + "\",compiler=\"" + escape_label(compiler) + "\"",
         1);
}

void render_deny_cache_metrics(std::string& out, const limiter& lim,
                               const std::vector<std::string>& policies) {
  bool any = false;
  for (const std::string& name : policies) {
    const policy* p = lim.find_policy(name);
    if (p == nullptr || !p->deny_cache) continue;
    if (!any) {
      header(out, "sluice_deny_cache_hits_total", "counter",
             "Decisions the deny cache answered (denials the store gave earlier, replayed "
             "without calling it), by policy.");
      any = true;
    }
    sample(out, "sluice_deny_cache_hits_total", "policy=\"" + escape_label(name) + "\"",
           lim.deny_cache_hits(name));
  }
  header(out, "sluice_deny_cache_keys", "gauge", "Keys the deny cache holds now.");
  sample(out, "sluice_deny_cache_keys", "", lim.stats().deny_cache_keys);
}

void render_store_metrics(std::string& out, const store& s) {
  std::string last;  // the name of the previous sample: HELP and TYPE go once per name
  s.visit_metrics([&](const store_metric& m) {
    if (m.name != last) {
      header(out, m.name, m.type == store_metric::kind::gauge ? "gauge" : "counter", m.help);
      last = m.name;
    }
    std::string labels;
    if (!m.label.empty()) {
      labels.append(m.label).append("=\"").append(escape_label(m.label_value)).append("\"");
    }
    sample(out, m.name, labels, m.value);
  });
}

void render_rls_metrics(std::string& out, const rls_metrics& m) {
  const std::shared_ptr<const rls_counters> c = m.current();
  if (!c) return;
  header(out, "sluice_rls_requests_total", "counter",
         "Envoy rate limit service calls (ShouldRateLimit) by domain and code.");
  c->visit_domains([&](const rls_domain_counters& d, bool configured) {
    std::uint64_t n[rls_code_count];
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < rls_code_count; ++i) {
      n[i] = d.requests(static_cast<rls_code>(i));
      total += n[i];
    }
    if (!configured && total == 0) return;
    const std::string domain = "domain=\"" + escape_label(d.domain()) + "\",code=\"";
    for (std::size_t i = 0; i < rls_code_count; ++i) {
      sample(out, "sluice_rls_requests_total",
             domain + std::string(to_string(static_cast<rls_code>(i))) + "\"", n[i]);
    }
  });
  header(out, "sluice_rls_hits_total", "counter",
         "Hits (hits_addend) of the Envoy configuration's rate limits by domain, descriptor "
         "and outcome: within_limit, near_limit (taking the use above 80% of the limit), "
         "over_limit, shadow_mode (over the limit, answered OK).");
  c->visit_rules([&](const rls_rule_counters& rule, bool configured) {
    const std::string labels = "domain=\"" + escape_label(rule.domain()) + "\",descriptor=\"" +
                               escape_label(rule.descriptor()) + "\",";
    rule.visit([&](std::string_view entries, const rls_series& s) {
      // A detailed rule's values, and what no rule of the configuration has, appear once
      // they count; the configuration's rules are always there.
      if ((rule.detailed() || !configured) && s.empty()) return;
      std::string series = labels;
      if (rule.detailed()) series += "entries=\"" + escape_label(entries) + "\",";
      series += "outcome=\"";
      for (std::size_t o = 0; o < rls_outcome_count; ++o) {
        const auto outcome = static_cast<rls_outcome>(o);
        sample(out, "sluice_rls_hits_total", series + std::string(to_string(outcome)) + "\"",
               s.hits(outcome));
      }
    });
  });
}

}  // namespace sluice::server
