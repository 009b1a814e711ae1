#include "sluice/limiter.h"

#include <array>
#include <cstring>
#include <string>
#include <utility>

namespace sluice {
namespace {

bool valid_policy_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// The store key of `key` under policy `scope`: `scope:key`, or `key` when unscoped. Short
// keys are built on the stack so that a decision allocates nothing.
class scoped_key {
 public:
  scoped_key(std::string_view scope, std::string_view key) {
    if (scope.empty()) {
      view_ = key;
      return;
    }
    const std::size_t n = scope.size() + 1 + key.size();
    char* out = n <= small_.size() ? small_.data() : (large_.resize(n), large_.data());
    std::memcpy(out, scope.data(), scope.size());
    out[scope.size()] = ':';
    if (!key.empty()) std::memcpy(out + scope.size() + 1, key.data(), key.size());
    view_ = std::string_view(out, n);
  }
  scoped_key(const scoped_key&) = delete;
  scoped_key& operator=(const scoped_key&) = delete;

  std::string_view view() const { return view_; }

 private:
  std::array<char, 256> small_;
  std::string large_;
  std::string_view view_;
};

error unknown(std::string_view name) {
  return make_error(errc::unknown_policy,
                    "no policy named \"" + std::string(name.substr(0, 64)) + "\"");
}

}  // namespace

limiter::limiter(std::shared_ptr<sluice::store> s) : store_(std::move(s)) {}

result<void> limiter::add_policy(policy p) {
  if (!valid_policy_name(p.name)) {
    return make_error(errc::invalid_policy, "policy name \"" + p.name.substr(0, 64) +
                                                "\": use 1 to 64 of A-Z a-z 0-9 _ . -");
  }
  if (auto ok = make_limit(p.limit.count, p.limit.window); !ok) {
    return make_error(errc::invalid_policy, "policy \"" + p.name + "\": " + ok.error().message());
  }
  if (policies_.contains(p.name)) {
    return make_error(errc::invalid_policy, "policy \"" + p.name + "\" is defined twice");
  }
  std::string name = p.name;
  policies_.emplace(std::move(name), std::move(p));
  return {};
}

const policy* limiter::find_policy(std::string_view name) const noexcept {
  const auto it = policies_.find(name);
  return it == policies_.end() ? nullptr : &it->second;
}

result<decision> limiter::acquire(std::string_view policy_name, std::string_view key,
                                  std::int64_t cost) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return acquire(*p, key, cost);
}

result<decision> limiter::peek(std::string_view policy_name, std::string_view key,
                               std::int64_t cost) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return peek(*p, key, cost);
}

result<void> limiter::reset(std::string_view policy_name, std::string_view key) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return reset(*p, key);
}

result<decision> limiter::acquire(const policy& p, std::string_view key, std::int64_t cost,
                                  std::optional<std::chrono::microseconds> now) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  const scoped_key k(p.name, key);
  return store_->acquire(request{k.view(), p.limit, p.algorithm, cost, now});
}

result<decision> limiter::peek(const policy& p, std::string_view key, std::int64_t cost,
                               std::optional<std::chrono::microseconds> now) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  const scoped_key k(p.name, key);
  return store_->peek(request{k.view(), p.limit, p.algorithm, cost, now});
}

result<void> limiter::reset(const policy& p, std::string_view key) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  const scoped_key k(p.name, key);
  return store_->reset(k.view());
}

void limiter::async_acquire(std::string_view policy_name, std::string_view key, std::int64_t cost,
                            completion done) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return done(unknown(policy_name));
  if (key.empty()) return done(make_error(errc::invalid_key, "key is empty"));
  const scoped_key k(p->name, key);
  store_->async_acquire(request{k.view(), p->limit, p->algorithm, cost, {}}, std::move(done));
}

void limiter::async_peek(std::string_view policy_name, std::string_view key, std::int64_t cost,
                         completion done) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return done(unknown(policy_name));
  if (key.empty()) return done(make_error(errc::invalid_key, "key is empty"));
  const scoped_key k(p->name, key);
  store_->async_peek(request{k.view(), p->limit, p->algorithm, cost, {}}, std::move(done));
}

}  // namespace sluice
