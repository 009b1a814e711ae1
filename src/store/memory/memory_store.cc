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

using std::chrono::microseconds;
namespace {

// A key's node, allocated from its shard's pool: the algorithm's state, then the key's
// length (2 bytes) and bytes. Each state starts with its expiry, so the sweep reads the
// expiry of any node at offset 0; the algorithm sits in the slot's control byte, so a node
// carries no header. For gcra the state is the expiry itself (tat).
struct gcra_node {
  std::int64_t expires_at;  // µs; at or after it the state decides like a fresh one
};
struct counter_node {
  std::int64_t expires_at;
  std::int64_t window_start;
  std::int64_t previous;
  std::int64_t current;
};
struct log_node {
  std::int64_t expires_at;
  sliding_log_state log;
};
static_assert(sizeof(gcra_node) == 8 && sizeof(counter_node) == 32 && sizeof(log_node) == 48);

constexpr std::size_t state_size(algorithm a) {
  switch (a) {
    case algorithm::gcra:
      return sizeof(gcra_node);
    case algorithm::sliding_counter:
      return sizeof(counter_node);
    case algorithm::sliding_log:
      return sizeof(log_node);
  }
  return sizeof(gcra_node);
}

std::int64_t& expires_of(void* n) { return *static_cast<std::int64_t*>(n); }

std::string_view key_of(const void* n, algorithm a) {
  const char* p = static_cast<const char*>(n) + state_size(a);
  std::uint16_t len;
  std::memcpy(&len, p, sizeof len);
  return {p + sizeof len, len};
}

std::size_t node_bytes(algorithm a, std::size_t key_len) {
  return state_size(a) + sizeof(std::uint16_t) + key_len;
}

std::uint64_t hash_of(std::string_view key) { return std::hash<std::string_view>{}(key); }

// A slot's control byte: 0 when empty, else 0x80 | algorithm (2 bits) | 5 bits of the hash
// (its top bits; the slot index uses the low ones and the shard the middle).
constexpr std::uint8_t kEmpty = 0;
std::uint8_t control(algorithm a, std::uint64_t hash) {
  return static_cast<std::uint8_t>(0x80 | (static_cast<unsigned>(a) << 5) | (hash >> 59));
}
algorithm algorithm_of(std::uint8_t control) { return static_cast<algorithm>((control >> 5) & 3); }

constexpr std::size_t kSweepPerInsert = 2;  // slots checked for expiry per new key
constexpr std::size_t kEvictionSample = 8;  // occupied slots compared when at the cap
constexpr std::size_t kMinCapacity = 16;

}  // namespace

// An open-addressing table (linear probing, one control byte per slot, backward-shift
// deletion) guarded by one mutex. Nodes come from a pool, so a key costs its node plus
// about 9 bytes of table per slot. The fields every decision touches share the first cache
// line; the table and the pool's bookkeeping lie beyond it.
struct alignas(64) shard {
  std::mutex mu;
  std::size_t size = 0;
  std::size_t cap_keys = 0;
  std::uint8_t* ctrl = nullptr;  // capacity control bytes
  void** slots = nullptr;        // capacity node pointers
  std::size_t capacity = 0;      // a power of two, or 0
  std::size_t cursor = 0;        // where the incremental sweep resumes
  std::uint64_t expired = 0;
  std::uint64_t evicted = 0;
  // Chunks of at most 256 blocks: the default geometric growth leaves half a chunk unused
  // on average, which at a million keys costs more than the nodes themselves.
  std::pmr::unsynchronized_pool_resource pool{std::pmr::pool_options{256, 0}};
  std::vector<std::uint8_t> ctrl_storage;
  std::vector<void*> slot_storage;

  ~shard() {
    for (std::size_t i = 0; i < capacity; ++i) {
      if (ctrl[i] != kEmpty) destroy(slots[i], algorithm_of(ctrl[i]));
    }
  }

  std::size_t mask() const { return capacity - 1; }

  // Returns the slot holding `key`, or the empty slot where it would go.
  std::size_t probe(std::string_view key, std::uint64_t hash) const {
    const std::uint8_t tag = static_cast<std::uint8_t>(hash >> 59);
    std::size_t i = hash & mask();
    for (std::uint8_t c; (c = ctrl[i]) != kEmpty; i = (i + 1) & mask()) {
      if ((c & 0x1f) == tag && key_of(slots[i], algorithm_of(c)) == key) return i;
    }
    return i;
  }

  // Returns a fresh node for `key`, or nullptr when memory runs out.
  void* create(std::string_view key, algorithm a) noexcept {
    void* p = nullptr;
    try {
      p = pool.allocate(node_bytes(a, key.size()), alignof(std::int64_t));
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    switch (a) {
      case algorithm::gcra:
        new (p) gcra_node{0};
        break;
      case algorithm::sliding_counter:
        new (p) counter_node{0, 0, 0, 0};
        break;
      case algorithm::sliding_log:
        new (p) log_node{0, sliding_log_state{&pool}};
        break;
    }
    char* tail = static_cast<char*>(p) + state_size(a);
    const auto len = static_cast<std::uint16_t>(key.size());
    std::memcpy(tail, &len, sizeof len);
    std::memcpy(tail + sizeof len, key.data(), key.size());
    return p;
  }

  void destroy(void* n, algorithm a) noexcept {
    const std::size_t bytes = node_bytes(a, key_of(n, a).size());
    if (a == algorithm::sliding_log) static_cast<log_node*>(n)->~log_node();
    pool.deallocate(n, bytes, alignof(std::int64_t));
  }

  std::size_t home(std::size_t i) const {
    return hash_of(key_of(slots[i], algorithm_of(ctrl[i]))) & mask();
  }

  // Removes the node at slot `i`, shifting later entries of its run back (Knuth's
  // algorithm R), so lookups never need tombstones.
  void erase_at(std::size_t i) {
    destroy(slots[i], algorithm_of(ctrl[i]));
    for (std::size_t j = i;;) {
      j = (j + 1) & mask();
      if (ctrl[j] == kEmpty) break;
      const std::size_t h = home(j);
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      ctrl[i] = ctrl[j];
      slots[i] = slots[j];
      i = j;
    }
    ctrl[i] = kEmpty;
    --size;
  }

  void resize(std::size_t new_capacity) {
    std::vector<std::uint8_t> new_ctrl(new_capacity, kEmpty);
    std::vector<void*> new_slots(new_capacity, nullptr);
    const std::size_t new_mask = new_capacity - 1;
    for (std::size_t i = 0; i < capacity; ++i) {
      if (ctrl[i] == kEmpty) continue;
      std::size_t j = hash_of(key_of(slots[i], algorithm_of(ctrl[i]))) & new_mask;
      while (new_ctrl[j] != kEmpty) j = (j + 1) & new_mask;
      new_ctrl[j] = ctrl[i];
      new_slots[j] = slots[i];
    }
    ctrl_storage.swap(new_ctrl);
    slot_storage.swap(new_slots);
    ctrl = ctrl_storage.data();
    slots = slot_storage.data();
    capacity = new_capacity;
    cursor = 0;
  }

  // Gives table memory back once most keys are gone.
  void maybe_shrink() {
    if (capacity > 64 && size * 8 < capacity) resize(capacity / 2);
  }

  bool expired_at(std::size_t i, std::int64_t now) const {
    return ctrl[i] != kEmpty && expires_of(slots[i]) <= now;
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
    if (dropped > 0) {
      expired += dropped;
      maybe_shrink();
    }
    return dropped;
  }

  // Drops every expired key. Erasing only moves keys back into slots at or after the one
  // being checked (or, where a run wraps, into slots already checked and found live).
  std::size_t purge(std::int64_t now) {
    std::size_t dropped = 0;
    for (std::size_t i = 0; i < capacity && size > 0; ++i) {
      while (expired_at(i, now)) {
        erase_at(i);
        ++dropped;
      }
    }
    if (dropped > 0) {
      expired += dropped;
      maybe_shrink();
    }
    return dropped;
  }

  // Drops the soonest-expiring of a few sampled keys (an expired one if there is any).
  void evict_one(std::int64_t now) {
    std::size_t victim = capacity;
    std::size_t seen = 0;
    for (std::size_t k = 0; k < capacity && seen < kEvictionSample; ++k) {
      cursor = (cursor + 1) & mask();
      if (ctrl[cursor] == kEmpty) continue;
      ++seen;
      if (victim == capacity || expires_of(slots[cursor]) < expires_of(slots[victim])) {
        victim = cursor;
      }
    }
    if (victim == capacity) return;
    if (expires_of(slots[victim]) <= now) {
      ++expired;
    } else {
      ++evicted;
    }
    erase_at(victim);
  }

  // Makes room for one more key: sweeps a few slots (new keys pay for dropping idle ones,
  // so the table never fills with expired keys), evicts at the cap, and grows the table
  // after purging it. Returns false when no memory could be had.
  bool reserve_one(std::int64_t now) {
    sweep(now, kSweepPerInsert);
    if (size >= cap_keys) evict_one(now);
    if (capacity != 0 && (size + 1) * 8 <= capacity * 7) return true;
    if (capacity != 0) {
      purge(now);
      if ((size + 1) * 8 <= capacity * 7) return true;
    }
    try {
      resize(std::max(kMinCapacity, capacity * 2));
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

  shard& shard_for(std::uint64_t hash) const { return shards[(hash >> 32) & shard_mask]; }

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
    if (r.key.empty() || r.key.size() > options.max_key_length)
      return fail(check_key(r.key).error());
    const microseconds now = r.now ? *r.now : options.time_source->now();
    if (!request_in_range(r.limit, r.cost, now))
      return fail(check_request(r.limit, r.cost, now).error());

    const std::uint64_t hash = hash_of(r.key);
    shard& s = shard_for(hash);
    std::lock_guard lock(s.mu);
    return decide_locked(s, hash, r, now, m);
  }

  // The decisions of `acquire_all`: every shard involved is locked (in address order, so
  // two calls never wait on each other), each key is peeked, and only when all are allowed
  // are they acquired, under the same locks and `now`, so the answers are the same.
  result<std::vector<decision>> decide_all(std::span<const request> rs) {
    std::vector<std::size_t> group;
    auto merged = merge_requests(rs, group);
    if (!merged) return fail(merged.error());
    std::vector<std::uint64_t> hashes;
    std::vector<shard*> locked;
    hashes.reserve(merged->size());
    locked.reserve(merged->size());
    microseconds now{0};
    for (std::size_t g = 0; g < merged->size(); ++g) {
      request& r = (*merged)[g];
      if (auto ok = check_key(r.key); !ok) return fail(ok.error());
      if (g == 0 || r.now) now = r.now ? *r.now : options.time_source->now();
      r.now = now;  // one `now` for the whole call, unless each request gives its own
      const std::int64_t checked_cost = std::max<std::int64_t>(r.cost, 1);
      if (!request_in_range(r.limit, checked_cost, *r.now)) {
        return fail(check_request(r.limit, checked_cost, *r.now).error());
      }
      hashes.push_back(hash_of(r.key));
      locked.push_back(&shard_for(hashes.back()));
    }
    std::sort(locked.begin(), locked.end());
    locked.erase(std::unique(locked.begin(), locked.end()), locked.end());
    for (shard* s : locked) s->mu.lock();
    struct unlock_all {
      std::vector<shard*>& shards;
      ~unlock_all() {
        for (auto it = shards.rbegin(); it != shards.rend(); ++it) (*it)->mu.unlock();
      }
    } unlock{locked};

    std::vector<decision> per_key;
    per_key.reserve(merged->size());
    bool all = true;
    for (std::size_t g = 0; g < merged->size(); ++g) {
      request r = (*merged)[g];
      r.cost = std::max<std::int64_t>(r.cost, 1);  // a check asks for one unit
      auto d = decide_locked(shard_for(hashes[g]), hashes[g], r, *r.now, mode::peek);
      if (!d) return fail(d.error());
      all = all && d->allowed;
      per_key.push_back(*d);
    }
    if (all) {
      for (std::size_t g = 0; g < merged->size(); ++g) {
        const request& r = (*merged)[g];
        if (r.cost == 0) continue;  // only checked
        auto d = decide_locked(shard_for(hashes[g]), hashes[g], r, *r.now, mode::acquire);
        if (!d) return fail(d.error());  // out of memory: earlier keys stay spent
        per_key[g] = *d;
      }
    }
    std::vector<decision> out;
    out.reserve(rs.size());
    for (const std::size_t g : group) out.push_back(per_key[g]);
    return out;
  }

  result<decision> refund(request r) {
    if (auto ok = check_key(r.key); !ok) return fail(ok.error());
    const microseconds now = r.now ? *r.now : options.time_source->now();
    if (r.cost > r.limit.count && r.limit.count >= 1) r.cost = r.limit.count;  // all there is
    if (!request_in_range(r.limit, r.cost, now))
      return fail(check_request(r.limit, r.cost, now).error());
    const std::uint64_t hash = hash_of(r.key);
    shard& s = shard_for(hash);
    std::lock_guard lock(s.mu);
    const std::size_t i = s.capacity == 0 ? 0 : s.probe(r.key, hash);
    if (s.capacity != 0 && s.ctrl[i] != kEmpty && algorithm_of(s.ctrl[i]) == r.algorithm) {
      refund_node(s.slots[i], r.algorithm, r.limit, now, r.cost);
    }
    request one = r;
    one.cost = 1;
    return decide_locked(s, hash, one, now, mode::peek);
  }

  // Returns the decision for `r` on shard `s`, whose lock the caller holds.
  static result<decision> decide_locked(shard& s, std::uint64_t hash, const request& r,
                                        microseconds now, mode m) {
    std::size_t i = s.capacity == 0 ? 0 : s.probe(r.key, hash);
    void* n = s.capacity == 0 || s.ctrl[i] == kEmpty ? nullptr : s.slots[i];
    if (n != nullptr && algorithm_of(s.ctrl[i]) != r.algorithm) {
      // The key was last limited by another algorithm: its state means nothing here, and an
      // acquire replaces it.
      if (m == mode::peek) return decide_fresh(r.algorithm, r.limit, now, r.cost, m);
      s.erase_at(i);
      n = nullptr;
    }
    if (n == nullptr) {
      if (m == mode::peek) return decide_fresh(r.algorithm, r.limit, now, r.cost, m);
      // An acquire on a fresh key is always admitted (cost ≤ count): store it.
      if (!s.reserve_one(now.count())) {
        return make_error(errc::store_full, "memory store: out of memory");
      }
      i = s.probe(r.key, hash);
      n = s.create(r.key, r.algorithm);
      if (n == nullptr) return make_error(errc::store_full, "memory store: out of memory");
      s.ctrl[i] = control(r.algorithm, hash);
      s.slots[i] = n;
      ++s.size;
    }
    return decide_node(n, r.algorithm, r.limit, now, r.cost, m);
  }

  // Gives back up to `cost` units of the node's state, in place, and updates its expiry.
  static void refund_node(void* n, algorithm a, const limit& l, microseconds now,
                          std::int64_t cost) {
    switch (a) {
      case algorithm::gcra: {
        auto& g = *static_cast<gcra_node*>(n);
        gcra_state st{microseconds{g.expires_at}};
        gcra_refund(st, l, now, cost);
        g.expires_at = expiry(st).count();
        return;
      }
      case algorithm::sliding_counter: {
        auto& c = *static_cast<counter_node*>(n);
        counter_state st{microseconds{c.window_start}, c.previous, c.current};
        sliding_counter_refund(st, l, now, cost);
        c.expires_at = expiry(st, l).count();
        c.window_start = st.window_start.count();
        c.previous = st.previous;
        c.current = st.current;
        return;
      }
      case algorithm::sliding_log:
        break;
    }
    auto& g = *static_cast<log_node*>(n);
    sliding_log_refund(g.log, l, now, cost);
    g.expires_at = expiry(g.log, l).count();
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
  static decision decide_node(void* n, algorithm a, const limit& l, microseconds now,
                              std::int64_t cost, mode m) {
    switch (a) {
      case algorithm::gcra: {
        auto& g = *static_cast<gcra_node*>(n);
        gcra_state st{microseconds{g.expires_at}};
        const decision d = gcra_decide(st, l, now, cost, m);
        g.expires_at = expiry(st).count();
        return d;
      }
      case algorithm::sliding_counter: {
        auto& c = *static_cast<counter_node*>(n);
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
    auto& g = *static_cast<log_node*>(n);
    const decision d = sliding_log_decide(g.log, l, now, cost, m);
    g.expires_at = expiry(g.log, l).count();
    return d;
  }
};

memory_store::memory_store(memory_store_options options) : impl_(std::make_unique<impl>(options)) {}

memory_store::~memory_store() = default;

result<decision> memory_store::acquire(const request& r) { return impl_->decide(r, mode::acquire); }

result<decision> memory_store::peek(const request& r) { return impl_->decide(r, mode::peek); }

result<std::vector<decision>> memory_store::acquire_all(std::span<const request> rs) {
  return impl_->decide_all(rs);
}

result<decision> memory_store::refund(const request& r) { return impl_->refund(r); }

result<void> memory_store::reset(std::string_view key) {
  if (auto ok = impl_->check_key(key); !ok) return ok;
  const std::uint64_t hash = hash_of(key);
  shard& s = impl_->shard_for(hash);
  std::lock_guard lock(s.mu);
  if (s.capacity == 0) return {};
  const std::size_t i = s.probe(key, hash);
  if (s.ctrl[i] != kEmpty) s.erase_at(i);
  return {};
}

std::string memory_store::describe() const {
  return "memory://?shards=" + std::to_string(impl_->options.shards) +
         "&max_keys=" + std::to_string(impl_->options.max_keys) +
         "&max_key_length=" + std::to_string(impl_->options.max_key_length);
}

void memory_store::visit_metrics(const metric_visitor& visit) const {
  const memory_store_stats s = stats();
  visit({"sluice_memory_keys",
         "Keys held by the memory store now.",
         store_metric::kind::gauge,
         {},
         {},
         s.keys});
  visit({"sluice_memory_expired_total",
         "Keys the memory store dropped because they had expired.",
         store_metric::kind::counter,
         {},
         {},
         s.expired});
  visit({"sluice_memory_evicted_total",
         "Live keys the memory store dropped to stay under max_keys.",
         store_metric::kind::counter,
         {},
         {},
         s.evicted});
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
