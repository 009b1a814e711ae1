// Tests of envoyproxy/ratelimit's configuration in sluice: reading its files (EnvoyConfig,
// EnvoyConfigErrors), matching descriptors (EnvoyConfigMatch), the README's examples
// rewritten under tests/server/envoy_config/readme (EnvoyConfigReadme), and the store keys
// (EnvoyStoreKey).
#include "server/envoy_config.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <new>
#include <string>
#include <system_error>
#include <vector>

#include "sluice/memory_store.h"
#include "support/test_util.h"

// Counts the allocations of this test binary, for EnvoyConfigMatch.MissesAllocateNothing.
// Not inlined: GCC would otherwise pair the `free` with `operator new` at each call site and
// warn of a mismatch.
namespace {
std::atomic<std::size_t> g_allocations{0};
}  // namespace

[[gnu::noinline]] void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace sluice::server {
namespace {

using namespace std::chrono_literals;
using test::must;

const std::filesystem::path kReadmeDir = SLUICE_ENVOY_CONFIG_DIR "/readme";

// Returns the configuration in `yaml`, failing the test when it does not parse.
envoy_config good(std::string_view yaml) {
  auto c = parse_envoy_config(yaml, "t.yaml");
  EXPECT_TRUE(c) << c.error().message();
  return c ? *c : envoy_config{};
}

// Returns the message of the error `yaml` gets, failing the test when it parses.
std::string message(std::string_view yaml) {
  auto c = parse_envoy_config(yaml, "t.yaml");
  EXPECT_FALSE(c) << "parsed:\n" << yaml;
  return c ? std::string() : c.error().message();
}

// Returns what the descriptor `entries` matches in `domain`.
envoy_match match(const envoy_config& c, std::string_view domain,
                  std::initializer_list<envoy_entry> entries) {
  return c.match(domain, std::span<const envoy_entry>(entries.begin(), entries.size()));
}

// Returns the requests_per_unit of what `entries` matches, or -1 when no rate limit applies
// (unknown domain, no match, unlimited).
std::int64_t limit_of(const envoy_config& c, std::string_view domain,
                      std::initializer_list<envoy_entry> entries) {
  const envoy_match m = match(c, domain, entries);
  if (m.status != envoy_match_status::limited) return -1;
  return m.rate_limit->requests_per_unit;
}

// Returns the README examples' configuration, read from its directory once.
const envoy_config& readme() {
  static const envoy_config c = [] {
    auto r = load_envoy_config(kReadmeDir);
    EXPECT_TRUE(r) << r.error().message();
    return r ? *r : envoy_config{};
  }();
  return c;
}

// Returns whether `store` admits one request counted as `m` says, at `now`.
bool admits(memory_store& store, const envoy_match& m, std::chrono::microseconds now) {
  EXPECT_EQ(m.status, envoy_match_status::limited);
  if (m.status != envoy_match_status::limited) return false;
  const envoy_rate_limit& rl = *m.rate_limit;
  if (rl.denies_all()) return false;
  request r;
  r.key = m.store_key;
  r.limit = *rl.limit;
  r.algorithm = rl.algorithm;
  r.now = now;
  return must(store.acquire(r)).allowed;
}

// A scratch directory, removed with everything in it at the end of the test.
class scratch_dir {
 public:
  scratch_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sluice-envoy-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::system_error(errno, std::generic_category());
    path_ = tmpl;
  }
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  void write(const std::string& name, std::string_view text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// ---- Reading ------------------------------------------------------------------------------

// Verifies that every field of a rate limit and its descriptor lands in envoy_rate_limit.
TEST(EnvoyConfig, ReadsEveryField) {
  const envoy_config c = good(R"(
domain: api
descriptors:
  - key: route
    value: checkout
    shadow_mode: true
    quota_mode: true
    detailed_metric: true
    rate_limit:
      name: checkout_limit
      replaces:
        - name: old_one
        - name: older_one
      unit: Minute
      requests_per_unit: 120
      algorithm: gcra
      on_failure: deny
)");
  ASSERT_EQ(c.rate_limits().size(), 1u);
  const envoy_rate_limit& rl = c.rate_limits()[0];
  EXPECT_EQ(rl.name, "checkout_limit");
  EXPECT_EQ(rl.replaces, (std::vector<std::string>{"old_one", "older_one"}));
  EXPECT_EQ(rl.unit, envoy_unit::minute);
  EXPECT_EQ(rl.requests_per_unit, 120u);
  EXPECT_EQ(rl.window, 1min);
  ASSERT_TRUE(rl.limit.has_value());
  EXPECT_EQ(*rl.limit, test::make(120, 1min));
  EXPECT_EQ(rl.algorithm, algorithm::gcra);
  EXPECT_EQ(rl.on_failure, failure_mode::deny);
  EXPECT_FALSE(rl.unlimited);
  EXPECT_TRUE(rl.shadow);
  EXPECT_TRUE(rl.quota);
  EXPECT_TRUE(rl.detailed_metric);
  EXPECT_FALSE(rl.denies_all());
  EXPECT_EQ(rl.stats_key, "api.route_checkout");
  EXPECT_EQ(rl.domain, "api");
  EXPECT_EQ(rl.source, "t.yaml:9");
  EXPECT_EQ(c.files().size(), 1u);
  EXPECT_EQ(c.domains(), (std::vector<std::string_view>{"api"}));
}

// Verifies the defaults: sliding_log, the server's failure mode, nothing shadowed.
TEST(EnvoyConfig, DefaultsToSlidingLog) {
  const envoy_config c = good(R"(
domain: api
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 5}
)");
  ASSERT_EQ(c.rate_limits().size(), 1u);
  const envoy_rate_limit& rl = c.rate_limits()[0];
  EXPECT_EQ(rl.algorithm, algorithm::sliding_log);
  EXPECT_FALSE(rl.on_failure.has_value());
  EXPECT_FALSE(rl.shadow || rl.quota || rl.detailed_metric || rl.unlimited);
  EXPECT_TRUE(rl.name.empty());
  EXPECT_TRUE(rl.replaces.empty());
}

// Verifies that each of envoyproxy's seven units, in any case, maps to its window (a week is
// 7 days, a month 30, a year 365, as envoyproxy counts them) and its RLS name.
TEST(EnvoyConfig, UnitsMapToWindows) {
  struct row {
    const char* written;
    envoy_unit unit;
    std::chrono::microseconds window;
    const char* name;
  };
  const row rows[] = {
      {"second", envoy_unit::second, 1s, "SECOND"},
      {"MINUTE", envoy_unit::minute, 1min, "MINUTE"},
      {"Hour", envoy_unit::hour, 1h, "HOUR"},
      {"day", envoy_unit::day, 24h, "DAY"},
      {"week", envoy_unit::week, 7 * 24h, "WEEK"},
      {"month", envoy_unit::month, 30 * 24h, "MONTH"},
      {"year", envoy_unit::year, 365 * 24h, "YEAR"},
  };
  for (const row& r : rows) {
    SCOPED_TRACE(r.written);
    const envoy_config c = good("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: " +
                                std::string(r.written) + ", requests_per_unit: 1}\n");
    ASSERT_EQ(c.rate_limits().size(), 1u);
    EXPECT_EQ(c.rate_limits()[0].unit, r.unit);
    EXPECT_EQ(c.rate_limits()[0].window, r.window);
    EXPECT_EQ(window_of(r.unit), r.window);
    EXPECT_EQ(to_string(r.unit), r.name);
  }
  EXPECT_EQ(window_of(envoy_unit::unknown), 0us);
  EXPECT_EQ(to_string(envoy_unit::unknown), "UNKNOWN");
}

// Verifies sluice's `window`: any duration, reported as the unit it equals, else unknown.
TEST(EnvoyConfig, WindowIsAnyDuration) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    rate_limit: {window: 5m, requests_per_unit: 100}
  - key: b
    rate_limit: {window: 1h, requests_per_unit: 100, algorithm: sliding_counter}
)");
  ASSERT_EQ(c.rate_limits().size(), 2u);
  EXPECT_EQ(c.rate_limits()[0].window, 5min);
  EXPECT_EQ(c.rate_limits()[0].unit, envoy_unit::unknown);
  EXPECT_EQ(*c.rate_limits()[0].limit, test::make(100, 5min));
  EXPECT_EQ(c.rate_limits()[1].unit, envoy_unit::hour);
  EXPECT_EQ(c.rate_limits()[1].algorithm, algorithm::sliding_counter);
}

// Verifies envoyproxy's `requests_per_unit: 0`: it loads, and denies every request without a
// limit to count against.
TEST(EnvoyConfig, ZeroRequestsDeniesAll) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 0}
)");
  ASSERT_EQ(c.rate_limits().size(), 1u);
  EXPECT_TRUE(c.rate_limits()[0].denies_all());
  EXPECT_FALSE(c.rate_limits()[0].limit.has_value());
}

// Verifies an unlimited rate limit: no unit, no limit, requests_per_unit ignored as
// envoyproxy ignores it.
TEST(EnvoyConfig, UnlimitedNeedsNoUnit) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    rate_limit: {unlimited: true, requests_per_unit: 7}
)");
  ASSERT_EQ(c.rate_limits().size(), 1u);
  EXPECT_TRUE(c.rate_limits()[0].unlimited);
  EXPECT_FALSE(c.rate_limits()[0].denies_all());
  EXPECT_FALSE(c.rate_limits()[0].limit.has_value());
}

// Verifies that scalars are read as written, as envoyproxy's YAML reader reads them into
// strings (`value: 123`, `value: true`), and that an empty value means no value.
TEST(EnvoyConfig, ReadsScalarsAsWritten) {
  const envoy_config c = good(R"(
domain: 42
descriptors:
  - key: code
    value: 007
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: flag
    value: true
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: anything
    value: ""
    rate_limit: {unit: second, requests_per_unit: 3}
)");
  EXPECT_TRUE(c.has_domain("42"));
  EXPECT_EQ(limit_of(c, "42", {{"code", "007"}}), 1);
  EXPECT_EQ(limit_of(c, "42", {{"code", "7"}}), -1);
  EXPECT_EQ(limit_of(c, "42", {{"flag", "true"}}), 2);
  EXPECT_EQ(limit_of(c, "42", {{"anything", "x"}}), 3);
}

// Verifies that envoyproxy's fields sluice does not act on (value_to_metric, metadata) load.
TEST(EnvoyConfig, AcceptsMetricsOnlyFields) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    value_to_metric: true
    metadata:
      team: payments
      tags: [x, y]
    rate_limit: {unit: second, requests_per_unit: 1}
)");
  EXPECT_EQ(limit_of(c, "d", {{"a", "1"}}), 1);
}

// Verifies that a domain with no descriptors loads and limits nothing.
TEST(EnvoyConfig, DomainWithoutDescriptors) {
  const envoy_config c = good("domain: quiet\n");
  EXPECT_TRUE(c.has_domain("quiet"));
  EXPECT_EQ(match(c, "quiet", {{"a", "b"}}).status, envoy_match_status::no_match);
  EXPECT_TRUE(c.rate_limits().empty());
}

// Verifies that an empty configuration knows no domain.
TEST(EnvoyConfig, EmptyKnowsNoDomain) {
  const envoy_config c;
  EXPECT_FALSE(c.has_domain(""));
  EXPECT_EQ(match(c, "d", {{"a", "b"}}).status, envoy_match_status::unknown_domain);
}

// Verifies which files of a directory are read: *.yaml and *.yml directly in it, sorted,
// through symbolic links; not other names, dot files or subdirectories.
TEST(EnvoyConfig, LoadsTheDirectorysYamlFiles) {
  scratch_dir dir;
  dir.write("b.yml", "domain: bee\n");
  dir.write("a.yaml", "domain: ay\n");
  dir.write("notes.txt", "not yaml at all: [\n");
  dir.write(".hidden.yaml", "domain: hidden\n");
  std::filesystem::create_directory(dir.path() / "sub");
  dir.write("sub/c.yaml", "domain: sub\n");
  std::filesystem::create_directory(dir.path() / "..data");
  dir.write("..data/d.yaml", "domain: dee\n");
  std::filesystem::create_symlink(dir.path() / "..data" / "d.yaml", dir.path() / "d.yaml");
  const auto c = load_envoy_config(dir.path());
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->domains(), (std::vector<std::string_view>{"ay", "bee", "dee"}));
  ASSERT_EQ(c->files().size(), 3u);
  EXPECT_EQ(c->files()[0], (dir.path() / "a.yaml").string());
  EXPECT_EQ(c->files()[1], (dir.path() / "b.yml").string());
  EXPECT_EQ(c->files()[2], (dir.path() / "d.yaml").string());
}

// ---- Errors -------------------------------------------------------------------------------

// Verifies the message of each problem a file can have: file, line, field path, problem.
TEST(EnvoyConfigErrors, NameFileLineFieldAndProblem) {
  struct row {
    const char* yaml;
    const char* message;
  };
  const row rows[] = {
      {"", R"(t.yaml:1: the file is empty; it needs a "domain" and its "descriptors")"},
      {"- a\n", R"(t.yaml:1: expected a map with "domain" and "descriptors", got a list)"},
      {"descriptors: []\n", "t.yaml:1: domain: missing"},
      {"domain: \"\"\n", "t.yaml:1: domain: must not be empty"},
      {"domain: [a]\n", "t.yaml:1: domain: expected a string, got a list"},
      {"domain: d\ndescriptor: []\n",
       "t.yaml:2: descriptor: unknown key; the top level has domain, descriptors"},
      {"domain: d\ndomain: e\n", "t.yaml:2: domain: given twice (first on line 1)"},
      {"domain: d\n---\ndomain: e\n", "t.yaml:3: more than one YAML document (a second ---)"},
      {"domain: d\ndescriptors: {key: a}\n",
       "t.yaml:2: descriptors: expected a list of descriptors (- key: ...), got a map"},
      {"domain: d\ndescriptors:\n  - a\n",
       "t.yaml:3: descriptors[0]: expected a descriptor (a map with key, value, ...), got a value"},
      {"domain: d\ndescriptors:\n  - value: v\n", "t.yaml:3: descriptors[0].key: missing"},
      {"domain: d\ndescriptors:\n  - key: \"\"\n",
       "t.yaml:3: descriptors[0].key: must not be empty"},
      {"domain: d\ndescriptors:\n  - key: a\n    ratelimit: {}\n",
       "t.yaml:4: descriptors[0].ratelimit: unknown key; a descriptor has key, value, rate_limit, "
       "descriptors, shadow_mode, quota_mode, detailed_metric, value_to_metric, share_threshold, "
       "metadata"},
      {"domain: d\ndescriptors:\n  - key: a\n    value: v\n  - key: a\n    value: v\n",
       "t.yaml:5: descriptors[1].key: the descriptor \"a\" = \"v\" is given twice at this level "
       "(first on line 3)"},
      {"domain: d\ndescriptors:\n  - key: a\n  - key: b\n    descriptors:\n      - key: c\n"
       "      - key: c\n",
       "t.yaml:7: descriptors[1].descriptors[1].key: the descriptor \"c\" is given twice at this "
       "level (first on line 6)"},
      {"domain: d\ndescriptors:\n  - key: a\n    shadow_mode: maybe\n",
       "t.yaml:4: descriptors[0].shadow_mode: expected true or false, got \"maybe\""},
      {"domain: d\ndescriptors:\n  - key: a\n    shadow_mode: \"true\"\n",
       "t.yaml:4: descriptors[0].shadow_mode: expected true or false, got \"true\" (quoted)"},
      {"domain: d\ndescriptors:\n  - key: a\n    value: v\n    share_threshold: true\n",
       "t.yaml:5: descriptors[0].share_threshold: needs a wildcard value (one with *), and the "
       "value is \"v\""},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n",
       "t.yaml:4: descriptors[0].rate_limit: empty; give unit and requests_per_unit, or "
       "unlimited: true (or remove rate_limit)"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: 10/second\n",
       "t.yaml:4: descriptors[0].rate_limit: expected a map such as {unit: second, "
       "requests_per_unit: 10}, got a value"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: seconds, requests_per_unit: "
       "1}\n",
       "t.yaml:4: descriptors[0].rate_limit.unit: \"seconds\" is not a unit; use second, minute, "
       "hour, day, week, month or year"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: unknown, requests_per_unit: "
       "1}\n",
       "t.yaml:4: descriptors[0].rate_limit.unit: \"unknown\" is not a unit; use second, minute, "
       "hour, day, week, month or year"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {requests_per_unit: 1}\n",
       "t.yaml:4: descriptors[0].rate_limit: missing \"unit\" (second, minute, hour, day, week, "
       "month or year) or sluice's \"window\""},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n",
       "t.yaml:4: descriptors[0].rate_limit: missing \"requests_per_unit\" (0 denies every "
       "request)"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n"
       "      window: 5s\n      requests_per_unit: 1\n",
       "t.yaml:6: descriptors[0].rate_limit.window: give unit or window, not both"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: "
       "-1}\n",
       "t.yaml:4: descriptors[0].rate_limit.requests_per_unit: expected a whole number, got "
       "\"-1\""},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: "
       "\"10\"}\n",
       "t.yaml:4: descriptors[0].rate_limit.requests_per_unit: expected a whole number, got "
       "\"10\" (quoted)"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: day, requests_per_unit: "
       "4294967296}\n",
       "t.yaml:4: descriptors[0].rate_limit.requests_per_unit: \"4294967296\" is out of range: "
       "use 0 to 4294967295"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: "
       "2000000}\n",
       "t.yaml:4: descriptors[0].rate_limit.requests_per_unit: 2000000 per 1s is more than one "
       "request per microsecond, the finest sluice counts"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n",
       "t.yaml:4: descriptors[0].rate_limit.unit: must not be given with unlimited: true"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, algorithm: "
       "gcra}\n",
       "t.yaml:4: descriptors[0].rate_limit.algorithm: must not be given with unlimited: true"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: "
       "1, shadow_mode: true}\n",
       "t.yaml:4: descriptors[0].rate_limit.shadow_mode: unknown key (it belongs in a "
       "descriptor); a rate_limit has unit, requests_per_unit, unlimited, name, replaces, "
       "algorithm, window, on_failure"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: "
       "1, algorithm: leaky}\n",
       "t.yaml:4: descriptors[0].rate_limit.algorithm: algorithm \"leaky\": use "
       "sliding_log, sliding_counter or gcra"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {window: 5 fortnights, "
       "requests_per_unit: 1}\n",
       "t.yaml:4: descriptors[0].rate_limit.window: duration \"5 fortnights\" has an unknown "
       "unit \"fortnights\" (use us, ms, s, m, h, d or w)"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {window: 0s, requests_per_unit: "
       "1}\n",
       "t.yaml:4: descriptors[0].rate_limit.window: window \"0s\" must be at least 1us"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: "
       "1, on_failure: retry}\n",
       "t.yaml:4: descriptors[0].rate_limit.on_failure: failure mode \"retry\": use allow, "
       "deny or local"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n"
       "      requests_per_unit: 1\n      replaces:\n        - name:\n",
       "t.yaml:8: descriptors[0].rate_limit.replaces[0].name: missing; name the rate limit "
       "replaced"},
      {"domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: mine\n      unit: "
       "second\n      requests_per_unit: 1\n      replaces:\n        - name: other\n"
       "        - name: mine\n",
       "t.yaml:10: descriptors[0].rate_limit.replaces[1].name: a rate limit cannot replace "
       "itself (\"mine\")"},
      {"domain: d\ndescriptors: [\n",
       "t.yaml:3: malformed YAML: end of sequence flow not found (column 1)"},
  };
  for (const row& r : rows) {
    SCOPED_TRACE(r.yaml);
    EXPECT_EQ(message(r.yaml), r.message);
  }
}

// Verifies the codes: limit problems are sluice's `invalid_limit`, structure is
// `invalid_argument`.
TEST(EnvoyConfigErrors, CarryCodes) {
  auto c = parse_envoy_config(
      "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n", "t.yaml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, make_error_code(errc::invalid_limit));
  c = parse_envoy_config("domain: d\nbogus: 1\n", "t.yaml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, std::make_error_code(std::errc::invalid_argument));
}

// Verifies that two files with one domain fail, naming both (envoyproxy refuses them too,
// unless told to merge, which sluice does not offer).
TEST(EnvoyConfigErrors, DuplicateDomainAcrossFiles) {
  scratch_dir dir;
  dir.write("a.yaml", "# first\ndomain: shop\n");
  dir.write("b.yaml", "domain: other\n");
  dir.write("c.yaml", "\n\ndomain: shop\n");
  const auto c = load_envoy_config(dir.path());
  ASSERT_FALSE(c);
  const std::string a = (dir.path() / "a.yaml").string();
  const std::string b = (dir.path() / "c.yaml").string();
  EXPECT_EQ(c.error().message(), b + ":3: domain: \"shop\" is already the domain of " + a +
                                     ":2; give each domain one file");
}

// Verifies that an error in the second file names that file.
TEST(EnvoyConfigErrors, NameTheFileAtFault) {
  const envoy_config_file files[] = {{"one.yaml", "domain: a\n"},
                                     {"two.yaml", "domain: b\ndescriptors:\n  - value: x\n"}};
  const auto c = parse_envoy_config(files);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(), "two.yaml:3: descriptors[0].key: missing");
}

// Verifies that a directory with no YAML file is an error, not an empty configuration.
TEST(EnvoyConfigErrors, DirectoryWithoutYamlFiles) {
  scratch_dir dir;
  dir.write("README.md", "nothing here\n");
  const auto c = load_envoy_config(dir.path());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            dir.path().string() + ": no *.yaml or *.yml file in the Envoy config directory");
}

// Verifies the errors for a directory that does not exist and for a file given as one.
TEST(EnvoyConfigErrors, MissingOrNotADirectory) {
  scratch_dir dir;
  const auto missing = load_envoy_config(dir.path() / "nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, std::make_error_code(std::errc::no_such_file_or_directory));
  EXPECT_EQ(missing.error().message(), (dir.path() / "nope").string() +
                                           ": cannot read the Envoy config directory: No such "
                                           "file or directory");
  dir.write("x.yaml", "domain: d\n");
  const auto file = load_envoy_config(dir.path() / "x.yaml");
  ASSERT_FALSE(file);
  EXPECT_EQ(file.error().message(),
            (dir.path() / "x.yaml").string() +
                ": cannot read the Envoy config directory: not a directory");
}

// ---- Matching -----------------------------------------------------------------------------

constexpr std::string_view kPrecedence = R"(
domain: d
descriptors:
  - key: path
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /a*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: /abc
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    value: /ab*
    rate_limit: {unit: second, requests_per_unit: 4}
)";

// Verifies the order at one level: the exact value, then the first wildcard in file order
// (not the longest), then the key alone.
TEST(EnvoyConfigMatch, ExactThenWildcardThenKeyOnly) {
  const envoy_config c = good(kPrecedence);
  EXPECT_EQ(limit_of(c, "d", {{"path", "/abc"}}), 3);
  EXPECT_EQ(limit_of(c, "d", {{"path", "/abd"}}), 2);  // /a* is first, though /ab* is longer
  EXPECT_EQ(limit_of(c, "d", {{"path", "/a"}}), 2);    // * matches nothing too
  EXPECT_EQ(limit_of(c, "d", {{"path", "/b"}}), 1);
  EXPECT_EQ(limit_of(c, "d", {{"path", ""}}), 1);
  EXPECT_EQ(limit_of(c, "d", {{"path", "/ab*"}}), 4);   // a literal * is an exact value
  EXPECT_EQ(limit_of(c, "d", {{"Path", "/abc"}}), -1);  // keys are case-sensitive
  EXPECT_EQ(limit_of(c, "d", {{"path", "/ABC"}}), 1);   // so are values
}

// Verifies that a rate limit applies only to a descriptor with exactly its depth, and that a
// limit on the way down does not apply to a longer descriptor.
TEST(EnvoyConfigMatch, DepthMustBeExact) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 1}
    descriptors:
      - key: b
        descriptors:
          - key: c
            rate_limit: {unit: second, requests_per_unit: 3}
)");
  EXPECT_EQ(limit_of(c, "d", {{"a", "1"}}), 1);
  EXPECT_EQ(limit_of(c, "d", {{"a", "1"}, {"b", "2"}}), -1);  // b has no rate limit
  EXPECT_EQ(limit_of(c, "d", {{"a", "1"}, {"b", "2"}, {"c", "3"}}), 3);
  EXPECT_EQ(limit_of(c, "d", {{"a", "1"}, {"b", "2"}, {"c", "3"}, {"e", "4"}}), -1);
  EXPECT_EQ(limit_of(c, "d", {{"b", "2"}, {"c", "3"}}), -1);  // no level is skipped
  EXPECT_EQ(match(c, "d", {}).status, envoy_match_status::no_match);
}

// Verifies that the most specific entry is taken at each level with no second try: when the
// exact value leads nowhere, the key-only branch is not tried instead (as envoyproxy).
TEST(EnvoyConfigMatch, DoesNotBacktrack) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: user
    value: root
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: user
    descriptors:
      - key: action
        rate_limit: {unit: second, requests_per_unit: 2}
)");
  EXPECT_EQ(limit_of(c, "d", {{"user", "bob"}, {"action", "x"}}), 2);
  EXPECT_EQ(limit_of(c, "d", {{"user", "root"}, {"action", "x"}}), -1);
  EXPECT_EQ(limit_of(c, "d", {{"user", "root"}}), 1);
}

// Verifies that a descriptor with no rate limit and no children matches and limits nothing
// (envoyproxy's README calls it whitelisted), shadowing the key-only entry.
TEST(EnvoyConfigMatch, EntryWithoutRateLimitLimitsNothing) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: ip
    value: 10.0.0.1
  - key: ip
    rate_limit: {unit: second, requests_per_unit: 5}
)");
  EXPECT_EQ(match(c, "d", {{"ip", "10.0.0.1"}}).status, envoy_match_status::no_match);
  EXPECT_EQ(limit_of(c, "d", {{"ip", "10.0.0.2"}}), 5);
}

// Verifies the statuses of a match and that a miss carries no rate limit or key.
TEST(EnvoyConfigMatch, SaysWhyNothingApplies) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: free
    rate_limit: {unlimited: true}
  - key: paid
    rate_limit: {unit: hour, requests_per_unit: 9}
)");
  const envoy_match unknown = match(c, "e", {{"paid", "x"}});
  EXPECT_EQ(unknown.status, envoy_match_status::unknown_domain);
  EXPECT_EQ(unknown.rate_limit, nullptr);
  const envoy_match miss = match(c, "d", {{"other", "x"}});
  EXPECT_EQ(miss.status, envoy_match_status::no_match);
  EXPECT_EQ(miss.rate_limit, nullptr);
  EXPECT_TRUE(miss.store_key.empty());
  const envoy_match free = match(c, "d", {{"free", "x"}});
  EXPECT_EQ(free.status, envoy_match_status::unlimited);
  ASSERT_NE(free.rate_limit, nullptr);
  EXPECT_TRUE(free.rate_limit->unlimited);
  EXPECT_TRUE(free.store_key.empty());
  const envoy_match paid = match(c, "d", {{"paid", "x"}});
  EXPECT_EQ(paid.status, envoy_match_status::limited);
  EXPECT_EQ(paid.store_key, "envoy/1:d|4:paid=1:x");
  EXPECT_EQ(to_string(envoy_match_status::unknown_domain), "unknown_domain");
  EXPECT_EQ(to_string(envoy_match_status::replaced), "replaced");
}

// Verifies wildcards with `*` in the middle, several `*`, a bare `*`, and the overlap case a
// prefix and a suffix must not share bytes in.
TEST(EnvoyConfigMatch, WildcardsAnywhere) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: m
    value: ab*ba
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: n
    value: a*b*c*d
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: any
    value: "*"
    rate_limit: {unit: second, requests_per_unit: 3}
)");
  EXPECT_EQ(limit_of(c, "d", {{"m", "abba"}}), 1);
  EXPECT_EQ(limit_of(c, "d", {{"m", "ab-ba"}}), 1);
  EXPECT_EQ(limit_of(c, "d", {{"m", "aba"}}), -1);  // "ab" and "ba" would overlap
  EXPECT_EQ(limit_of(c, "d", {{"n", "abcd"}}), 2);
  EXPECT_EQ(limit_of(c, "d", {{"n", "a1b2c3d"}}), 2);
  EXPECT_EQ(limit_of(c, "d", {{"n", "a1c2b3d"}}), -1);  // in order
  EXPECT_EQ(limit_of(c, "d", {{"any", ""}}), 3);
  EXPECT_EQ(limit_of(c, "d", {{"any", "whatever"}}), 3);
}

// Verifies that hostile descriptors are answered, not crashed on: 1,000 entries, empty keys
// and values, a 1 MiB value, NUL bytes.
TEST(EnvoyConfigMatch, SurvivesHostileDescriptors) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 1}
    descriptors:
      - key: b
        rate_limit: {unit: second, requests_per_unit: 2}
)");
  std::vector<envoy_entry> many(1000, envoy_entry{"a", "x"});
  EXPECT_EQ(c.match("d", many).status, envoy_match_status::no_match);
  many[1].key = "b";
  EXPECT_EQ(c.match("d", std::span(many).first(2)).status, envoy_match_status::limited);
  EXPECT_EQ(limit_of(c, "d", {{"", ""}}), -1);
  EXPECT_EQ(limit_of(c, "d", {{"a", ""}}), 1);
  const std::string huge(1 << 20, 'v');
  const envoy_match big = match(c, "d", {{"a", huge}, {"b", huge}});
  EXPECT_EQ(big.status, envoy_match_status::limited);
  EXPECT_LE(big.store_key.size(), max_envoy_literal_key);
  const std::string nul("\0x\0", 3);
  const envoy_match binary = match(c, "d", {{"a", nul}});
  EXPECT_EQ(binary.status, envoy_match_status::limited);
  EXPECT_EQ(binary.store_key, std::string("envoy/1:d|1:a=3:\0x\0", 19));
  EXPECT_EQ(limit_of(c, std::string("d\0", 2), {{"a", "x"}}), -1);
}

// Verifies that what the walk costs is allocation-free: a miss, an unknown domain and an
// unlimited match allocate nothing; a limited match allocates its key once.
TEST(EnvoyConfigMatch, MissesAllocateNothing) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: a
    value: x*
    descriptors:
      - key: b
        rate_limit: {unit: second, requests_per_unit: 1}
  - key: free
    rate_limit: {unlimited: true}
)");
  const std::string long_value(200, 'q');
  const envoy_entry miss[] = {{"a", "y"}, {"b", long_value}};
  const envoy_entry deep[] = {{"a", "x1"}, {"b", long_value}, {"c", "z"}};
  const envoy_entry free[] = {{"free", long_value}};
  const envoy_entry hit[] = {{"a", "x1"}, {"b", long_value}};
  const std::size_t before = g_allocations.load();
  const envoy_match m1 = c.match("d", miss);
  const envoy_match m2 = c.match("nope", hit);
  const envoy_match m3 = c.match("d", deep);
  const envoy_match m4 = c.match("d", free);
  EXPECT_EQ(g_allocations.load() - before, 0u);
  EXPECT_EQ(m1.status, envoy_match_status::no_match);
  EXPECT_EQ(m2.status, envoy_match_status::unknown_domain);
  EXPECT_EQ(m3.status, envoy_match_status::no_match);
  EXPECT_EQ(m4.status, envoy_match_status::unlimited);
  const std::size_t before_hit = g_allocations.load();
  const envoy_match m5 = c.match("d", hit);
  EXPECT_EQ(g_allocations.load() - before_hit, 1u);
  EXPECT_EQ(m5.status, envoy_match_status::limited);
}

// Verifies apply_replaces: a named limit another match replaces is marked, also when the
// replacing one is unlimited; limits not named, or named but not replaced, stay.
TEST(EnvoyConfigMatch, ReplacesDropsNamedLimits) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: base
    rate_limit: {name: base, unit: second, requests_per_unit: 1}
  - key: other
    rate_limit: {name: other, unit: second, requests_per_unit: 2}
  - key: vip
    rate_limit:
      unlimited: true
      replaces: [{name: base}]
)");
  std::vector<envoy_match> ms = {match(c, "d", {{"base", "u"}}), match(c, "d", {{"other", "u"}}),
                                 match(c, "d", {{"vip", "u"}})};
  apply_replaces(ms);
  EXPECT_EQ(ms[0].status, envoy_match_status::replaced);
  EXPECT_FALSE(ms[0].store_key.empty());
  EXPECT_EQ(ms[1].status, envoy_match_status::limited);
  EXPECT_EQ(ms[2].status, envoy_match_status::unlimited);
  std::vector<envoy_match> alone = {match(c, "d", {{"base", "u"}})};
  apply_replaces(alone);
  EXPECT_EQ(alone[0].status, envoy_match_status::limited);
}

// ---- The README's examples ----------------------------------------------------------------

// Verifies that the README examples, one file per domain, load from one directory.
TEST(EnvoyConfigReadme, LoadsAsOneDirectory) {
  const auto c = load_envoy_config(kReadmeDir);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->files().size(), 14u);
  EXPECT_EQ(c->domains().size(), 14u);
}

// Verifies example 1: each value of the key has its own limit; other values have none.
TEST(EnvoyConfigReadme, Example1TwoValuesOfOneKey) {
  const envoy_config& c = readme();
  EXPECT_EQ(limit_of(c, "db_queries", {{"table", "accounts"}}), 250);
  EXPECT_EQ(limit_of(c, "db_queries", {{"table", "fallback"}}), 400);
  EXPECT_EQ(limit_of(c, "db_queries", {{"table", "orders"}}), -1);
  EXPECT_EQ(c.rate_limits()[0].unit, envoy_unit::second);
}

// Verifies example 2: the nested key without a value gives each phone its own 3 a day under
// promo, the top-level one 50 a day, and the two are counted apart.
TEST(EnvoyConfigReadme, Example2NestedKeyCountsPerValue) {
  const envoy_config& c = readme();
  const envoy_match promo1 = match(c, "sms", {{"kind", "promo"}, {"phone", "5550001"}});
  const envoy_match promo2 = match(c, "sms", {{"kind", "promo"}, {"phone", "5550002"}});
  const envoy_match any1 = match(c, "sms", {{"phone", "5550001"}});
  EXPECT_EQ(promo1.rate_limit->requests_per_unit, 3u);
  EXPECT_EQ(promo1.rate_limit->window, 24h);
  EXPECT_EQ(any1.rate_limit->requests_per_unit, 50u);
  EXPECT_EQ(limit_of(c, "sms", {{"kind", "news"}, {"phone", "5550001"}}), -1);
  EXPECT_EQ(limit_of(c, "sms", {{"kind", "promo"}}), -1);  // a placeholder, no limit

  memory_store store;
  const auto t = 1'700'000'000s;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(admits(store, promo1, t + i * 1s));
  EXPECT_FALSE(admits(store, promo1, t + 10s));
  EXPECT_TRUE(admits(store, promo2, t + 10s));  // another phone: another counter
  EXPECT_TRUE(admits(store, any1, t + 10s));    // the 50 a day is counted apart
  EXPECT_TRUE(admits(store, promo1, t + 24h + 5s));
}

// Verifies example 3: the address's own entry beats the key-only one, and its 0 blocks it.
TEST(EnvoyConfigReadme, Example3MostSpecificWins) {
  const envoy_config& c = readme();
  EXPECT_EQ(limit_of(c, "edge_ip", {{"client_ip", "198.51.100.7"}}), 20);
  const envoy_match blocked = match(c, "edge_ip", {{"client_ip", "203.0.113.9"}});
  ASSERT_EQ(blocked.status, envoy_match_status::limited);
  EXPECT_TRUE(blocked.rate_limit->denies_all());
  memory_store store;
  EXPECT_FALSE(admits(store, blocked, 1'700'000'000s));
}

// Verifies example 4: a two-entry descriptor misses a limit at level 1 and hits one at 2.
TEST(EnvoyConfigReadme, Example4LevelsMustAgree) {
  const envoy_config& c = readme();
  EXPECT_EQ(limit_of(c, "depth_flat", {{"tier", "gold"}, {"region", "eu"}}), -1);
  EXPECT_EQ(limit_of(c, "depth_flat", {{"tier", "gold"}}), 300);
  EXPECT_EQ(limit_of(c, "depth_nested", {{"tier", "gold"}, {"region", "eu"}}), 300);
  EXPECT_EQ(limit_of(c, "depth_nested", {{"tier", "gold"}}), -1);
}

// Verifies example 5: the unlimited key matches as unlimited, the other is limited.
TEST(EnvoyConfigReadme, Example5Unlimited) {
  const envoy_config& c = readme();
  EXPECT_EQ(match(c, "backoffice", {{"sso", "anyone"}}).status, envoy_match_status::unlimited);
  EXPECT_EQ(limit_of(c, "backoffice", {{"billing", "anyone"}}), 100);
  EXPECT_EQ(match(c, "backoffice", {{"hr", "anyone"}}).status, envoy_match_status::no_match);
}

// Verifies example 6: alice's limit is in shadow mode, bob's is enforced.
TEST(EnvoyConfigReadme, Example6ShadowMode) {
  const envoy_config& c = readme();
  const envoy_match alice = match(c, "shadowing", {{"app", "auth"}, {"account", "alice"}});
  const envoy_match bob = match(c, "shadowing", {{"app", "auth"}, {"account", "bob"}});
  ASSERT_EQ(alice.status, envoy_match_status::limited);
  ASSERT_EQ(bob.status, envoy_match_status::limited);
  EXPECT_TRUE(alice.rate_limit->shadow);
  EXPECT_EQ(alice.rate_limit->requests_per_unit, 10u);
  EXPECT_FALSE(bob.rate_limit->shadow);
  EXPECT_EQ(bob.rate_limit->requests_per_unit, 20u);
}

// Verifies example 7: each descriptor alone gets its own limit; sent together, the pro
// plan's 10 replaces the basic plan's named 5.
TEST(EnvoyConfigReadme, Example7Replaces) {
  const envoy_config& c = readme();
  const envoy_entry basic[] = {{"plan", "basic"}, {"account", "carol"}};
  const envoy_entry pro[] = {{"plan", "pro"}, {"account", "carol"}};
  std::vector<envoy_match> one = {c.match("overrides", basic)};
  apply_replaces(one);
  EXPECT_EQ(one[0].status, envoy_match_status::limited);
  EXPECT_EQ(one[0].rate_limit->requests_per_unit, 5u);
  std::vector<envoy_match> both = {c.match("overrides", basic), c.match("overrides", pro)};
  apply_replaces(both);
  EXPECT_EQ(both[0].status, envoy_match_status::replaced);
  EXPECT_EQ(both[1].status, envoy_match_status::limited);
  EXPECT_EQ(both[1].rate_limit->requests_per_unit, 10u);
}

// Verifies example 8: detailed_metric leaves matching as it is (any client 10, vip 20) and
// is carried for the metrics.
TEST(EnvoyConfigReadme, Example8DetailedMetric) {
  const envoy_config& c = readme();
  const envoy_match other = match(c, "detailed", {{"client", "someone"}});
  EXPECT_EQ(other.rate_limit->requests_per_unit, 10u);
  EXPECT_TRUE(other.rate_limit->detailed_metric);
  EXPECT_EQ(other.rate_limit->stats_key, "detailed.client");
  const envoy_match vip = match(c, "detailed", {{"client", "vip"}});
  EXPECT_EQ(vip.rate_limit->requests_per_unit, 20u);
  EXPECT_EQ(vip.rate_limit->stats_key, "detailed.client_vip");
  EXPECT_NE(other.store_key, match(c, "detailed", {{"client", "someone else"}}).store_key);
}

// Verifies example 9: a trailing, a middle and several wildcards match what the README says
// and nothing else.
TEST(EnvoyConfigReadme, Example9Wildcards) {
  const envoy_config& c = readme();
  EXPECT_EQ(limit_of(c, "globs", {{"sku", "item1"}}), 20);
  EXPECT_EQ(limit_of(c, "globs", {{"sku", "itemXYZ"}}), 20);
  EXPECT_EQ(limit_of(c, "globs", {{"sku", "ite"}}), -1);
  EXPECT_EQ(limit_of(c, "globs", {{"url", "/v1/42/edit"}}), 30);
  EXPECT_EQ(limit_of(c, "globs", {{"url", "/v1/user-7/edit"}}), 30);
  EXPECT_EQ(limit_of(c, "globs", {{"url", "/v1/42/view"}}), -1);
  EXPECT_EQ(limit_of(c, "globs", {{"endpoint", "/v2/a/orders/9/cancel"}}), 40);
  EXPECT_EQ(limit_of(c, "globs", {{"endpoint", "/v2/b/orders/77/cancel"}}), 40);
  EXPECT_EQ(limit_of(c, "globs", {{"endpoint", "/v2/b/items/77/cancel"}}), -1);
  // Each value the wildcard matches is counted apart.
  EXPECT_NE(match(c, "globs", {{"sku", "item1"}}).store_key,
            match(c, "globs", {{"sku", "item2"}}).store_key);
}

// Verifies example 10: key-only levels (value_to_metric or not) match any values, each
// combination counted apart.
TEST(EnvoyConfigReadme, Example10ValueToMetric) {
  const envoy_config& c = readme();
  const envoy_match a = match(c, "per_value", {{"path", "api"}, {"verb", "GET"}, {"subject", "1"}});
  const envoy_match b =
      match(c, "per_value", {{"path", "web"}, {"verb", "POST"}, {"subject", "1"}});
  EXPECT_EQ(a.rate_limit->requests_per_unit, 60u);
  EXPECT_EQ(b.rate_limit->requests_per_unit, 60u);
  EXPECT_NE(a.store_key, b.store_key);
  EXPECT_EQ(a.rate_limit->stats_key, "per_value.path.verb.subject");
  EXPECT_EQ(limit_of(c, "per_value_glob", {{"tenant", "t1"}, {"op", "listfiles"}, {"object", "o"}}),
            100);
  EXPECT_EQ(limit_of(c, "per_value_glob", {{"tenant", "t1"}, {"op", "read"}, {"object", "o"}}), -1);
}

// Verifies example 11: with share_threshold, 5 + 5 requests on two values exhaust the shared
// 10 for a third value; without it, each value has its own 10.
TEST(EnvoyConfigReadme, Example11SharedThreshold) {
  const envoy_config& c = readme();
  memory_store store;
  const auto t = 1'700'000'000s;
  const envoy_match a = match(c, "shared", {{"bucket", "docs/a.pdf"}});
  const envoy_match b = match(c, "shared", {{"bucket", "docs/b.csv"}});
  const envoy_match third = match(c, "shared", {{"bucket", "docs/c.txt"}});
  EXPECT_EQ(a.store_key, "envoy/6:shared|6:bucket=6:docs/*");
  EXPECT_EQ(a.store_key, third.store_key);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(admits(store, a, t));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(admits(store, b, t));
  EXPECT_FALSE(admits(store, third, t));

  const envoy_match ia = match(c, "shared", {{"bucket_isolated", "docs/a.pdf"}});
  const envoy_match ib = match(c, "shared", {{"bucket_isolated", "docs/b.csv"}});
  EXPECT_NE(ia.store_key, ib.store_key);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(admits(store, ia, t));
  EXPECT_FALSE(admits(store, ia, t));
  EXPECT_TRUE(admits(store, ib, t));

  // Nested: the shared wildcard level is counted as one value, the level below per value.
  const envoy_match v1 = match(c, "shared_nested", {{"api", "v1/users"}, {"method", "GET"}});
  const envoy_match v2 = match(c, "shared_nested", {{"api", "v1/orders"}, {"method", "GET"}});
  const envoy_match v3 = match(c, "shared_nested", {{"api", "v1/orders"}, {"method", "PUT"}});
  EXPECT_EQ(v1.store_key, v2.store_key);
  EXPECT_NE(v2.store_key, v3.store_key);
}

// ---- Store keys ---------------------------------------------------------------------------

// Verifies the literal layout: `envoy/`, the domain, then `|key=value`, each length-prefixed.
TEST(EnvoyStoreKey, LengthPrefixedFields) {
  const envoy_entry e[] = {{"message_type", "promo"}, {"to", "5550001"}};
  EXPECT_EQ(envoy_store_key("sms", e), "envoy/3:sms|12:message_type=5:promo|2:to=7:5550001");
  EXPECT_EQ(envoy_store_key("", {}), "envoy/0:");
}

// Verifies that keys differ whenever the domain, a key, a value or the number of entries
// differs, also where plain concatenation would make them equal.
TEST(EnvoyStoreKey, DistinguishesEveryPart) {
  const std::vector<std::vector<envoy_entry>> descriptors = {
      {{"a_b", "c"}},    {{"a", "b_c"}}, {{"a", "b"}, {"c", ""}},
      {{"a", "b|1:c="}}, {{"a", "b"}},   {{"a", "b"}, {"a", "b"}},
      {{"", "ab"}},      {{"ab", ""}},
  };
  std::vector<std::string> keys;
  for (const auto& d : descriptors) {
    keys.push_back(envoy_store_key("d", d));
    keys.push_back(envoy_store_key("e", d));
  }
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::adjacent_find(keys.begin(), keys.end()), keys.end());
}

// Verifies the bound: a key of max_envoy_literal_key bytes is kept, one byte more is hashed
// to `envoy/sha256:<hex>`, and hashed keys still differ by their last byte.
TEST(EnvoyStoreKey, HashesPastTheBound) {
  // "envoy/1:d|1:k=<n>:" is 18 bytes when n has 3 digits.
  const std::string fits(max_envoy_literal_key - 18, 'x');
  const envoy_entry at_bound[] = {{"k", fits}};
  EXPECT_EQ(envoy_store_key("d", at_bound).size(), max_envoy_literal_key);
  const std::string over = fits + "x";
  const std::string over2 = fits + "y";
  const envoy_entry e1[] = {{"k", over}};
  const envoy_entry e2[] = {{"k", over2}};
  const std::string k1 = envoy_store_key("d", e1);
  const std::string k2 = envoy_store_key("d", e2);
  EXPECT_EQ(k1.size(), 13u + 64u);
  EXPECT_TRUE(k1.starts_with("envoy/sha256:"));
  EXPECT_NE(k1, k2);
  EXPECT_EQ(k1, envoy_store_key("d", e1));
}

// Verifies that a match's key is envoy_store_key of the request's own values when no
// share_threshold applies: a wildcard or key-only match counts per actual value.
TEST(EnvoyStoreKey, MatchCountsActualValues) {
  const envoy_config c = good(R"(
domain: d
descriptors:
  - key: user
    value: team-*
    descriptors:
      - key: ip
        rate_limit: {unit: second, requests_per_unit: 5}
)");
  const envoy_entry e[] = {{"user", "team-red"}, {"ip", "10.1.2.3"}};
  EXPECT_EQ(c.match("d", e).store_key, envoy_store_key("d", e));
  const std::string huge(4096, 'z');
  const envoy_entry big[] = {{"user", "team-red"}, {"ip", huge}};
  EXPECT_EQ(c.match("d", big).store_key, envoy_store_key("d", big));
}

}  // namespace
}  // namespace sluice::server
