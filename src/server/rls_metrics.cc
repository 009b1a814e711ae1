#include "server/rls_metrics.h"

#include <algorithm>
#include <bit>
#include <utility>

#include "server/metrics.h"

namespace sluice::server {

std::string_view to_string(rls_outcome o) noexcept {
  switch (o) {
    case rls_outcome::within_limit:
      return "within_limit";
    case rls_outcome::near_limit:
      return "near_limit";
    case rls_outcome::over_limit:
      return "over_limit";
    case rls_outcome::shadow_mode:
      return "shadow_mode";
  }
  return "unknown";
}

std::string_view to_string(rls_code c) noexcept {
  switch (c) {
    case rls_code::ok:
      return "OK";
    case rls_code::over_limit:
      return "OVER_LIMIT";
    case rls_code::invalid_argument:
      return "INVALID_ARGUMENT";
    case rls_code::unavailable:
      return "UNAVAILABLE";
  }
  return "UNKNOWN";
}

rls_hits split_hits(std::int64_t hits, std::int64_t count, std::int64_t used, bool over,
                    bool shadow) noexcept {
  rls_hits h;
  if (hits <= 0) return h;
  const auto all = static_cast<std::uint64_t>(hits);
  if (over) {
    h.n[static_cast<std::size_t>(shadow ? rls_outcome::shadow_mode : rls_outcome::over_limit)] =
        all;
    return h;
  }
  // The hits took the use from `used - hits` to `used`; those above the threshold are near.
  const std::int64_t threshold = near_limit_threshold(count);
  std::int64_t near = 0;
  if (used > threshold) {
    const std::int64_t before = used - std::min(hits, used);  // no overflow, never below 0
    near = std::min(hits, used - std::max(threshold, before));
  }
  h.n[static_cast<std::size_t>(rls_outcome::near_limit)] = static_cast<std::uint64_t>(near);
  h.n[static_cast<std::size_t>(rls_outcome::within_limit)] = all - static_cast<std::uint64_t>(near);
  return h;
}

void rls_series::add(const rls_hits& h) noexcept {
  for (std::size_t i = 0; i < rls_outcome_count; ++i) {
    if (h.n[i] != 0) n_[i].fetch_add(h.n[i], std::memory_order_relaxed);
  }
}

bool rls_series::empty() const noexcept {
  return std::all_of(std::begin(n_), std::end(n_),
                     [](const auto& n) { return n.load(std::memory_order_relaxed) == 0; });
}

std::string entries_label(std::span<const envoy_entry> entries) {
  std::string out;
  // Cut at the first piece that does not fit; a piece cut short says so.
  const auto put = [&](std::string_view bytes) {
    return append_label_text(out, bytes, max_entries_label - 3);
  };
  bool whole = true;
  for (std::size_t i = 0; whole && i < entries.size(); ++i) {
    whole = (i == 0 || put(".")) && put(entries[i].key) && put("_") && put(entries[i].value);
  }
  if (!whole) out += "...";
  return out;
}

struct rls_rule_counters::detail {
  std::size_t hash;
  std::string label;
  rls_series series;

  detail(std::size_t h, std::string l) : hash(h), label(std::move(l)) {}
};

rls_rule_counters::rls_rule_counters(std::string domain, std::string descriptor, bool detailed,
                                     std::size_t cap)
    : domain_(std::move(domain)),
      descriptor_(std::move(descriptor)),
      detailed_(detailed),
      cap_(detailed ? cap : 0) {
  if (!detailed_) return;
  // Twice the cap, at least 8: a probe ends at an empty slot within a few steps.
  const std::size_t slots = std::bit_ceil(std::max<std::size_t>(8, cap_ * 2));
  mask_ = slots - 1;
  slots_ = std::make_unique<std::atomic<detail*>[]>(slots);
  full_.store(cap_ == 0, std::memory_order_relaxed);
}

rls_rule_counters::~rls_rule_counters() = default;

rls_series& rls_rule_counters::series(std::span<const envoy_entry> entries) {
  if (!detailed_) return series_;
  return series_of(entries_label(entries));
}

rls_series& rls_rule_counters::series_of(std::string_view label) {
  if (!detailed_ || label == rls_other_entries) return series_;
  const std::size_t hash = std::hash<std::string_view>{}(label);
  // Slots are only ever filled, and at most half of them: a probe meets an empty one.
  std::size_t i = hash & mask_;
  for (detail* d; (d = slots_[i].load(std::memory_order_acquire)) != nullptr; i = (i + 1) & mask_) {
    if (d->hash == hash && d->label == label) return d->series;
  }
  if (full_.load(std::memory_order_acquire)) return series_;
  const std::lock_guard lock(mu_);
  // Again under the lock: another call may have added it, further along the same probe.
  for (detail* d; (d = slots_[i].load(std::memory_order_relaxed)) != nullptr; i = (i + 1) & mask_) {
    if (d->hash == hash && d->label == label) return d->series;
  }
  if (details_.size() >= cap_) return series_;
  details_.push_back(std::make_unique<detail>(hash, std::string(label)));
  slots_[i].store(details_.back().get(), std::memory_order_release);
  if (details_.size() >= cap_) full_.store(true, std::memory_order_release);
  return details_.back()->series;
}

std::size_t rls_rule_counters::distinct() const {
  const std::lock_guard lock(mu_);
  return details_.size();
}

void rls_rule_counters::visit(
    const std::function<void(std::string_view, const rls_series&)>& visit) const {
  if (!detailed_) return visit("", series_);
  {
    const std::lock_guard lock(mu_);
    for (const auto& d : details_) visit(d->label, d->series);
  }
  visit(rls_other_entries, series_);
}

rls_rule_counters* rls_counters::rule(const envoy_rate_limit& rl) const noexcept {
  const std::less<const envoy_rate_limit*> before;
  const envoy_rate_limit* first = rate_limits_.data();
  if (before(&rl, first) || !before(&rl, first + rate_limits_.size())) return nullptr;
  return by_rule_[static_cast<std::size_t>(&rl - first)];
}

rls_domain_counters& rls_counters::domain(std::string_view domain) const noexcept {
  const auto at = by_name_.find(domain);
  return at != by_name_.end() ? *at->second : *unknown_;
}

void rls_counters::visit_domains(
    const std::function<void(const rls_domain_counters&, bool)>& visit) const {
  for (const auto& [label, e] : domains_) visit(*e.counters, e.configured);
}

void rls_counters::visit_rules(
    const std::function<void(const rls_rule_counters&, bool)>& visit) const {
  for (const auto& [key, e] : rules_) visit(*e.counters, e.configured);
}

rls_metrics::rls_metrics(std::size_t detailed_values) : detailed_values_(detailed_values) {}

rls_metrics::~rls_metrics() = default;

std::shared_ptr<const rls_counters> rls_metrics::install(const envoy_config& config) {
  auto next = std::make_shared<rls_counters>();
  const std::lock_guard lock(mu_);
  // Labels that the last configuration had keep their counters: a reload resets nothing.
  const auto rule = [&](const std::string& domain, const std::string& descriptor, bool detailed,
                        bool configured) {
    auto& e = next->rules_[rls_counters::rule_key{domain, descriptor, detailed}];
    e.configured = e.configured || configured;
    if (!e.counters && current_) {
      const auto old = current_->rules_.find(rls_counters::rule_key{domain, descriptor, detailed});
      if (old != current_->rules_.end()) e.counters = old->second.counters;
    }
    if (!e.counters) {
      e.counters =
          std::make_shared<rls_rule_counters>(domain, descriptor, detailed, detailed_values_);
    }
    return e.counters;
  };
  const auto domain = [&](const std::string& label, bool configured) {
    auto overrides = rule(label, std::string(rls_override_descriptor), false, false);
    auto& e = next->domains_[label];
    e.configured = e.configured || configured;
    if (!e.counters && current_) {
      const auto old = current_->domains_.find(label);
      if (old != current_->domains_.end()) e.counters = old->second.counters;
    }
    if (!e.counters) {
      e.counters = std::make_shared<rls_domain_counters>(label, std::move(overrides));
    }
    return e.counters.get();
  };

  next->rate_limits_ = config.rate_limits();
  next->by_rule_.reserve(next->rate_limits_.size());
  for (const envoy_rate_limit& rl : next->rate_limits_) {
    if (rl.unlimited) {
      next->by_rule_.push_back(nullptr);
      continue;
    }
    // stats_key is `<domain>.<descriptor>`.
    const std::string_view descriptor =
        std::string_view(rl.stats_key).substr(std::min(rl.stats_key.size(), rl.domain.size() + 1));
    next->by_rule_.push_back(
        rule(label_text(rl.domain), label_text(descriptor), rl.detailed_metric, true).get());
  }
  for (const std::string_view name : config.domains()) {
    next->by_name_.emplace(std::string(name), domain(label_text(name), true));
  }
  next->unknown_ = domain(std::string(rls_unknown_domain), false);
  current_ = next;
  return next;
}

std::shared_ptr<const rls_counters> rls_metrics::current() const {
  const std::lock_guard lock(mu_);
  return current_;
}

}  // namespace sluice::server
