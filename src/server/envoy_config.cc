// Reading envoyproxy/ratelimit's YAML files into descriptor trees, and matching request
// descriptors against them (docs/DESIGN.md, "The Envoy configuration").
//
// A domain's tree lives in flat vectors: a node lists its children grouped by key, sorted,
// so one level of a match is two binary searches (the key, then the exact value), the
// wildcards of that key in file order, then the key without a value; no string is built
// until a limited match needs its store key.
//
// What a file may hold follows envoyproxy's reader (src/config/config_impl.go), stricter
// where it loads a mistake silently (docs/DESIGN.md lists where): a key is checked where it
// stands (envoyproxy checks every key against one flat list, so `shadow_mode` inside
// `rate_limit` loads and is then ignored), and a `rate_limit` must say `requests_per_unit`
// (envoyproxy reads a missing one as 0, which denies everything). Start-up code: the reader
// throws a private exception at the first problem and the entry points return it as an
// `error`.
#include "server/envoy_config.h"
#include "server/config.h"

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <exception>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <sstream>
#include <system_error>
#include <utility>

#include "core/text.h"

namespace sluice::server {

struct envoy_config::data {
  static constexpr std::uint32_t none = std::numeric_limits<std::uint32_t>::max();

  // A `value` with a `*`: each `*` matches any bytes, none included.
  struct wildcard {
    std::vector<std::string> parts;  // the value split at each `*`; at least two
    std::size_t fixed = 0;           // the bytes of the parts, together
    std::uint32_t node = none;
  };
  // The children of a node that share one `key`.
  struct key_group {
    std::string key;
    std::vector<std::pair<std::string, std::uint32_t>> values;  // sorted; wildcards too
    std::vector<wildcard> wildcards;                            // in file order
    std::uint32_t key_only = none;                              // the child with no value
  };
  struct node {
    std::vector<key_group> groups;  // sorted by key
    std::uint32_t rate_limit = none;
    std::string shared_value;  // with share_threshold: the wildcard value counted under
  };
  struct domain {
    std::string name;
    std::uint32_t root = none;
    std::size_t depth = 0;  // the deepest level with a rate limit; a longer descriptor misses
  };

  std::vector<node> nodes;
  std::vector<envoy_rate_limit> rate_limits;
  std::vector<domain> domains;  // sorted by name
  std::vector<std::string> files;
};

namespace {

using data = envoy_config::data;
using internal::quote;
using std::chrono::microseconds;
using namespace std::chrono_literals;

constexpr std::uintmax_t kMaxFileBytes = 16 << 20;

constexpr std::array<std::pair<envoy_unit, std::string_view>, 7> kUnits{{
    {envoy_unit::second, "SECOND"},
    {envoy_unit::minute, "MINUTE"},
    {envoy_unit::hour, "HOUR"},
    {envoy_unit::day, "DAY"},
    {envoy_unit::week, "WEEK"},
    {envoy_unit::month, "MONTH"},
    {envoy_unit::year, "YEAR"},
}};
constexpr std::string_view kUnitList = "second, minute, hour, day, week, month or year";

// Returns whether `value` matches the wildcard `w`; the parts are matched leftmost in turn,
// which is exact when `*` is the only special byte.
bool glob_match(const data::wildcard& w, std::string_view value) noexcept {
  const std::string& first = w.parts.front();
  const std::string& last = w.parts.back();
  if (value.size() < w.fixed || !value.starts_with(first) || !value.ends_with(last)) {
    return false;
  }
  std::string_view rest = value.substr(first.size(), value.size() - first.size() - last.size());
  for (std::size_t i = 1; i + 1 < w.parts.size(); ++i) {
    const std::size_t at = rest.find(w.parts[i]);
    if (at == std::string_view::npos) return false;
    rest.remove_prefix(at + w.parts[i].size());
  }
  return true;
}

// Returns the child of `n` that `e` selects (data::none for none), and in `by_wildcard`
// whether a wildcard value selected it: the exact key and value first, then the first
// wildcard of the key that matches, then the key without a value.
std::uint32_t select(const data::node& n, const envoy_entry& e, bool& by_wildcard) noexcept {
  const auto g = std::lower_bound(
      n.groups.begin(), n.groups.end(), e.key,
      [](const data::key_group& group, std::string_view key) { return group.key < key; });
  if (g == n.groups.end() || g->key != e.key) return data::none;
  const auto v = std::lower_bound(
      g->values.begin(), g->values.end(), e.value,
      [](const auto& value, std::string_view wanted) { return value.first < wanted; });
  if (v != g->values.end() && v->first == e.value) return v->second;
  for (const data::wildcard& w : g->wildcards) {
    if (glob_match(w, e.value)) {
      by_wildcard = true;
      return w.node;
    }
  }
  return g->key_only;
}

// Returns the node the entries lead to from `root`, one level each, or data::none; calls
// `visit(entry, node, by_wildcard)` for each level passed. A node with no children ends the
// walk (its groups are empty), so a deeper descriptor misses, as envoyproxy's does.
template <class Visit>
std::uint32_t walk(const data& d, std::uint32_t root, std::span<const envoy_entry> entries,
                   Visit&& visit) {
  std::uint32_t at = root;
  for (const envoy_entry& e : entries) {
    bool by_wildcard = false;
    const std::uint32_t child = select(d.nodes[at], e, by_wildcard);
    if (child == data::none) return data::none;
    visit(e, d.nodes[child], by_wildcard);
    at = child;
  }
  return at;
}

// Returns the domain named `name`, or nullptr.
const data::domain* find_domain(const data& d, std::string_view name) noexcept {
  const auto at = std::lower_bound(
      d.domains.begin(), d.domains.end(), name,
      [](const data::domain& x, std::string_view wanted) { return x.name < wanted; });
  return at != d.domains.end() && at->name == name ? &*at : nullptr;
}

constexpr std::string_view kKeyPrefix = "envoy/";

// Returns the number of decimal digits of `n`.
std::size_t digits(std::size_t n) noexcept {
  std::size_t d = 1;
  while (n >= 10) {
    n /= 10;
    ++d;
  }
  return d;
}

// Returns a store key: `envoy/`, then each field `fields` gives as `<sep><size>:<bytes>`
// (no separator when `sep` is 0). `fields(put)` calls `put(sep, bytes)` once per field, the
// same each time: once to size the key, once to write it into one allocation, or, past
// max_envoy_literal_key bytes, to feed a SHA-256 of it instead.
template <class Fields>
std::string make_key(Fields&& fields) {
  std::size_t size = kKeyPrefix.size();
  fields([&](char sep, std::string_view bytes) {
    size += (sep != 0 ? 1 : 0) + digits(bytes.size()) + 1 + bytes.size();
  });
  std::string out;
  if (size <= max_envoy_literal_key) {
    out.resize(size);
    char* p = std::copy(kKeyPrefix.begin(), kKeyPrefix.end(), out.data());
    fields([&](char sep, std::string_view bytes) {
      if (sep != 0) *p++ = sep;
      p = std::to_chars(p, out.data() + size, bytes.size()).ptr;
      *p++ = ':';
      p = std::copy(bytes.begin(), bytes.end(), p);
    });
    return out;
  }
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> hash(EVP_MD_CTX_new(),
                                                                     &EVP_MD_CTX_free);
  if (hash == nullptr || EVP_DigestInit_ex(hash.get(), EVP_sha256(), nullptr) != 1) {
    throw std::bad_alloc();  // as a std::string would on the same shortage
  }
  EVP_DigestUpdate(hash.get(), kKeyPrefix.data(), kKeyPrefix.size());
  fields([&](char sep, std::string_view bytes) {
    std::array<char, 24> head{};
    char* p = head.data();
    if (sep != 0) *p++ = sep;
    p = std::to_chars(p, head.data() + head.size(), bytes.size()).ptr;
    *p++ = ':';
    EVP_DigestUpdate(hash.get(), head.data(), static_cast<std::size_t>(p - head.data()));
    EVP_DigestUpdate(hash.get(), bytes.data(), bytes.size());
  });
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(hash.get(), digest.data(), &n);
  static constexpr char kHex[] = "0123456789abcdef";
  out.reserve(kKeyPrefix.size() + 7 + 2 * n);
  out.append(kKeyPrefix).append("sha256:");
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

// ---- Reading ----------------------------------------------------------------------------

// The first problem found; carried out of the reader to the entry points.
struct config_failure {
  sluice::error e;
};

std::error_code invalid_config() { return std::make_error_code(std::errc::invalid_argument); }

std::string_view type_name(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return n.Tag() == "!" ? "a quoted string" : "a value";
    default:
      return "nothing";
  }
}

// A key and its value in a YAML map.
struct field {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

constexpr std::array<std::string_view, 10> kDescriptorKeys = {
    "key",        "value",           "rate_limit",      "descriptors",     "shadow_mode",
    "quota_mode", "detailed_metric", "value_to_metric", "share_threshold", "metadata"};
constexpr std::array<std::string_view, 8> kRateLimitKeys = {
    "unit",     "requests_per_unit", "unlimited", "name",
    "replaces", "algorithm",         "window",    "on_failure"};
constexpr std::array<std::string_view, 2> kTopKeys = {"domain", "descriptors"};

// Reads one file into a `data`. The caller checks domains across files.
class file_reader {
 public:
  file_reader(const std::string& name, data& d) : name_(name), d_(d) {}

  // Reads the file's documents; returns the line of its `domain`.
  int read(const std::vector<YAML::Node>& documents) {
    if (documents.size() > 1) {
      fail_at(line_of(documents[1], 1), "", "more than one YAML document (a second ---)");
    }
    const YAML::Node root = documents.empty() ? YAML::Node() : documents.front();
    if (!root.IsDefined() || root.IsNull()) {
      fail_at(1, "", "the file is empty; it needs a \"domain\" and its \"descriptors\"");
    }
    if (!root.IsMap()) {
      fail_at(line_of(root, 1), "",
              "expected a map with \"domain\" and \"descriptors\", got " +
                  std::string(type_name(root)));
    }
    const auto top = fields(root, "", kTopKeys, "the top level");
    const field* domain = nullptr;
    const field* descriptors = nullptr;
    for (const field& f : top) (f.key == "domain" ? domain : descriptors) = &f;
    if (domain == nullptr) fail_at(line_of(root, 1), "domain", "missing");
    data::domain dom;
    dom.name = text(*domain, "domain");
    if (dom.name.empty()) fail(*domain, "domain", "must not be empty");
    dom.root = new_node();
    const std::size_t first_rate_limit = d_.rate_limits.size();
    if (descriptors != nullptr) {
      dom.depth = read_descriptors(*descriptors, "descriptors", dom.root, dom.name, 1);
    }
    for (std::size_t i = first_rate_limit; i < d_.rate_limits.size(); ++i) {
      d_.rate_limits[i].domain = dom.name;
    }
    d_.domains.push_back(std::move(dom));
    return line_of(*domain);
  }

  [[noreturn]] void fail_at(int line, std::string_view path, std::string problem,
                            std::error_code code = invalid_config()) const {
    std::string detail = name_ + ":" + std::to_string(line) + ": ";
    if (!path.empty()) detail += std::string(path) + ": ";
    detail += problem;
    throw config_failure{{code, std::move(detail)}};
  }

 private:
  static int line_of(const YAML::Node& n, int fallback) {
    return n.IsDefined() && n.Mark().line >= 0 ? n.Mark().line + 1 : fallback;
  }
  // The line of `f`'s value, or of its key when the value is empty (yaml-cpp marks an empty
  // value at the next token, often on the next line).
  static int line_of(const field& f) {
    const int key_line = line_of(f.key_node, 1);
    return f.value.IsNull() ? key_line : line_of(f.value, key_line);
  }

  [[noreturn]] void fail(const field& f, std::string_view path, std::string problem,
                         std::error_code code = invalid_config()) const {
    fail_at(line_of(f), path, std::move(problem), code);
  }
  [[noreturn]] void fail(const field& f, std::string_view path, const sluice::error& e) const {
    fail_at(line_of(f), path, e.message(), e.code);
  }

  // Returns where an unknown key belongs, when it belongs somewhere else.
  static std::string misplaced_hint(std::string_view key) {
    const auto in = [&](const auto& keys) {
      return std::find(keys.begin(), keys.end(), key) != keys.end();
    };
    if (in(kDescriptorKeys)) return " (it belongs in a descriptor)";
    if (in(kRateLimitKeys)) return " (it belongs in a rate_limit)";
    if (in(kTopKeys)) return " (it belongs at the top of the file)";
    return "";
  }

  // Returns the entries of the map `map` in file order, failing on a key that is not a
  // scalar, is given twice or is not in `known`.
  template <std::size_t N>
  std::vector<field> fields(const YAML::Node& map, std::string_view path,
                            const std::array<std::string_view, N>& known,
                            std::string_view where) const {
    std::vector<field> out;
    for (const auto& kv : map) {
      field f{"", kv.first, kv.second};
      if (!kv.first.IsScalar()) {
        fail_at(line_of(kv.first, line_of(map, 1)), path.empty() ? where : path,
                "a key must be a name, not " + std::string(type_name(kv.first)));
      }
      f.key = kv.first.Scalar();
      const std::string p = join(path, f.key);
      for (const field& seen : out) {
        if (seen.key == f.key) {
          fail_at(line_of(f.key_node, 1), p,
                  "given twice (first on line " + std::to_string(line_of(seen.key_node, 1)) + ")");
        }
      }
      if (std::find(known.begin(), known.end(), f.key) == known.end()) {
        std::string list;
        for (std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        fail_at(line_of(f.key_node, 1), p,
                "unknown key" + misplaced_hint(f.key) + "; " + std::string(where) + " has " + list);
      }
      out.push_back(std::move(f));
    }
    return out;
  }

  static std::string join(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : std::string(path) + "." + std::string(key);
  }

  // Returns the scalar text of `f`, as written (envoyproxy reads `value: 123` as "123"); an
  // empty value is "".
  std::string text(const field& f, std::string_view path) const {
    if (f.value.IsNull()) return {};
    if (!f.value.IsScalar()) {
      fail(f, path, "expected a string, got " + std::string(type_name(f.value)));
    }
    return f.value.Scalar();
  }

  // YAML 1.1's booleans, as envoyproxy's YAML library reads them.
  bool boolean(const field& f, std::string_view path) const {
    static constexpr std::array<std::string_view, 11> kTrue = {
        "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y"};
    static constexpr std::array<std::string_view, 11> kFalse = {
        "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N"};
    const std::string s = text(f, path);
    const bool plain = f.value.Tag() == "?" || f.value.Tag() == "tag:yaml.org,2002:bool";
    if (plain && std::find(kTrue.begin(), kTrue.end(), s) != kTrue.end()) return true;
    if (plain && std::find(kFalse.begin(), kFalse.end(), s) != kFalse.end()) return false;
    fail(f, path,
         "expected true or false, got " + quote(s) + (f.value.Tag() == "!" ? " (quoted)" : ""));
  }

  std::uint32_t uint32(const field& f, std::string_view path) const {
    const std::string s = text(f, path);
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    const bool plain = f.value.Tag() == "?" || f.value.Tag() == "tag:yaml.org,2002:int";
    if (!plain || s.empty() || ec == std::errc::invalid_argument || end != s.data() + s.size()) {
      fail(f, path,
           "expected a whole number, got " + quote(s) + (f.value.Tag() == "!" ? " (quoted)" : ""));
    }
    if (ec == std::errc::result_out_of_range || value > std::numeric_limits<std::uint32_t>::max()) {
      fail(f, path, quote(s) + " is out of range: use 0 to 4294967295");
    }
    return static_cast<std::uint32_t>(value);
  }

  std::uint32_t new_node() {
    d_.nodes.emplace_back();
    return static_cast<std::uint32_t>(d_.nodes.size() - 1);
  }

  // Reads the list `f` into the children of `parent`, whose metric key is `stats_prefix`
  // and which sits at `level - 1`. Returns the deepest level with a rate limit, or 0.
  std::size_t read_descriptors(const field& f, const std::string& path, std::uint32_t parent,
                               const std::string& stats_prefix, std::size_t level) {
    if (f.value.IsNull()) return 0;
    if (!f.value.IsSequence()) {
      fail(f, path,
           "expected a list of descriptors (- key: ...), got " + std::string(type_name(f.value)));
    }
    std::size_t depth = 0;
    std::map<std::pair<std::string, std::string>, int> seen;  // (key, value) -> line
    std::map<std::string, std::size_t> group_of;              // key -> index in groups
    for (std::size_t i = 0; i < f.value.size(); ++i) {
      const field item{f.key, f.key_node, f.value[i]};
      const std::string p = path + "[" + std::to_string(i) + "]";
      if (!item.value.IsMap()) {
        fail(item, p,
             "expected a descriptor (a map with key, value, ...), got " +
                 std::string(type_name(item.value)));
      }
      depth =
          std::max(depth, read_descriptor(item, p, parent, stats_prefix, level, seen, group_of));
    }
    // Sorted for the binary searches of `select`; wildcards stay in file order.
    data::node& n = d_.nodes[parent];
    std::sort(n.groups.begin(), n.groups.end(),
              [](const auto& a, const auto& b) { return a.key < b.key; });
    for (data::key_group& g : n.groups) std::sort(g.values.begin(), g.values.end());
    return depth;
  }

  std::size_t read_descriptor(const field& item, const std::string& path, std::uint32_t parent,
                              const std::string& stats_prefix, std::size_t level,
                              std::map<std::pair<std::string, std::string>, int>& seen,
                              std::map<std::string, std::size_t>& group_of) {
    const auto list = fields(item.value, path, kDescriptorKeys, "a descriptor");
    const field* key = nullptr;
    const field* value = nullptr;
    const field* rate_limit = nullptr;
    const field* children = nullptr;
    const field* share = nullptr;
    bool shadow = false;
    bool quota = false;
    bool detailed = false;
    for (const field& f : list) {
      const std::string p = join(path, f.key);
      if (f.key == "key") {
        key = &f;
      } else if (f.key == "value") {
        value = &f;
      } else if (f.key == "rate_limit") {
        rate_limit = &f;
      } else if (f.key == "descriptors") {
        children = &f;
      } else if (f.key == "shadow_mode") {
        shadow = boolean(f, p);
      } else if (f.key == "quota_mode") {
        quota = boolean(f, p);
      } else if (f.key == "detailed_metric") {
        detailed = boolean(f, p);
      } else if (f.key == "value_to_metric") {
        (void)boolean(f, p);  // metrics only: not a matter of matching or counting
      } else if (f.key == "share_threshold") {
        if (boolean(f, p)) share = &f;
      }  // metadata: free-form, passed over as envoyproxy's checks do
    }
    if (key == nullptr) fail_at(line_of(item.value, 1), join(path, "key"), "missing");
    const std::string k = text(*key, join(path, "key"));
    if (k.empty()) fail(*key, join(path, "key"), "must not be empty");
    // envoyproxy reads an empty value as none: the descriptor matches any value of the key.
    const std::string v = value == nullptr ? std::string() : text(*value, join(path, "value"));
    const bool is_wildcard = v.find('*') != std::string::npos;
    if (share != nullptr && !is_wildcard) {
      fail(*share, join(path, "share_threshold"),
           "needs a wildcard value (one with *), and the value is " +
               (v.empty() ? std::string("not given") : quote(v)));
    }
    const int line = line_of(*key);
    if (const auto [at, fresh] = seen.try_emplace({k, v}, line); !fresh) {
      fail(*key, join(path, "key"),
           "the descriptor " + quote(k) + (v.empty() ? "" : " = " + quote(v)) +
               " is given twice at this level (first on line " + std::to_string(at->second) + ")");
    }

    const std::uint32_t self = new_node();
    const std::string stats_key = stats_prefix + "." + k + (v.empty() ? "" : "_" + v);
    std::size_t depth = 0;
    if (rate_limit != nullptr) {
      envoy_rate_limit rl = read_rate_limit(*rate_limit, join(path, "rate_limit"));
      rl.shadow = shadow;
      rl.quota = quota;
      rl.detailed_metric = detailed;
      rl.stats_key = stats_key;
      d_.nodes[self].rate_limit = static_cast<std::uint32_t>(d_.rate_limits.size());
      d_.rate_limits.push_back(std::move(rl));
      depth = level;
    }
    if (share != nullptr) d_.nodes[self].shared_value = v;
    if (children != nullptr) {
      depth = std::max(depth, read_descriptors(*children, join(path, "descriptors"), self,
                                               stats_key, level + 1));
    }

    // Into the parent's group for this key (nodes may have moved: index again).
    const auto [g, added] = group_of.try_emplace(k, d_.nodes[parent].groups.size());
    if (added) d_.nodes[parent].groups.push_back({.key = k, .values = {}, .wildcards = {}});
    data::key_group& group = d_.nodes[parent].groups[g->second];
    if (v.empty()) {
      group.key_only = self;
    } else {
      group.values.emplace_back(v, self);
      if (is_wildcard) {
        data::wildcard w;
        w.node = self;
        for (std::size_t from = 0;;) {
          const std::size_t star = v.find('*', from);
          w.parts.push_back(v.substr(from, star - from));
          w.fixed += w.parts.back().size();
          if (star == std::string::npos) break;
          from = star + 1;
        }
        group.wildcards.push_back(std::move(w));
      }
    }
    return depth;
  }

  envoy_rate_limit read_rate_limit(const field& f, const std::string& path) const {
    if (f.value.IsNull()) {
      fail(f, path,
           "empty; give unit and requests_per_unit, or unlimited: true (or remove rate_limit)");
    }
    if (!f.value.IsMap()) {
      fail(f, path,
           "expected a map such as {unit: second, requests_per_unit: 10}, got " +
               std::string(type_name(f.value)));
    }
    envoy_rate_limit rl;
    const int line = line_of(f.key_node, 1);  // a block's own problems: at `rate_limit:`
    rl.source = name_ + ":" + std::to_string(line);
    const field* unit = nullptr;
    const field* window = nullptr;
    const field* requests = nullptr;
    const field* algorithm = nullptr;
    const field* on_failure = nullptr;
    const field* replaces = nullptr;
    const auto list = fields(f.value, path, kRateLimitKeys, "a rate_limit");
    for (const field& e : list) {
      const std::string p = join(path, e.key);
      if (e.key == "unit") {
        unit = &e;
        const std::string s = text(e, p);
        const auto u = std::find_if(kUnits.begin(), kUnits.end(),
                                    [&](const auto& x) { return internal::iequals(s, x.second); });
        if (u == kUnits.end()) {
          fail(e, p, quote(s) + " is not a unit; use " + std::string(kUnitList),
               make_error_code(errc::invalid_duration));
        }
        rl.unit = u->first;
        rl.window = window_of(u->first);
      } else if (e.key == "requests_per_unit") {
        requests = &e;
        rl.requests_per_unit = uint32(e, p);
      } else if (e.key == "unlimited") {
        rl.unlimited = boolean(e, p);
      } else if (e.key == "name") {
        rl.name = text(e, p);
      } else if (e.key == "replaces") {
        replaces = &e;
        rl.replaces = read_replaces(e, p);
      } else if (e.key == "algorithm") {
        algorithm = &e;
        auto a = parse_algorithm(text(e, p));
        if (!a) fail(e, p, a.error());
        rl.algorithm = *a;
      } else if (e.key == "window") {
        window = &e;
        auto w = parse_duration(text(e, p));
        if (!w) fail(e, p, w.error());
        if (w->count() < 1) {
          fail(e, p, "window " + quote(text(e, p)) + " must be at least 1us",
               make_error_code(errc::invalid_duration));
        }
        rl.window = *w;
      } else if (e.key == "on_failure") {
        on_failure = &e;
        auto m = parse_failure_mode(text(e, p));
        if (!m) fail(e, p, m.error());
        rl.on_failure = *m;
      }
    }

    if (rl.unlimited) {
      // envoyproxy refuses a unit with `unlimited`; sluice's additions mean nothing there.
      for (const field* given : {unit, window, algorithm, on_failure}) {
        if (given != nullptr) {
          fail(*given, join(path, given->key), "must not be given with unlimited: true");
        }
      }
    } else {
      if (unit == nullptr && window == nullptr) {
        fail_at(line, path,
                "missing \"unit\" (" + std::string(kUnitList) + ") or sluice's \"window\"",
                make_error_code(errc::invalid_limit));
      }
      if (unit != nullptr && window != nullptr) {
        fail(*window, join(path, "window"), "give unit or window, not both",
             make_error_code(errc::invalid_limit));
      }
      if (requests == nullptr) {
        fail_at(line, path, "missing \"requests_per_unit\" (0 denies every request)",
                make_error_code(errc::invalid_limit));
      }
      if (window != nullptr) {
        const auto u = std::find_if(kUnits.begin(), kUnits.end(),
                                    [&](const auto& x) { return window_of(x.first) == rl.window; });
        rl.unit = u == kUnits.end() ? envoy_unit::unknown : u->first;
      }
      if (rl.requests_per_unit > rl.window.count()) {
        fail(*requests, join(path, "requests_per_unit"),
             std::to_string(rl.requests_per_unit) + " per " + format_duration(rl.window) +
                 " is more than one request per microsecond, the finest sluice counts",
             make_error_code(errc::invalid_limit));
      }
      if (rl.requests_per_unit > 0) {
        auto l = make_limit(rl.requests_per_unit, rl.window);
        if (!l) fail(*requests, join(path, "requests_per_unit"), l.error());
        rl.limit = *l;
      }
    }
    if (!rl.name.empty()) {
      for (std::size_t i = 0; i < rl.replaces.size(); ++i) {
        if (rl.replaces[i] == rl.name) {
          fail_at(line_of(replaces->value[i], line_of(*replaces)),
                  join(path, "replaces[" + std::to_string(i) + "].name"),
                  "a rate limit cannot replace itself (" + quote(rl.name) + ")");
        }
      }
    }
    return rl;
  }

  std::vector<std::string> read_replaces(const field& f, const std::string& path) const {
    if (f.value.IsNull()) return {};
    if (!f.value.IsSequence()) {
      fail(f, path, "expected a list of {name: ...}, got " + std::string(type_name(f.value)));
    }
    static constexpr std::array<std::string_view, 1> kKeys = {"name"};
    std::vector<std::string> names;
    for (std::size_t i = 0; i < f.value.size(); ++i) {
      const field item{f.key, f.key_node, f.value[i]};
      const std::string p = path + "[" + std::to_string(i) + "]";
      if (!item.value.IsMap()) {
        fail(item, p, "expected {name: ...}, got " + std::string(type_name(item.value)));
      }
      std::string name;
      for (const field& e : fields(item.value, p, kKeys, "a replaces entry")) {
        name = text(e, join(p, "name"));
      }
      if (name.empty()) fail(item, join(p, "name"), "missing; name the rate limit replaced");
      names.push_back(std::move(name));
    }
    return names;
  }

  std::string name_;
  data& d_;
};

}  // namespace

// A friend of envoy_config: the only code that builds one from data.
struct envoy_config_builder {
  static envoy_config make(std::shared_ptr<const data> d) { return envoy_config(std::move(d)); }
};

std::string_view to_string(envoy_unit u) noexcept {
  for (const auto& [unit, name] : kUnits) {
    if (unit == u) return name;
  }
  return "UNKNOWN";
}

microseconds window_of(envoy_unit u) noexcept {
  constexpr std::int64_t kDay = 86400;
  std::int64_t seconds = 0;
  switch (u) {
    case envoy_unit::second:
      seconds = 1;
      break;
    case envoy_unit::minute:
      seconds = 60;
      break;
    case envoy_unit::hour:
      seconds = 3600;
      break;
    case envoy_unit::day:
      seconds = kDay;
      break;
    case envoy_unit::week:
      seconds = 7 * kDay;
      break;
    case envoy_unit::month:
      seconds = 30 * kDay;
      break;
    case envoy_unit::year:
      seconds = 365 * kDay;
      break;
    case envoy_unit::unknown:
      break;
  }
  return std::chrono::seconds(seconds);
}

std::string_view to_string(envoy_match_status s) noexcept {
  switch (s) {
    case envoy_match_status::limited:
      return "limited";
    case envoy_match_status::unlimited:
      return "unlimited";
    case envoy_match_status::no_match:
      return "no_match";
    case envoy_match_status::unknown_domain:
      return "unknown_domain";
    case envoy_match_status::replaced:
      return "replaced";
  }
  return "no_match";
}

std::string envoy_store_key(std::string_view domain, std::span<const envoy_entry> entries) {
  return make_key([&](auto&& put) {
    put(0, domain);
    for (const envoy_entry& e : entries) {
      put('|', e.key);
      put('=', e.value);
    }
  });
}

void apply_replaces(std::span<envoy_match> matches) {
  std::vector<std::string_view> replaced;
  for (const envoy_match& m : matches) {
    if (m.rate_limit == nullptr) continue;
    for (const std::string& name : m.rate_limit->replaces) replaced.push_back(name);
  }
  if (replaced.empty()) return;
  std::sort(replaced.begin(), replaced.end());
  for (envoy_match& m : matches) {
    if (m.status == envoy_match_status::limited && !m.rate_limit->name.empty() &&
        std::binary_search(replaced.begin(), replaced.end(), m.rate_limit->name)) {
      m.status = envoy_match_status::replaced;
    }
  }
}

envoy_config::envoy_config() : data_(std::make_shared<const data>()) {}

envoy_match envoy_config::match(std::string_view domain,
                                std::span<const envoy_entry> entries) const {
  envoy_match m;
  const data& d = *data_;
  const data::domain* dom = find_domain(d, domain);
  if (dom == nullptr) {
    m.status = envoy_match_status::unknown_domain;
    return m;
  }
  // A rate limit applies only at the level of the descriptor's last entry.
  if (entries.empty() || entries.size() > dom->depth) return m;
  bool shared = false;  // some level counts as its wildcard (share_threshold)
  const std::uint32_t leaf =
      walk(d, dom->root, entries, [&](const envoy_entry&, const data::node& n, bool by_wildcard) {
        shared |= by_wildcard && !n.shared_value.empty();
      });
  if (leaf == data::none || d.nodes[leaf].rate_limit == data::none) return m;
  m.rate_limit = &d.rate_limits[d.nodes[leaf].rate_limit];
  if (m.rate_limit->unlimited) {
    m.status = envoy_match_status::unlimited;
    return m;
  }
  m.status = envoy_match_status::limited;
  if (!shared) {
    m.store_key = envoy_store_key(domain, entries);
    return m;
  }
  // The same walk again, with the wildcard in place of each value it shares.
  m.store_key = make_key([&](auto&& put) {
    put(0, domain);
    walk(d, dom->root, entries, [&](const envoy_entry& e, const data::node& n, bool by_wildcard) {
      put('|', e.key);
      put('=', by_wildcard && !n.shared_value.empty() ? std::string_view(n.shared_value) : e.value);
    });
  });
  return m;
}

bool envoy_config::has_domain(std::string_view domain) const noexcept {
  return find_domain(*data_, domain) != nullptr;
}

std::vector<std::string_view> envoy_config::domains() const {
  std::vector<std::string_view> out;
  out.reserve(data_->domains.size());
  for (const data::domain& d : data_->domains) out.push_back(d.name);
  return out;
}

std::span<const envoy_rate_limit> envoy_config::rate_limits() const noexcept {
  return data_->rate_limits;
}

std::span<const std::string> envoy_config::files() const noexcept { return data_->files; }

result<envoy_config> parse_envoy_config(std::span<const envoy_config_file> files) {
  auto d = std::make_shared<data>();
  std::map<std::string, std::string, std::less<>> domain_source;  // domain -> "file:line"
  for (const envoy_config_file& file : files) {
    file_reader r(file.name, *d);
    try {
      if (const int second = second_yaml_document_line(file.text); second != 0) {
        r.fail_at(second, "", "more than one YAML document (a second ---)");
      }
      const int line = r.read(YAML::LoadAll(file.text));
      const std::string& domain = d->domains.back().name;
      const auto [at, fresh] =
          domain_source.try_emplace(domain, file.name + ":" + std::to_string(line));
      if (!fresh) {
        r.fail_at(line, "domain",
                  quote(domain) + " is already the domain of " + at->second +
                      "; give each domain one file");
      }
      d->files.push_back(file.name);
    } catch (const config_failure& f) {
      return fail(f.e);
    } catch (const YAML::Exception& e) {
      const int line = e.mark.line >= 0 ? e.mark.line + 1 : 1;
      std::string problem = "malformed YAML: " + e.msg;
      if (e.mark.column >= 0) problem += " (column " + std::to_string(e.mark.column + 1) + ")";
      return fail(
          sluice::error{invalid_config(), file.name + ":" + std::to_string(line) + ": " + problem});
    } catch (const std::exception& e) {
      return fail(sluice::error{invalid_config(), file.name + ": cannot read: " + e.what()});
    }
  }
  std::sort(d->domains.begin(), d->domains.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return envoy_config_builder::make(std::move(d));
}

result<envoy_config> parse_envoy_config(std::string_view yaml, const std::string& name) {
  const envoy_config_file file{name, std::string(yaml)};
  return parse_envoy_config(std::span<const envoy_config_file>(&file, 1));
}

result<envoy_config> load_envoy_config(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const std::string where = dir.string() + ": cannot read the Envoy config directory: ";
  try {
    std::error_code ec;
    const fs::file_status status = fs::status(dir, ec);
    if (ec || !fs::exists(status)) {
      if (!ec) ec = std::make_error_code(std::errc::no_such_file_or_directory);
      return fail(sluice::error{ec, where + ec.message()});
    }
    if (!fs::is_directory(status)) {
      return fail(sluice::error{std::make_error_code(std::errc::not_a_directory),
                                where + "not a directory"});
    }
    std::vector<fs::path> paths;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      const std::string ext = entry.path().extension().string();
      if (name.starts_with('.') || (ext != ".yaml" && ext != ".yml")) continue;
      if (fs::is_regular_file(entry.status())) paths.push_back(entry.path());  // follows links
    }
    if (paths.empty()) {
      return fail(sluice::error{invalid_config(),
                                dir.string() + ": no *.yaml or *.yml file in the Envoy config "
                                               "directory"});
    }
    std::sort(paths.begin(), paths.end());
    std::vector<envoy_config_file> files;
    for (const fs::path& p : paths) {
      const std::string name = p.string();
      if (fs::file_size(p) > kMaxFileBytes) {
        return fail(sluice::error{std::make_error_code(std::errc::file_too_large),
                                  name + ": cannot read: larger than 16 MiB"});
      }
      std::ifstream in(p, std::ios::binary);
      std::stringstream content;
      content << in.rdbuf();
      if (!in) {
        return fail(sluice::error{std::make_error_code(std::errc::io_error),
                                  name + ": cannot read the file"});
      }
      files.push_back({name, content.str()});
    }
    return parse_envoy_config(files);
  } catch (const std::exception& e) {
    return fail(sluice::error{std::make_error_code(std::errc::io_error), where + e.what()});
  }
}

}  // namespace sluice::server
