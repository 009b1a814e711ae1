#include "sluice/memory_store.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory_resource>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "sluice/algorithms.h"

namespace sluice {
namespace {

// One key's state, allocated from its shard's pool with the key bytes right after it.
// For gcra the state is the expiry itself (tat).
struct node {
  std::int64_t expires_at;  // µs; at or after it the state decides like a fresh one
  std::uint32_t hash;
  std::uint16_t key_len;
  algorithm algo;
};
struct counter_node : node {
  std::int64_t window_start;
  std::int64_t previous;
  std::int64_t current;
};
struct log_node : node {
  sliding_log_state log;
};
static_assert(sizeof(node) == 16 && sizeof(counter_node) == 40);

constexpr std::size_t node_size(algorithm a) {
  switch (a) {
    case algorithm::gcra:
      return sizeof(node);
    case algorithm::sliding_counter:
      return sizeof(counter_node);
    case algorithm::sliding_log:
      return sizeof(log_node);
  }
  return sizeof(node);
}

const char* key_of(const node* n) { return reinterpret_cast<const char*>(n) + node_size(n->algo); }

constexpr std::uint8_t kEmpty = 0;
constexpr std::size_t kSweepPerCall = 2;    // slots checked for expiry on every call
constexpr std::size_t kEvictionSample = 8;  // occupied slots compared when at the cap
constexpr std::size_t kMinCapacity = 16;

std::uint8_t tag_of(std::uint32_t hash) { return static_cast<std::uint8_t>(0x80 | (hash >> 25)); }

}  // namespace

// An open-addressing table (linear probing, one control byte per slot holding 7 bits of
// the hash, backward-shift deletion) guarded by one mutex. Nodes come from a pool, so a
// key costs its node plus about 9 bytes of table per slot.
struct alignas(64) shard {
  std::mutex mu;
  std::pmr::unsynchronized_pool_resource pool;
  std::vector<std::uint8_t> ctrl;
  std::vector<node*> slots;
  std::size_t size = 0;
  std::size_t cursor = 0;  // where the incremental sweep resumes
  std::size_t cap_keys = 0;
  std::uint64_t expired = 0;
  std::uint64_t evicted = 0;

  ~shard() {
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (ctrl[i] != kEmpty) destroy(slots[i]);
    }
  }

  std::size_t mask() const { return slots.size() - 1; }

  // Returns the slot holding `key`, or the empty slot where it would go (ctrl == kEmpty).
  std::size_t probe(std::string_view key, std::uint32_t hash) const {
    const std::uint8_t tag = tag_of(hash);
    std::size_t i = hash & mask();
    for (std::uint8_t c; (c = ctrl[i]) != kEmpty; i = (i + 1) & mask()) {
      if (c != tag) continue;
      const node* n = slots[i];
      if (n->hash == hash && n->key_len == key.size() &&
          std::memcmp(key_of(n), key.data(), key.size()) == 0) {
        return i;
      }
    }
    return i;
  }

  // Returns a fresh node for `key`, or nullptr when memory runs out.
  node* create(std::string_view key, std::uint32_t hash, algorithm a) noexcept {
    void* p = nullptr;
    try {
      p = pool.allocate(node_size(a) + key.size(), alignof(node));
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    node* n = nullptr;
    switch (a) {
      case algorithm::gcra:
        n = new (p) node{};
        break;
      case algorithm::sliding_counter:
        n = new (p) counter_node{};
        break;
      case algorithm::sliding_log:
        n = new (p) log_node{{}, sliding_log_state{&pool}};
        break;
    }
    n->expires_at = 0;
    n->hash = hash;
    n->key_len = static_cast<std::uint16_t>(key.size());
    n->algo = a;
    std::memcpy(reinterpret_cast<char*>(p) + node_size(a), key.data(), key.size());
    return n;
  }

  void destroy(node* n) noexcept {
    const std::size_t bytes = node_size(n->algo) + n->key_len;
    if (n->algo == algorithm::sliding_log) static_cast<log_node*>(n)->~log_node();
    pool.deallocate(n, bytes, alignof(node));
  }

  // Removes the node at slot `i`, shifting later entries of its run back (Knuth's
  // algorithm R), so lookups never need tombstones.
  void erase_at(std::size_t i) {
    destroy(slots[i]);
    for (std::size_t j = i;;) {
      j = (j + 1) & mask();
      if (ctrl[j] == kEmpty) break;
      const std::size_t home = slots[j]->hash & mask();
      const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (stays) continue;
      ctrl[i] = ctrl[j];
      slots[i] = slots[j];
      i = j;
    }
    ctrl[i] = kEmpty;
    --size;
  }

  void resize(std::size_t capacity) {
    std::vector<std::uint8_t> old_ctrl(capacity, kEmpty);
    std::vector<node*> old_slots(capacity, nullptr);
    old_ctrl.swap(ctrl);
    old_slots.swap(slots);
    for (std::size_t i = 0; i < old_slots.size(); ++i) {
      if (old_ctrl[i] == kEmpty) continue;
      std::size_t j = old_slots[i]->hash & mask();
      while (ctrl[j] != kEmpty) j = (j + 1) & mask();
      ctrl[j] = old_ctrl[i];
      slots[j] = old_slots[i];
    }
    cursor = 0;
  }

  // Gives table memory back once most keys are gone.
  void maybe_shrink() {
    if (slots.size() > 64 && size * 8 < slots.size()) resize(slots.size() / 2);
  }

  bool expired_at(std::size_t i, std::int64_t now) const {
    return ctrl[i] != kEmpty && slots[i]->expires_at <= now;
  }

  // Checks `count` slots from the sweep cursor and drops the expired ones. An erase shifts
  // the next key of the run into the slot, so the slot is checked again before moving on.
  std::size_t sweep(std::int64_t now, std::size_t count) {
    std::size_t dropped = 0;
    for (std::size_t k = 0; k < count && size > 0; ++k) {
      if (expired_at(cursor, now)) {
        erase_at(cursor);
        ++dropped;
      } else {
        cursor = (cursor + 1) & mask();
      }
    }
    expired += dropped;
    if (dropped > 0) maybe_shrink();
    return dropped;
  }

  // Drops every expired key. Erasing only moves keys back into slots at or after the one
  // being checked (or, where a run wraps, into slots already checked and found live).
  std::size_t purge(std::int64_t now) {
    std::size_t dropped = 0;
    for (std::size_t i = 0; i < slots.size() && size > 0; ++i) {
      while (expired_at(i, now)) {
        erase_at(i);
        ++dropped;
      }
    }
    expired += dropped;
    if (dropped > 0) maybe_shrink();
    return dropped;
  }

  // Drops the soonest-expiring of a few sampled keys (an expired one if there is any).
  void evict_one(std::int64_t now) {
    std::size_t victim = slots.size();
    std::size_t seen = 0;
    for (std::size_t k = 0; k < slots.size() && seen < kEvictionSample; ++k) {
      cursor = (cursor + 1) & mask();
      if (ctrl[cursor] == kEmpty) continue;
      ++seen;
      if (victim == slots.size() || slots[cursor]->expires_at < slots[victim]->expires_at) {
        victim = cursor;
      }
    }
    if (victim == slots.size()) return;
    if (slots[victim]->expires_at <= now) {
      ++expired;
    } else {
      ++evicted;
    }
    erase_at(victim);
  }

  // Makes room for one more key; returns false when no memory could be had.
  bool reserve_one(std::int64_t now) {
    if (size >= cap_keys) evict_one(now);
    if (!slots.empty() && (size + 1) * 8 <= slots.size() * 7) return true;
    if (!slots.empty()) {
      purge(now);
      if ((size + 1) * 8 <= slots.size() * 7) return true;
    }
    try {
      resize(std::max(kMinCapacity, slots.size() * 2));
    } catch (const std::bad_alloc&) {
      return false;
    }
    return true;
  }
};

struct memory_store::impl {
  memory_store_options options;
  std::unique_ptr<shard[]> shards;
  std::size_t shard_mask = 0;

  explicit impl(memory_store_options o) : options(o) {
    const std::size_t n = std::bit_ceil(std::max<std::size_t>(1, options.shards));
    options.shards = n;
    options.max_key_length =
        std::min<std::size_t>(options.max_key_length, std::numeric_limits<std::uint16_t>::max());
    if (options.time_source == nullptr) options.time_source = &system_clock();
    shards = std::make_unique<shard[]>(n);
    shard_mask = n - 1;
    const std::size_t per_shard = options.max_keys == 0 ? std::numeric_limits<std::size_t>::max()
                                                        : (options.max_keys + n - 1) / n;
    for (std::size_t i = 0; i < n; ++i) shards[i].cap_keys = per_shard;
  }

  result<void> check_key(std::string_view key) const {
    if (key.empty()) return make_error(errc::invalid_key, "key is empty");
    if (key.size() > options.max_key_length) {
      return make_error(errc::invalid_key, "key is " + std::to_string(key.size()) +
                                               " bytes; the limit is " +
                                               std::to_string(options.max_key_length));
    }
    return {};
  }

  result<decision> decide(const request& r, mode m) {
    if (auto ok = check_key(r.key); !ok) return ok.error();
    const microseconds now = r.now ? *r.now : options.time_source->now();
    if (auto ok = check_request(r.limit, r.cost, now); !ok) return ok.error();

    const std::size_t h = std::hash<std::string_view>{}(r.key);
    const auto hash = static_cast<std::uint32_t>(h);
    shard& s = shards[(h >> 32) & shard_mask];
    std::lock_guard lock(s.mu);

    std::size_t i = s.slots.empty() ? 0 : s.probe(r.key, hash);
    node* n = s.slots.empty() || s.ctrl[i] == kEmpty ? nullptr : s.slots[i];
    if (n != nullptr && n->algo != r.algorithm) {
      // The key was last limited by another algorithm: its state means nothing here, and an
      // acquire replaces it.
      if (m == mode::peek) return decide_fresh(r.algorithm, r.limit, now, r.cost, m);
      s.erase_at(i);
      n = nullptr;
    }

    decision d;
    if (n == nullptr) {
      d = decide_fresh(r.algorithm, r.limit, now, r.cost, m);
      if (m == mode::peek) return d;
      // An acquire on a fresh key is always admitted (cost ≤ count): store it.
      if (!s.reserve_one(now.count())) {
        return make_error(errc::store_full, "memory store: out of memory");
      }
      i = s.probe(r.key, hash);
      n = s.create(r.key, hash, r.algorithm);
      if (n == nullptr) return make_error(errc::store_full, "memory store: out of memory");
      s.ctrl[i] = tag_of(hash);
      s.slots[i] = n;
      ++s.size;
    }
    d = decide_node(*n, r.limit, now, r.cost, m);
    s.sweep(now.count(), kSweepPerCall);
    return d;
  }

  static decision decide_fresh(algorithm a, const limit& l, microseconds now, std::int64_t cost,
                               mode m) {
    switch (a) {
      case algorithm::gcra: {
        gcra_state st;
        return gcra_decide(st, l, now, cost, m);
      }
      case algorithm::sliding_counter: {
        counter_state st;
        return sliding_counter_decide(st, l, now, cost, m);
      }
      case algorithm::sliding_log:
        break;
    }
    sliding_log_state st;
    return sliding_log_decide(st, l, now, cost, m);
  }

  // Runs the node's algorithm on its state in place and updates its expiry.
  static decision decide_node(node& n, const limit& l, microseconds now, std::int64_t cost,
                              mode m) {
    switch (n.algo) {
      case algorithm::gcra: {
        gcra_state st{microseconds{n.expires_at}};
        const decision d = gcra_decide(st, l, now, cost, m);
        n.expires_at = expiry(st).count();
        return d;
      }
      case algorithm::sliding_counter: {
        auto& c = static_cast<counter_node&>(n);
        counter_state st{microseconds{c.window_start}, c.previous, c.current};
        const decision d = sliding_counter_decide(st, l, now, cost, m);
        c.expires_at = expiry(st, l).count();
        c.window_start = st.window_start.count();
        c.previous = st.previous;
        c.current = st.current;
        return d;
      }
      case algorithm::sliding_log:
        break;
    }
    auto& g = static_cast<log_node&>(n);
    const decision d = sliding_log_decide(g.log, l, now, cost, m);
    g.expires_at = expiry(g.log, l).count();
    return d;
  }
};

memory_store::memory_store(memory_store_options options) : impl_(std::make_unique<impl>(options)) {}

memory_store::~memory_store() = default;

result<decision> memory_store::acquire(const request& r) { return impl_->decide(r, mode::acquire); }

result<decision> memory_store::peek(const request& r) { return impl_->decide(r, mode::peek); }

result<void> memory_store::reset(std::string_view key) {
  if (auto ok = impl_->check_key(key); !ok) return ok;
  const std::size_t h = std::hash<std::string_view>{}(key);
  shard& s = impl_->shards[(h >> 32) & impl_->shard_mask];
  std::lock_guard lock(s.mu);
  if (s.slots.empty()) return {};
  const std::size_t i = s.probe(key, static_cast<std::uint32_t>(h));
  if (s.ctrl[i] != kEmpty) s.erase_at(i);
  return {};
}

std::string memory_store::describe() const {
  return "memory://?shards=" + std::to_string(impl_->options.shards) +
         "&max_keys=" + std::to_string(impl_->options.max_keys) +
         "&max_key_length=" + std::to_string(impl_->options.max_key_length);
}

memory_store_stats memory_store::stats() const {
  memory_store_stats out;
  for (std::size_t i = 0; i <= impl_->shard_mask; ++i) {
    shard& s = impl_->shards[i];
    std::lock_guard lock(s.mu);
    out.keys += s.size;
    out.expired += s.expired;
    out.evicted += s.evicted;
  }
  return out;
}

std::size_t memory_store::purge_expired(std::chrono::microseconds now) {
  std::size_t dropped = 0;
  for (std::size_t i = 0; i <= impl_->shard_mask; ++i) {
    shard& s = impl_->shards[i];
    std::lock_guard lock(s.mu);
    dropped += s.purge(now.count());
  }
  return dropped;
}

}  // namespace sluice
