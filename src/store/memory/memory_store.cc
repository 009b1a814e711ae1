// The memory store's concurrency (docs/DESIGN.md, "The memory store"): decisions find their
// key's node without any shared lock, inside a userspace-RCU read-side section, and decide
// under the node's own one-byte lock. Everything that changes a table (insert, erase, sweep,
// eviction, growth) takes the shard's mutex; what it unlinks is freed after a grace period.
#include "sluice/memory_store.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory_resource>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/limit.h"
#include "store/memory/snapshot.h"

// Userspace RCU, the memb flavour: a read-side section writes only a thread-local counter;
// grace periods pay with membarrier(2). Without _LGPL_SOURCE its calls stay in the library.
#include <urcu/urcu-memb.h>

#if defined(__SANITIZE_THREAD__)
#define SLUICE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SLUICE_TSAN 1
#endif
#endif

#if defined(SLUICE_TSAN)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace sluice {

using std::chrono::microseconds;
namespace {

// liburcu is not built with TSan, which therefore cannot see that a grace period orders
// every read-side section before the frees that follow it. In TSan builds each section ends
// with a release of `grace_token` and each free after a grace period begins with an acquire
// of it; elsewhere these are no-ops.
char grace_token;
// The same for rcu_barrier(): each call_rcu callback ends with a release of it, and a store's
// destructor acquires it once rcu_barrier() has waited for them.
char barrier_token;
inline void tsan_release([[maybe_unused]] void* p) {
#if defined(SLUICE_TSAN)
  __tsan_release(p);
#endif
}
inline void tsan_acquire([[maybe_unused]] void* p) {
#if defined(SLUICE_TSAN)
  __tsan_acquire(p);
#endif
}

// RCU needs every thread that reads (or hands memory to call_rcu) registered. Library users
// and Python start threads we never see, so a thread registers on its first call and
// unregisters when it exits.
thread_local bool t_registered = false;

struct rcu_registration {
  ~rcu_registration() {
    urcu_memb_unregister_thread();
    t_registered = false;
  }
};

[[gnu::noinline]] void register_thread() {
  // call_rcu's worker thread does not survive fork(): these handlers stop it around the
  // fork and start a new one in the child (pre-forking servers create stores, then fork).
  static const int fork_handlers =
      pthread_atfork(urcu_memb_call_rcu_before_fork, urcu_memb_call_rcu_after_fork_parent,
                     urcu_memb_call_rcu_after_fork_child);
  (void)fork_handlers;
  static thread_local rcu_registration registration;  // constructed here, destroyed at exit
  urcu_memb_register_thread();
  t_registered = true;
}

inline void ensure_registered() {
  if (!t_registered) register_thread();
}

// A read-side section: nodes and tables seen inside it are not freed before it ends.
class read_section {
 public:
  read_section() {
    ensure_registered();
    urcu_memb_read_lock();
  }
  ~read_section() {
    tsan_release(&grace_token);
    urcu_memb_read_unlock();
  }
  read_section(const read_section&) = delete;
  read_section& operator=(const read_section&) = delete;
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A key's node, allocated from its shard's pool: a 4-byte header, the key's bytes, then the
// algorithm's state at the next multiple of 8. The header alone says how to read the key, so
// a lock-free lookup never needs the slot's control byte (which backward-shift deletion may
// pair with another entry's slot for a moment).
struct node {
  // kLocked: a thread decides on (or erases) the node. kDead: erased from its table; the
  // state means nothing and the node is freed after a grace period. Set under the lock only.
  std::atomic<std::uint8_t> word{0};
  algorithm algo;
  std::uint16_t key_len;

  static constexpr std::uint8_t kLocked = 1;
  static constexpr std::uint8_t kDead = 2;

  std::string_view key() const {
    return {reinterpret_cast<const char*>(this) + sizeof(node), key_len};
  }
  void* state() { return reinterpret_cast<char*>(this) + state_offset(key_len); }
  // Each state starts with its expiry: deciders write it under the lock, the sweep reads it
  // without (and checks again under the lock before it erases).
  std::atomic<std::int64_t>& expires() { return *static_cast<std::atomic<std::int64_t>*>(state()); }

  static constexpr std::size_t state_offset(std::size_t key_len) {
    return (sizeof(node) + key_len + 7) & ~std::size_t{7};
  }

  // Takes the lock and returns true, or returns false (not locked) when the node is dead.
  // Test-and-test-and-set with exponential backoff; it yields the CPU after a while, since
  // with more threads than cores the holder may have been preempted.
  bool lock() noexcept {
    for (unsigned round = 0;; ++round) {
      std::uint8_t w = word.load(std::memory_order_acquire);
      if ((w & kDead) != 0) return false;
      if ((w & kLocked) == 0) {
        if (word.compare_exchange_weak(w, kLocked, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
          return true;
        }
        continue;
      }
      if (round < 12) {
        for (unsigned i = 0, n = 1u << std::min(round, 6u); i < n; ++i) cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }
  void unlock() noexcept { word.store(0, std::memory_order_release); }
  // Marks the node dead and unlocks it; the caller holds its lock and its shard's.
  void kill() noexcept { word.store(kDead, std::memory_order_release); }
};
static_assert(sizeof(node) == 4);

struct gcra_body {
  std::atomic<std::int64_t> expires_at;  // the theoretical arrival time, µs
};
struct counter_body {
  std::atomic<std::int64_t> expires_at;
  std::int64_t window_start;
  std::int64_t previous;
  std::int64_t current;
};
struct log_body {
  std::atomic<std::int64_t> expires_at;
  sliding_log_state log;
};
static_assert(sizeof(gcra_body) == 8 && sizeof(counter_body) == 32 && sizeof(log_body) == 48);

template <class Body>
Body& body(node* n) {
  return *std::launder(static_cast<Body*>(n->state()));
}

constexpr std::size_t state_size(algorithm a) {
  switch (a) {
    case algorithm::gcra:
      return sizeof(gcra_body);
    case algorithm::sliding_counter:
      return sizeof(counter_body);
    case algorithm::sliding_log:
      return sizeof(log_body);
  }
  return sizeof(gcra_body);
}

std::size_t node_bytes(algorithm a, std::size_t key_len) {
  return node::state_offset(key_len) + state_size(a);
}

std::uint64_t hash_of(std::string_view key) { return std::hash<std::string_view>{}(key); }

// A slot's control byte: 0 when empty, else 0x80 | the hash's top 7 bits (the slot index
// uses its low bits and the shard the middle ones).
constexpr std::uint8_t kEmpty = 0;
std::uint8_t control(std::uint64_t hash) { return static_cast<std::uint8_t>(0x80 | (hash >> 57)); }

// The slot arrays of one table, in one allocation. Readers may still use a table after a
// resize has replaced it, so it is freed after a grace period like a node.

// Returns `bytes` from the global operator new, or nullptr when memory runs out. Not the
// nothrow form: a program may replace operator new and delete without it (one of the tests
// does), and a sanitizer's nothrow new does not go through the replacement, so the delete
// that follows would not match it.
void* allocate(std::size_t bytes) noexcept {
  try {
    return ::operator new(bytes);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}

struct table {
  std::size_t capacity;  // a power of two
  table* next_retired = nullptr;

  std::atomic<node*>* slots() { return reinterpret_cast<std::atomic<node*>*>(this + 1); }
  std::atomic<std::uint8_t>* ctrl() {
    return reinterpret_cast<std::atomic<std::uint8_t>*>(slots() + capacity);
  }

  // Returns an empty table, or nullptr when memory runs out.
  static table* make(std::size_t capacity) noexcept {
    const std::size_t bytes = sizeof(table) + capacity * (sizeof(std::atomic<node*>) + 1);
    void* p = allocate(bytes);
    if (p == nullptr) return nullptr;
    auto* t = new (p) table{capacity};
    for (std::size_t i = 0; i < capacity; ++i) {
      new (&t->slots()[i]) std::atomic<node*>(nullptr);
      new (&t->ctrl()[i]) std::atomic<std::uint8_t>(kEmpty);
    }
    return t;
  }
  static void free(table* t) noexcept { ::operator delete(t); }
};

constexpr std::size_t kSweepPerInsert = 2;  // slots checked for expiry per new key
constexpr std::size_t kEvictionSample = 8;  // occupied slots compared when at the cap
constexpr std::size_t kMinCapacity = 16;
constexpr std::size_t kRetireBatch = 64;  // erased nodes handed to call_rcu at once

}  // namespace

struct shard;

namespace {

// Erased nodes and replaced tables of one shard, freed together after a grace period: one
// rcu_head per batch rather than 16 bytes in every node.
struct retired_batch {
  rcu_head head;
  shard* owner;
  node* nodes;
  table* tables;
};
void free_batch(rcu_head* head);

}  // namespace

// An open-addressing table (linear probing, one control byte per slot, backward-shift
// deletion). Decisions read it without a lock (`find`); everything that changes it holds
// `mu`. Nodes come from a pool under `mu`, so a key costs its node plus about 9 bytes of
// table per slot. `tab` lies alone in the first cache line, which only a resize writes; the
// writers' fields follow on their own lines.
struct alignas(64) shard {
  std::atomic<table*> tab{nullptr};

  alignas(64) std::mutex mu;
  table* t = nullptr;        // == tab, for writers
  std::size_t capacity = 0;  // t's, or 0
  std::size_t size = 0;
  std::size_t cap_keys = 0;
  std::size_t cursor = 0;  // where the incremental sweep resumes
  std::uint64_t expired = 0;
  std::uint64_t evicted = 0;
  node* retired_nodes = nullptr;  // linked through their state, not yet handed to call_rcu
  std::size_t retired_count = 0;
  table* retired_tables = nullptr;
  bool used_rcu = false;  // some batch went to call_rcu: the destructor waits for them
  // Chunks of at most 256 blocks: the default geometric growth leaves half a chunk unused
  // on average, which at a million keys costs more than the nodes themselves.
  std::pmr::unsynchronized_pool_resource pool{std::pmr::pool_options{256, 0}};

  // Runs once no reader can hold any of the shard's nodes (the store waited for call_rcu).
  ~shard() {
    tsan_acquire(&grace_token);
    free_nodes(retired_nodes);
    free_tables(retired_tables);
    if (t == nullptr) return;
    for (std::size_t i = 0; i < capacity; ++i) {
      if (node* n = slot(i); n != nullptr) {
        destroy_state(n);
        deallocate(n);
      }
    }
    table::free(t);
  }

  // Returns the node of `key`, or nullptr. Lock-free: for use inside a read-side section.
  // It may miss a present key while a writer shifts entries (never find a wrong one), so a
  // miss must be confirmed under `mu`.
  node* find(std::string_view key, std::uint64_t hash) const {
    table* tb = tab.load(std::memory_order_acquire);
    if (tb == nullptr) return nullptr;
    const std::size_t mask = tb->capacity - 1;
    const std::uint8_t tag = control(hash);
    std::atomic<std::uint8_t>* ctrl = tb->ctrl();
    std::atomic<node*>* slots = tb->slots();
    std::size_t i = hash & mask;
    for (std::size_t k = 0; k < tb->capacity; ++k, i = (i + 1) & mask) {
      const std::uint8_t c = ctrl[i].load(std::memory_order_acquire);
      if (c == kEmpty) return nullptr;
      if (c != tag) continue;
      node* n = slots[i].load(std::memory_order_acquire);
      if (n != nullptr && n->key() == key) return n;
    }
    return nullptr;
  }

  // The writers' view, under `mu`.
  std::size_t mask() const { return capacity - 1; }
  std::uint8_t ctrl_at(std::size_t i) const { return t->ctrl()[i].load(std::memory_order_relaxed); }
  node* slot(std::size_t i) const { return t->slots()[i].load(std::memory_order_relaxed); }
  // Publishes (or moves) an entry: the slot before the control byte, so a reader that sees
  // the control byte sees the node.
  void set(std::size_t i, std::uint8_t c, node* n) {
    t->slots()[i].store(n, std::memory_order_release);
    t->ctrl()[i].store(c, std::memory_order_release);
  }
  void clear(std::size_t i) {
    t->ctrl()[i].store(kEmpty, std::memory_order_release);
    t->slots()[i].store(nullptr, std::memory_order_release);
  }

  // Returns the slot holding `key`, or the empty slot where it would go. Exact: under `mu`.
  std::size_t probe(std::string_view key, std::uint64_t hash) const {
    const std::uint8_t tag = control(hash);
    std::size_t i = hash & mask();
    for (std::uint8_t c; (c = ctrl_at(i)) != kEmpty; i = (i + 1) & mask()) {
      if (c == tag && slot(i)->key() == key) return i;
    }
    return i;
  }

  // Returns the node of `key` (under `mu`), or nullptr.
  node* lookup(std::string_view key, std::uint64_t hash) const {
    return capacity == 0 ? nullptr : slot(probe(key, hash));
  }

  // Returns a fresh node for `key`, or nullptr when memory runs out.
  node* create(std::string_view key, algorithm a) noexcept {
    void* p = nullptr;
    try {
      p = pool.allocate(node_bytes(a, key.size()), alignof(std::int64_t));
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    auto* n = new (p) node{};
    n->algo = a;
    n->key_len = static_cast<std::uint16_t>(key.size());
    std::memcpy(reinterpret_cast<char*>(n) + sizeof(node), key.data(), key.size());
    switch (a) {
      case algorithm::gcra:
        new (n->state()) gcra_body{0};
        break;
      case algorithm::sliding_counter:
        new (n->state()) counter_body{0, 0, 0, 0};
        break;
      case algorithm::sliding_log:
        // Entries are allocated under the node's lock only, by threads deciding on other
        // keys of the shard at the same time: from a thread-safe resource.
        new (n->state()) log_body{0, sliding_log_state{std::pmr::new_delete_resource()}};
        break;
    }
    return n;
  }

  static void destroy_state(node* n) noexcept {
    if (n->algo == algorithm::sliding_log) body<log_body>(n).~log_body();
  }
  void deallocate(node* n) noexcept {
    pool.deallocate(n, node_bytes(n->algo, n->key_len), alignof(std::int64_t));
  }

  static node* next_retired(node* n) {
    node* next;
    std::memcpy(&next, n->state(), sizeof next);
    return next;
  }
  void free_nodes(node* n) noexcept {
    while (n != nullptr) {
      node* next = next_retired(n);
      deallocate(n);
      n = next;
    }
  }
  static void free_tables(table* tb) noexcept {
    while (tb != nullptr) {
      table* next = tb->next_retired;
      table::free(tb);
      tb = next;
    }
  }

  // Queues a dead node, already unlinked, for freeing after a grace period. No decision
  // reads a dead node's state, so its state now holds the queue's link.
  void retire(node* n) noexcept {
    destroy_state(n);
    std::memcpy(n->state(), &retired_nodes, sizeof retired_nodes);
    retired_nodes = n;
    ++retired_count;
  }

  // Hands the queued nodes and tables to call_rcu once there are enough (or a table, which
  // is large). Under `mu`; call_rcu never waits for a grace period.
  void maybe_flush() noexcept {
    if (retired_tables == nullptr && retired_count < kRetireBatch) return;
    void* p = allocate(sizeof(retired_batch));
    if (p == nullptr) return;  // tried again at the next flush; the destructor frees the rest
    auto* b = new (p) retired_batch{{}, this, retired_nodes, retired_tables};
    retired_nodes = nullptr;
    retired_count = 0;
    retired_tables = nullptr;
    used_rcu = true;
    tsan_release(b);
    urcu_memb_call_rcu(&b->head, free_batch);
  }

  std::size_t home(std::size_t i) const { return hash_of(slot(i)->key()) & mask(); }

  // Erases the node at slot `i`: marks it dead under its lock (a decision holding it
  // finishes first; `locked`: the caller holds it already), then shifts later entries of its
  // run back (Knuth's algorithm R), so lookups never need tombstones. A reader racing the
  // shift may miss an entry, never see a wrong one: each slot it reads holds a live or a
  // retired node.
  void erase_at(std::size_t i, bool locked = false) {
    node* const n = slot(i);
    if (!locked) n->lock();  // in the table, so not dead
    n->kill();
    for (std::size_t j = i;;) {
      j = (j + 1) & mask();
      if (ctrl_at(j) == kEmpty) break;
      const std::size_t h = home(j);
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      set(i, ctrl_at(j), slot(j));
      i = j;
    }
    clear(i);
    --size;
    retire(n);
  }

  // Erases the node at slot `i` if it has expired at `now`, as its lock shows. Returns
  // whether it did.
  bool erase_if_expired(std::size_t i, std::int64_t now) {
    node* const n = slot(i);
    if (n->expires().load(std::memory_order_relaxed) > now) return false;
    n->lock();
    if (n->expires().load(std::memory_order_relaxed) > now) {  // a decision just renewed it
      n->unlock();
      return false;
    }
    erase_at(i, /*locked=*/true);  // under the same lock: no decision renews it in between
    return true;
  }

  bool resize(std::size_t new_capacity) {
    table* nt = table::make(new_capacity);
    if (nt == nullptr) return false;
    const std::size_t new_mask = new_capacity - 1;
    for (std::size_t i = 0; i < capacity; ++i) {
      node* n = slot(i);
      if (n == nullptr) continue;
      std::size_t j = hash_of(n->key()) & new_mask;
      while (nt->ctrl()[j].load(std::memory_order_relaxed) != kEmpty) j = (j + 1) & new_mask;
      nt->ctrl()[j].store(ctrl_at(i), std::memory_order_relaxed);
      nt->slots()[j].store(n, std::memory_order_relaxed);
    }
    tab.store(nt, std::memory_order_release);
    if (t != nullptr) {
      t->next_retired = retired_tables;
      retired_tables = t;
    }
    t = nt;
    capacity = new_capacity;
    cursor = 0;
    return true;
  }

  // Gives table memory back once most keys are gone.
  void maybe_shrink() {
    if (capacity > 64 && size * 8 < capacity) resize(capacity / 2);
  }

  // Checks `count` slots from the sweep cursor and drops the expired ones. An erase shifts
  // the next key of the run into the slot, so the slot is checked again before moving on.
  std::size_t sweep(std::int64_t now, std::size_t count) {
    std::size_t dropped = 0;
    for (std::size_t k = 0; k < count && size > 0; ++k) {
      if (ctrl_at(cursor) != kEmpty && erase_if_expired(cursor, now)) {
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
      while (ctrl_at(i) != kEmpty && erase_if_expired(i, now)) ++dropped;
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
    std::int64_t victim_expiry = 0;
    std::size_t seen = 0;
    for (std::size_t k = 0; k < capacity && seen < kEvictionSample; ++k) {
      cursor = (cursor + 1) & mask();
      if (ctrl_at(cursor) == kEmpty) continue;
      ++seen;
      const std::int64_t e = slot(cursor)->expires().load(std::memory_order_relaxed);
      if (victim == capacity || e < victim_expiry) {
        victim = cursor;
        victim_expiry = e;
      }
    }
    if (victim == capacity) return;
    if (erase_if_expired(victim, now)) {
      ++expired;
    } else {
      ++evicted;
      erase_at(victim);
    }
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
    return resize(std::max(kMinCapacity, capacity * 2));
  }

  // Inserts a fresh node for `key` (absent), or returns nullptr when memory runs out.
  node* insert(std::string_view key, std::uint64_t hash, algorithm a, std::int64_t now) {
    if (!reserve_one(now)) return nullptr;
    node* n = create(key, a);
    if (n == nullptr) return nullptr;
    set(probe(key, hash), control(hash), n);
    ++size;
    return n;
  }
};

namespace {

void free_batch(rcu_head* head) {
  auto* b = reinterpret_cast<retired_batch*>(head);  // `head` is its first member
  tsan_acquire(b);
  tsan_acquire(&grace_token);
  {
    std::lock_guard lock(b->owner->mu);
    b->owner->free_nodes(b->nodes);
  }
  shard::free_tables(b->tables);
  delete b;
  tsan_release(&barrier_token);
}

// A shard's mutex, taken on demand; on release it hands what the writer retired to
// call_rcu. The thread must be registered with RCU before it takes the mutex: registering
// waits for a grace period, which may wait for a reader that waits for this mutex.
class shard_lock {
 public:
  explicit shard_lock(shard& s) : s_(s) {}
  ~shard_lock() {
    if (!held_) return;
    s_.maybe_flush();
    s_.mu.unlock();
  }
  shard_lock(const shard_lock&) = delete;
  shard_lock& operator=(const shard_lock&) = delete;

  void lock() {
    if (held_) return;
    s_.mu.lock();
    held_ = true;
  }

 private:
  shard& s_;
  bool held_ = false;
};

}  // namespace

struct memory_store::impl {
  memory_store_options options;
  std::unique_ptr<shard[]> shards;
  std::size_t shard_mask = 0;

  // Snapshots.
  std::uint64_t loaded = 0;  // set before any other thread sees the store
  std::atomic<std::uint64_t> snapshots{0};
  std::atomic<std::uint64_t> snapshot_failures{0};
  std::mutex write_mu;  // one write at a time
  mutable std::mutex status_mu;
  std::string last_failure;  // empty after a good write; under status_mu
  std::chrono::steady_clock::time_point last_warning{};
  std::uint64_t quiet_failures = 0;  // failures not warned about since the last warning
  std::mutex wake_mu;
  std::condition_variable wake;
  bool stopping = false;  // under wake_mu
  std::thread writer;

  explicit impl(memory_store_options o) : options(std::move(o)) {
    const std::size_t n = std::bit_ceil(std::max<std::size_t>(1, options.shards));
    options.shards = n;
    options.max_key_length =
        std::min<std::size_t>(options.max_key_length, std::numeric_limits<std::uint16_t>::max());
    if (options.time_source == nullptr) options.time_source = &system_clock();
    shards = std::make_unique<shard[]>(n);
    shard_mask = n - 1;
    const std::size_t per_shard = options.max_keys == 0 ? std::numeric_limits<std::size_t>::max()
                                                        : (options.max_keys + n - 1) / n;
    for (std::size_t i = 0; i <= shard_mask; ++i) shards[i].cap_keys = per_shard;
  }

  // Waits for the batches handed to call_rcu (their callbacks lock the shards and free into
  // their pools) before the shards go.
  ~impl() {
    bool used = false;
    for (std::size_t i = 0; i <= shard_mask; ++i) used = used || shards[i].used_rcu;
    if (used) {
      ensure_registered();
      urcu_memb_barrier();
      tsan_acquire(&barrier_token);
    }
  }

  shard& shard_for(std::uint64_t hash) const { return shards[(hash >> 32) & shard_mask]; }

  void warn(const std::string& message) const {
    if (options.warn) options.warn(message);
  }

  std::string quoted_path() const { return "snapshot \"" + options.snapshot_path + "\""; }

  // Returns the whole snapshot file in `bytes`; false (and no error) when there is none.
  result<bool> read_file(std::string& bytes) const {
    const int fd = ::open(options.snapshot_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return false;
      return make_error(errc::store_error,
                        quoted_path() + ": cannot open: " + std::generic_category().message(errno));
    }
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        return make_error(errc::store_error,
                          quoted_path() + ": cannot read: " + std::generic_category().message(err));
      }
      bytes.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return true;
  }

  // Loads the snapshot, if there is one, into this (empty) store. Keys expired at the time
  // source's `now`, and keys longer than max_key_length, are dropped; max_keys holds as for
  // any insert.
  result<void> load() {
    std::string bytes;
    auto present = read_file(bytes);
    if (!present) return fail(present.error());
    if (!*present) return {};
    const std::int64_t now = options.time_source->now().count();
    ensure_registered();
    auto info = internal::read_snapshot(
        bytes, [&](const internal::snapshot_record& r) { return load_record(r, now); });
    if (!info) return fail(error{info.error().code, quoted_path() + ": " + info.error().detail});
    if (info->written_at > now + 1'000'000) {
      warn(quoted_path() + " was written " + std::to_string((info->written_at - now) / 1'000'000) +
           " s after the store's clock says it is now: the clock stepped back, so its keys stay "
           "limited for that much longer");
    }
    return {};
  }

  result<void> load_record(const internal::snapshot_record& r, std::int64_t now) {
    if (r.expires_at <= now || r.key.size() > options.max_key_length) return {};
    const std::uint64_t hash = hash_of(r.key);
    shard& s = shard_for(hash);
    shard_lock held(s);
    held.lock();
    if (s.lookup(r.key, hash) != nullptr) {
      return make_error(errc::invalid_snapshot, "corrupt: a key is written twice");
    }
    node* n = s.insert(r.key, hash, r.algo, now);
    if (n == nullptr) return make_error(errc::store_full, "memory store: out of memory");
    switch (r.algo) {
      case algorithm::gcra:
        break;
      case algorithm::sliding_counter: {
        auto& c = body<counter_body>(n);
        c.window_start = r.window_start;
        c.previous = r.previous;
        c.current = r.current;
        break;
      }
      case algorithm::sliding_log: {
        auto& g = body<log_body>(n);
        for (const auto& e : r.entries) {
          if (!g.log.push_back(e.at, e.count)) {
            return make_error(errc::store_full, "memory store: out of memory");
          }
        }
        break;
      }
    }
    n->expires().store(r.expires_at, std::memory_order_relaxed);
    ++loaded;
    return {};
  }

  // Writes every live key, one shard at a time: under the shard's mutex (inserts and
  // erasures on it wait) each node is locked for as long as its state takes to copy, then
  // the shard's records go to the file with no lock held.
  result<std::size_t> write_file() {
    const std::int64_t now = options.time_source->now().count();
    internal::snapshot_writer out(options.snapshot_path);
    if (auto ok = out.begin(now); !ok) return fail(ok.error());
    ensure_registered();
    std::string records;
    internal::snapshot_record r;
    std::size_t total = 0;
    for (std::size_t i = 0; i <= shard_mask; ++i) {
      shard& s = shards[i];
      records.clear();
      std::size_t count = 0;
      {
        shard_lock held(s);
        held.lock();
        for (std::size_t j = 0; j < s.capacity; ++j) {
          node* n = s.slot(j);
          if (n == nullptr) continue;
          n->lock();  // in the table, under the shard's mutex: not dead
          copy_state(n, r);
          if (r.expires_at > now) {
            r.key = n->key();
            internal::append_record(records, r);
            ++count;
          }
          n->unlock();
        }
      }
      if (auto ok = out.append(records, count); !ok) return fail(ok.error());
      total += count;
    }
    if (auto ok = out.commit(); !ok) return fail(ok.error());
    return total;
  }

  // Copies the state of `n`, locked, into `r`.
  static void copy_state(node* n, internal::snapshot_record& r) {
    r.algo = n->algo;
    r.expires_at = n->expires().load(std::memory_order_relaxed);
    r.entries.clear();
    if (n->algo == algorithm::sliding_counter) {
      const auto& c = body<counter_body>(n);
      r.window_start = c.window_start;
      r.previous = c.previous;
      r.current = c.current;
    } else if (n->algo == algorithm::sliding_log) {
      const auto& log = body<log_body>(n).log;
      for (std::size_t k = 0; k < log.size(); ++k) r.entries.push_back(log[k]);
    }
  }

  result<std::size_t> write_snapshot() {
    if (options.snapshot_path.empty()) {
      return make_error(errc::store_error, "memory store: no snapshot path configured");
    }
    const std::lock_guard one_write(write_mu);
    auto written = write_file();
    std::string text;  // a warning to give, after the status lock
    {
      const std::lock_guard lock(status_mu);
      if (written) {
        snapshots.fetch_add(1, std::memory_order_relaxed);
        last_failure.clear();
        return written;
      }
      snapshot_failures.fetch_add(1, std::memory_order_relaxed);
      last_failure = "last snapshot write failed: " + written.error().message();
      const auto t = std::chrono::steady_clock::now();
      if (last_warning == std::chrono::steady_clock::time_point{} ||
          t - last_warning >= std::chrono::seconds(10)) {
        text = "memory store: " + written.error().message();
        if (quiet_failures > 0) {
          text +=
              " (" + std::to_string(quiet_failures) + " more failed writes since the last warning)";
        }
        text += "; decisions go on, and a restart now would load an older snapshot";
        last_warning = t;
        quiet_failures = 0;
      } else {
        ++quiet_failures;
      }
    }
    if (!text.empty()) warn(text);
    return written;
  }

  void start_writer() {
    if (options.snapshot_path.empty() || options.snapshot_interval.count() <= 0) return;
    writer = std::thread([this] {
      std::unique_lock lock(wake_mu);
      while (!wake.wait_for(lock, options.snapshot_interval, [this] { return stopping; })) {
        lock.unlock();
        (void)write_snapshot();  // counted and warned about there
        lock.lock();
      }
    });
  }

  // Stops the writer and writes the last snapshot.
  void stop_snapshots() {
    if (options.snapshot_path.empty()) return;
    {
      const std::lock_guard lock(wake_mu);
      stopping = true;
    }
    wake.notify_all();
    if (writer.joinable()) writer.join();
    (void)write_snapshot();
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

  // Returns `key`'s node, locked, or nullptr when the shard holds none. Lock-free when the
  // node is found live; else it takes `held` and looks again exactly. Inside a read-side
  // section.
  static node* find_locked(shard& s, std::string_view key, std::uint64_t hash, shard_lock& held) {
    if (node* n = s.find(key, hash); n != nullptr && n->lock()) return n;
    held.lock();
    node* n = s.lookup(key, hash);
    if (n != nullptr) n->lock();  // in the table, under the shard's lock: not dead
    return n;
  }

  result<decision> decide(const request& r, mode m) {
    if (r.key.empty() || r.key.size() > options.max_key_length)
      return fail(check_key(r.key).error());
    const microseconds now = r.now ? *r.now : options.time_source->now();
    if (!request_in_range(r.limit, r.cost, now))
      return fail(check_request(r.limit, r.cost, now).error());

    const std::uint64_t hash = hash_of(r.key);
    shard& s = shard_for(hash);
    read_section section;
    shard_lock held(s);
    if (node* n = find_locked(s, r.key, hash, held); n != nullptr) {
      if (n->algo == r.algorithm) {
        const decision d = decide_node(n, r.algorithm, r.limit, now, r.cost, m);
        n->unlock();
        return d;
      }
      n->unlock();
    }
    // Absent, or last limited by another algorithm, whose state means nothing here.
    if (m == mode::peek) return decide_fresh(r.algorithm, r.limit, now, r.cost, m);
    held.lock();
    return acquire_locked(s, hash, r, now);
  }

  // Acquires on `r.key` under its shard's lock: replaces a node of another algorithm and
  // creates an absent key (an acquire on a fresh key is always admitted, cost ≤ count).
  static result<decision> acquire_locked(shard& s, std::uint64_t hash, const request& r,
                                         microseconds now) {
    node* n = nullptr;
    if (s.capacity != 0) {
      const std::size_t i = s.probe(r.key, hash);
      n = s.slot(i);
      if (n != nullptr && n->algo != r.algorithm) {
        s.erase_at(i);
        n = nullptr;
      }
    }
    if (n == nullptr) {
      n = s.insert(r.key, hash, r.algorithm, now.count());
      if (n == nullptr) return make_error(errc::store_full, "memory store: out of memory");
    }
    n->lock();
    const decision d = decide_node(n, r.algorithm, r.limit, now, r.cost, mode::acquire);
    n->unlock();
    return d;
  }

  // The decisions of `acquire_all`: every shard involved is locked (in address order, so
  // two calls never wait on each other), then the nodes of the keys present (in address
  // order; deciders hold one node at a time and writers hold its shard first). Each key is
  // peeked, and only when all are allowed are they acquired, under the same locks and `now`,
  // so the answers are the same. Keys absent (or kept by another algorithm) are created
  // last, after the nodes are unlocked: nobody else can create them while the shards stay
  // locked, and creating may sweep or evict other nodes.
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
    ensure_registered();
    std::vector<std::unique_ptr<shard_lock>> shard_locks;
    shard_locks.reserve(locked.size());
    for (shard* s : locked) {
      shard_locks.push_back(std::make_unique<shard_lock>(*s));
      shard_locks.back()->lock();
    }

    // The nodes present with the requested algorithm; nullptr where absent.
    std::vector<node*> nodes(merged->size(), nullptr);
    for (std::size_t g = 0; g < merged->size(); ++g) {
      node* n = shard_for(hashes[g]).lookup((*merged)[g].key, hashes[g]);
      if (n != nullptr && n->algo == (*merged)[g].algorithm) nodes[g] = n;
    }
    std::vector<node*> by_address;
    for (node* n : nodes) {
      if (n != nullptr) by_address.push_back(n);
    }
    std::sort(by_address.begin(), by_address.end());
    for (node* n : by_address) n->lock();  // present under the shard locks: not dead

    std::vector<decision> per_key;
    per_key.reserve(merged->size());
    bool all = true;
    for (std::size_t g = 0; g < merged->size(); ++g) {
      const request& r = (*merged)[g];
      const std::int64_t cost = std::max<std::int64_t>(r.cost, 1);  // a check asks for one
      const decision d = nodes[g] != nullptr
                             ? decide_node(nodes[g], r.algorithm, r.limit, *r.now, cost, mode::peek)
                             : decide_fresh(r.algorithm, r.limit, *r.now, cost, mode::peek);
      all = all && d.allowed;
      per_key.push_back(d);
    }
    if (all) {
      for (std::size_t g = 0; g < merged->size(); ++g) {
        const request& r = (*merged)[g];
        if (r.cost == 0 || nodes[g] == nullptr) continue;  // only checked, or created below
        per_key[g] = decide_node(nodes[g], r.algorithm, r.limit, *r.now, r.cost, mode::acquire);
      }
    }
    for (node* n : by_address) n->unlock();
    if (all) {
      for (std::size_t g = 0; g < merged->size(); ++g) {
        const request& r = (*merged)[g];
        if (r.cost == 0 || nodes[g] != nullptr) continue;
        auto d = acquire_locked(shard_for(hashes[g]), hashes[g], r, *r.now);
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
    read_section section;
    shard_lock held(s);
    node* n = find_locked(s, r.key, hash, held);
    if (n != nullptr && n->algo == r.algorithm) {
      refund_node(n, r.algorithm, r.limit, now, r.cost);
      const decision d = decide_node(n, r.algorithm, r.limit, now, 1, mode::peek);
      n->unlock();
      return d;
    }
    if (n != nullptr) n->unlock();  // kept by another algorithm: left alone
    return decide_fresh(r.algorithm, r.limit, now, 1, mode::peek);
  }

  // Gives back up to `cost` units of the node's state, in place, and updates its expiry.
  static void refund_node(node* n, algorithm a, const limit& l, microseconds now,
                          std::int64_t cost) {
    switch (a) {
      case algorithm::gcra: {
        auto& g = body<gcra_body>(n);
        gcra_state st{microseconds{g.expires_at.load(std::memory_order_relaxed)}};
        gcra_refund(st, l, now, cost);
        g.expires_at.store(expiry(st).count(), std::memory_order_relaxed);
        return;
      }
      case algorithm::sliding_counter: {
        auto& c = body<counter_body>(n);
        counter_state st{microseconds{c.window_start}, c.previous, c.current};
        sliding_counter_refund(st, l, now, cost);
        c.expires_at.store(expiry(st, l).count(), std::memory_order_relaxed);
        c.window_start = st.window_start.count();
        c.previous = st.previous;
        c.current = st.current;
        return;
      }
      case algorithm::sliding_log:
        break;
    }
    auto& g = body<log_body>(n);
    sliding_log_refund(g.log, l, now, cost);
    g.expires_at.store(expiry(g.log, l).count(), std::memory_order_relaxed);
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

  // Runs the node's algorithm on its state in place and updates its expiry. The caller
  // holds the node's lock.
  static decision decide_node(node* n, algorithm a, const limit& l, microseconds now,
                              std::int64_t cost, mode m) {
    switch (a) {
      case algorithm::gcra: {
        auto& g = body<gcra_body>(n);
        gcra_state st{microseconds{g.expires_at.load(std::memory_order_relaxed)}};
        const decision d = gcra_decide(st, l, now, cost, m);
        g.expires_at.store(expiry(st).count(), std::memory_order_relaxed);
        return d;
      }
      case algorithm::sliding_counter: {
        auto& c = body<counter_body>(n);
        counter_state st{microseconds{c.window_start}, c.previous, c.current};
        const decision d = sliding_counter_decide(st, l, now, cost, m);
        c.expires_at.store(expiry(st, l).count(), std::memory_order_relaxed);
        c.window_start = st.window_start.count();
        c.previous = st.previous;
        c.current = st.current;
        return d;
      }
      case algorithm::sliding_log:
        break;
    }
    auto& g = body<log_body>(n);
    const decision d = sliding_log_decide(g.log, l, now, cost, m);
    g.expires_at.store(expiry(g.log, l).count(), std::memory_order_relaxed);
    return d;
  }
};

memory_store::memory_store(memory_store_options options)
    : impl_(std::make_unique<impl>(std::move(options))) {
  if (!impl_->options.snapshot_path.empty()) {
    auto ok = impl_->load();
    if (!ok) throw std::runtime_error(ok.error().message());
  }
  impl_->start_writer();
}

memory_store::memory_store(std::unique_ptr<impl> i) : impl_(std::move(i)) { impl_->start_writer(); }

result<std::unique_ptr<memory_store>> memory_store::open(memory_store_options options) {
  auto i = std::make_unique<impl>(options);
  if (!options.snapshot_path.empty()) {
    auto ok = i->load();
    if (!ok) {
      if (!options.snapshot_empty_on_error || ok.error().code != errc::invalid_snapshot) {
        return fail(ok.error());
      }
      // Kept for a post-mortem: the next write would replace it.
      const std::string kept = options.snapshot_path + ".bad";
      const bool moved = ::rename(options.snapshot_path.c_str(), kept.c_str()) == 0;
      i = std::make_unique<impl>(options);
      i->warn(ok.error().message() + "; starting with an empty store (snapshot_on_error=empty)" +
              (moved ? ", the file kept as \"" + kept + "\"" : ""));
    }
  }
  return std::unique_ptr<memory_store>(new memory_store(std::move(i)));
}

memory_store::~memory_store() { impl_->stop_snapshots(); }

result<std::size_t> memory_store::write_snapshot() { return impl_->write_snapshot(); }

store_health memory_store::health() const {
  store_health h;
  const std::lock_guard lock(impl_->status_mu);
  h.detail = impl_->last_failure;
  return h;
}

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
  ensure_registered();
  shard_lock held(s);
  held.lock();
  if (s.capacity == 0) return {};
  const std::size_t i = s.probe(key, hash);
  if (s.ctrl_at(i) != kEmpty) s.erase_at(i);
  return {};
}

std::string memory_store::describe() const {
  const memory_store_options& o = impl_->options;
  std::string out = "memory://?shards=" + std::to_string(o.shards) +
                    "&max_keys=" + std::to_string(o.max_keys) +
                    "&max_key_length=" + std::to_string(o.max_key_length);
  if (!o.snapshot_path.empty()) {
    out += "&snapshot=" + o.snapshot_path + "&snapshot_interval=" +
           (o.snapshot_interval.count() == 0
                ? std::string("0")
                : format_duration(std::chrono::duration_cast<microseconds>(o.snapshot_interval)));
  }
  return out;
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
  if (impl_->options.snapshot_path.empty()) return;
  visit({"sluice_memory_snapshots_total",
         "Snapshots of the memory store written.",
         store_metric::kind::counter,
         {},
         {},
         s.snapshots});
  visit({"sluice_memory_snapshot_failures_total",
         "Snapshot writes of the memory store that failed (the state on disk is older).",
         store_metric::kind::counter,
         {},
         {},
         s.snapshot_failures});
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
  out.snapshots = impl_->snapshots.load(std::memory_order_relaxed);
  out.snapshot_failures = impl_->snapshot_failures.load(std::memory_order_relaxed);
  out.loaded = impl_->loaded;
  return out;
}

std::size_t memory_store::purge_expired(std::chrono::microseconds now) {
  ensure_registered();
  std::size_t dropped = 0;
  for (std::size_t i = 0; i <= impl_->shard_mask; ++i) {
    shard_lock held(impl_->shards[i]);
    held.lock();
    dropped += impl_->shards[i].purge(now.count());
  }
  return dropped;
}

}  // namespace sluice
