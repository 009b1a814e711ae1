#include <algorithm>
#include <cstdint>
#include <new>

#include "sluice/algorithms.h"

namespace sluice {

using std::chrono::microseconds;

sliding_log_state::sliding_log_state(sliding_log_state&& other) noexcept
    : mr_(other.mr_),
      buf_(other.buf_),
      cap_(other.cap_),
      head_(other.head_),
      size_(other.size_),
      total_(other.total_) {
  other.buf_ = nullptr;
  other.cap_ = other.head_ = other.size_ = 0;
  other.total_ = 0;
}

sliding_log_state::~sliding_log_state() {
  if (buf_ != nullptr) mr_->deallocate(buf_, capacity_bytes(), alignof(entry));
}

bool sliding_log_state::reallocate(std::uint32_t cap) noexcept {
  entry* fresh = nullptr;
  try {
    fresh = static_cast<entry*>(mr_->allocate(std::size_t{cap} * sizeof(entry), alignof(entry)));
  } catch (const std::bad_alloc&) {
    return false;
  }
  for (std::uint32_t i = 0; i < size_; ++i) fresh[i] = (*this)[i];
  if (buf_ != nullptr) mr_->deallocate(buf_, capacity_bytes(), alignof(entry));
  buf_ = fresh;
  cap_ = cap;
  head_ = 0;
  return true;
}

bool sliding_log_state::push_back(microseconds at, std::int64_t count) noexcept {
  if (size_ > 0 && back().at == at) {
    buf_[(head_ + size_ - 1) & (cap_ - 1)].count += count;
  } else {
    if (size_ == cap_) {
      if (cap_ == (std::uint32_t{1} << 31)) return false;
      if (!reallocate(cap_ == 0 ? 2 : cap_ * 2)) return false;
    }
    buf_[(head_ + size_) & (cap_ - 1)] = entry{at, count};
    ++size_;
  }
  total_ += count;
  return true;
}

void sliding_log_state::pop_front() noexcept {
  total_ -= buf_[head_].count;
  head_ = (head_ + 1) & (cap_ - 1);
  --size_;
}

std::int64_t sliding_log_state::take_back(std::int64_t units) noexcept {
  std::int64_t taken = 0;
  while (size_ > 0 && taken < units) {
    entry& newest = buf_[(head_ + size_ - 1) & (cap_ - 1)];
    const std::int64_t n = std::min(newest.count, units - taken);
    newest.count -= n;
    total_ -= n;
    taken += n;
    if (newest.count == 0) --size_;
  }
  return taken;
}

void sliding_log_state::shrink() noexcept {
  if (size_ == 0 && buf_ != nullptr) {
    mr_->deallocate(buf_, capacity_bytes(), alignof(entry));
    buf_ = nullptr;
    cap_ = head_ = 0;
  } else if (cap_ > 8 && size_ < cap_ / 4) {
    reallocate(cap_ / 2);  // on failure the log simply keeps its memory
  }
}

decision sliding_log_decide(sliding_log_state& s, const limit& l, microseconds now,
                            std::int64_t cost, mode m) noexcept {
  // Entries at or before now - window have left the window (the reference's
  // ZREMRANGEBYSCORE -inf (now - window) is inclusive too).
  const microseconds horizon = now - l.window;
  while (!s.empty() && s[0].at <= horizon) s.pop_front();
  s.shrink();

  const std::int64_t used = s.total();
  decision d;
  d.limit = l.count;
  d.allowed = used + cost <= l.count;
  if (d.allowed && m == mode::acquire) {
    // A clock that stepped back records at the newest time, keeping the log in order.
    const microseconds at = s.empty() ? now : std::max(now, s.back().at);
    if (s.push_back(at, cost)) {
      d.remaining = l.count - used - cost;
      d.reset_after = s.back().at + l.window - now;
      return d;
    }
    d.allowed = false;  // out of memory: refuse rather than admit without a record
  }
  d.remaining = std::max<std::int64_t>(0, l.count - used);
  if (!d.allowed) {
    // The request fits once the oldest entries holding `excess` units have expired.
    const std::int64_t excess = used + cost - l.count;
    std::int64_t freed = 0;
    microseconds frees_at = now;
    for (std::size_t i = 0; i < s.size() && freed < excess; ++i) {
      freed += s[i].count;
      frees_at = s[i].at + l.window;
    }
    d.retry_after = std::max(microseconds{1}, frees_at - now);
  }
  if (!s.empty()) d.reset_after = s.back().at + l.window - now;
  return d;
}

std::int64_t sliding_log_refund(sliding_log_state& s, const limit& l, microseconds now,
                                std::int64_t cost) noexcept {
  const microseconds horizon = now - l.window;
  while (!s.empty() && s[0].at <= horizon) s.pop_front();
  const std::int64_t given = s.take_back(cost);
  s.shrink();
  return given;
}

microseconds expiry(const sliding_log_state& s, const limit& l) noexcept {
  return s.empty() ? microseconds{0} : s.back().at + l.window;
}

}  // namespace sluice
