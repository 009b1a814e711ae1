// Tests of the memory store's snapshots: round trips for each algorithm against a store that
// was never restarted, expiry and max_keys on load, every kind of bad file refused (or
// skipped when the operator says so), periodic writes, failed writes, the URI parameters,
// and decisions racing snapshot writes.
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/limit.h"
#include "sluice/memory_store.h"
#include "sluice/open_store.h"
#include "sluice/store.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
using sluice::algorithm;
using sluice::errc;
using sluice::memory_store;
using sluice::memory_store_options;
using sluice::test::all_algorithms;
using sluice::test::make;
using sluice::test::must;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr microseconds kStart = seconds(1'700'000'000);

// A fresh directory for one test, removed with everything in it afterwards.
class temp_dir {
 public:
  temp_dir() {
    path_ = fs::temp_directory_path() / ("sluice-snapshot-test-" + std::to_string(::getpid()) +
                                         "-" + std::to_string(serial_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  static inline int serial_ = 0;
  fs::path path_;
};

memory_store_options with_snapshot(const std::string& path, const sluice::clock& c) {
  memory_store_options o;
  o.shards = 4;
  o.time_source = &c;
  o.snapshot_path = path;
  o.snapshot_interval = milliseconds(0);  // only when destroyed, unless a test says otherwise
  return o;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

sluice::request req(std::string_view key, const sluice::limit& l, algorithm a,
                    std::int64_t cost = 1) {
  return sluice::request{key, l, a, cost, std::nullopt};
}

// Writes a snapshot of a store holding a few keys of every algorithm; returns its bytes.
std::string sample_snapshot(const temp_dir& dir, const sluice::clock& c) {
  const std::string path = dir.file("sample.snap");
  {
    memory_store s(with_snapshot(path, c));
    for (const algorithm a : all_algorithms) {
      for (int k = 0; k < 5; ++k) {
        const std::string key = std::string(to_string(a)) + ":" + std::to_string(k);
        (void)must(s.acquire(req(key, make(10, seconds(60)), a, 3)));
      }
    }
  }
  return read_all(path);
}

// Verifies that for each algorithm, decisions after the store is destroyed and opened again
// from its snapshot equal those of a store that was never restarted, on the same requests
// and the same manual clock.
TEST(MemorySnapshot, RoundTripKeepsEveryAlgorithmsDecisions) {
  temp_dir dir;
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(to_string(a)));
    const std::string path = dir.file(std::string(to_string(a)) + ".snap");
    sluice::manual_clock c{kStart};
    memory_store reference(memory_store_options{.shards = 4, .time_source = &c});
    auto restarted = std::make_unique<memory_store>(with_snapshot(path, c));
    std::mt19937_64 rng(7);
    const sluice::limit l = make(3, seconds(10));
    int allowed = 0;
    for (int step = 0; step < 600; ++step) {
      if (step % 100 == 50) {  // a restart, with some time passing while the store is down
        restarted.reset();
        c.advance(milliseconds(rng() % 3000));
        restarted = std::make_unique<memory_store>(with_snapshot(path, c));
      }
      const std::string key = "k" + std::to_string(rng() % 10);
      const std::int64_t cost = 1 + static_cast<std::int64_t>(rng() % 2);
      const auto r = req(key, l, a, cost);
      const sluice::decision want = must(step % 7 == 0 ? reference.peek(r) : reference.acquire(r));
      const sluice::decision got = must(step % 7 == 0 ? restarted->peek(r) : restarted->acquire(r));
      ASSERT_EQ(got, want) << "step " << step << " key " << key;
      allowed += want.allowed ? 1 : 0;
      c.advance(milliseconds(rng() % 400));
    }
    EXPECT_GT(allowed, 50);  // the sequence admits and denies: it tests something
    EXPECT_LT(allowed, 500);
    EXPECT_GT(restarted->stats().loaded, 0u);
  }
}

// Verifies that keys whose state has expired by the time the snapshot is loaded are dropped,
// and the live ones kept with their remaining budget.
TEST(MemorySnapshot, DropsKeysExpiredAtLoad) {
  temp_dir dir;
  const std::string path = dir.file("expiry.snap");
  sluice::manual_clock c{kStart};
  const sluice::limit short_window = make(3, seconds(1));
  const sluice::limit long_window = make(3, seconds(60));
  {
    memory_store s(with_snapshot(path, c));
    for (const algorithm a : all_algorithms) {
      const std::string name(to_string(a));
      (void)must(s.acquire(req("short:" + name, short_window, a, 2)));
      (void)must(s.acquire(req("long:" + name, long_window, a, 2)));
    }
  }
  c.advance(seconds(5));  // the 1 s windows are over; the 60 s ones are not
  memory_store loaded(with_snapshot(path, c));
  EXPECT_EQ(loaded.stats().loaded, 3u);
  EXPECT_EQ(loaded.stats().keys, 3u);
  for (const algorithm a : all_algorithms) {
    const std::string name(to_string(a));
    EXPECT_EQ(must(loaded.peek(req("short:" + name, short_window, a))).remaining, 3) << name;
    const sluice::decision d = must(loaded.peek(req("long:" + name, long_window, a)));
    EXPECT_LT(d.remaining, 3) << name;  // what was spent before the restart still counts
  }
}

// Verifies that max_keys holds on load: a snapshot of more keys than the cap loads at most
// the cap.
TEST(MemorySnapshot, LoadKeepsMaxKeys) {
  temp_dir dir;
  const std::string path = dir.file("cap.snap");
  sluice::manual_clock c{kStart};
  {
    memory_store s(with_snapshot(path, c));
    for (int k = 0; k < 100; ++k) {
      (void)must(s.acquire(req("k" + std::to_string(k), make(5, seconds(60)), algorithm::gcra)));
    }
  }
  memory_store_options o = with_snapshot(path, c);
  o.shards = 1;
  o.max_keys = 10;
  memory_store loaded(o);
  EXPECT_EQ(loaded.stats().keys, 10u);
}

// Verifies that a missing file is a first start: the store opens empty, and writes the file
// when destroyed.
TEST(MemorySnapshot, MissingFileStartsEmpty) {
  temp_dir dir;
  const std::string path = dir.file("none.snap");
  sluice::manual_clock c{kStart};
  {
    auto s = memory_store::open(with_snapshot(path, c));
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ((*s)->stats().keys, 0u);
    (void)must((*s)->acquire(req("a", make(5, seconds(60)), algorithm::sliding_log)));
  }
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(memory_store(with_snapshot(path, c)).stats().loaded, 1u);
}

// Verifies the trailer's checksum is XXH64 (seed 0) of every byte before it, as the format
// says (docs/DESIGN.md, "Snapshots"), and that the header says format version 2.
TEST(MemorySnapshot, ChecksumIsXxh64OfEverythingBeforeIt) {
  temp_dir dir;
  sluice::manual_clock c{kStart};
  const std::string bytes = sample_snapshot(dir, c);
  ASSERT_GT(bytes.size(), 48u);
  EXPECT_EQ(static_cast<unsigned char>(bytes[8]), 2u);
  std::uint64_t stored = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    stored |= std::uint64_t{static_cast<unsigned char>(bytes[bytes.size() - 8 + i])} << (8 * i);
  }
  EXPECT_EQ(stored, XXH64(bytes.data(), bytes.size() - 8, 0));
}

// Verifies that each kind of bad file is refused with errc::invalid_snapshot, the message
// naming the file and what is wrong, and that the constructor throws the same message.
TEST(MemorySnapshot, RefusesForeignTruncatedAndCorruptFiles) {
  temp_dir dir;
  sluice::manual_clock c{kStart};
  const std::string good = sample_snapshot(dir, c);
  ASSERT_GT(good.size(), 100u);
  struct bad_case {
    const char* name;
    std::string bytes;
    const char* says;
  };
  std::string flipped = good;
  flipped[good.size() / 2] = static_cast<char>(flipped[good.size() / 2] ^ 0x10);
  std::string version = good;
  version[8] = 9;
  std::string no_end = good;
  no_end.resize(good.size() - 30);
  const std::vector<bad_case> cases = {
      {"empty", "", "not a sluice snapshot"},
      {"foreign", "{\"keys\": []}\n", "not a sluice snapshot"},
      {"header only", good.substr(0, 30), "truncated"},
      {"cut short", no_end, "truncated"},
      {"bit flipped", flipped, "checksum mismatch"},
      {"future version", version, "format version 9"},
  };
  for (const bad_case& bc : cases) {
    SCOPED_TRACE(bc.name);
    const std::string path = dir.file("bad.snap");
    write_all(path, bc.bytes);
    auto s = memory_store::open(with_snapshot(path, c));
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, errc::invalid_snapshot);
    EXPECT_NE(s.error().message().find(path), std::string::npos) << s.error().message();
    EXPECT_NE(s.error().message().find(bc.says), std::string::npos) << s.error().message();
    EXPECT_TRUE(fs::exists(path));  // refused, left alone
    try {
      memory_store thrown(with_snapshot(path, c));
      ADD_FAILURE() << "the constructor accepted the file";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), s.error().message());
    }
    // Through the URI, as `sluice serve` opens it.
    auto via_uri = sluice::open_store("memory://?snapshot=" + path, c);
    ASSERT_FALSE(via_uri);
    EXPECT_EQ(via_uri.error().code, errc::invalid_snapshot);
  }
}

// Verifies that with snapshot_on_error=empty a corrupt file gives an empty store and a
// warning, and is kept as PATH.bad rather than overwritten.
TEST(MemorySnapshot, EmptyOnErrorStartsEmptyAndKeepsTheFile) {
  temp_dir dir;
  sluice::manual_clock c{kStart};
  const std::string path = dir.file("bad.snap");
  write_all(path, "SLUICESN but not really a snapshot at all, too short or corrupt");
  std::vector<std::string> warnings;
  sluice::open_options o;
  o.time_source = &c;
  o.warn = [&](std::string_view w) { warnings.emplace_back(w); };
  auto s = sluice::open_store("memory://?snapshot=" + path + "&snapshot_on_error=empty", o);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(must((*s)->peek(req("a", make(5, seconds(60)), algorithm::gcra))).remaining, 5);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("snapshot_on_error=empty"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find(path), std::string::npos) << warnings[0];
  EXPECT_TRUE(fs::exists(path + ".bad"));
}

// Verifies that the store writes its snapshot every snapshot_interval by itself, and that
// what it writes loads.
TEST(MemorySnapshot, WritesPeriodically) {
  temp_dir dir;
  const std::string path = dir.file("periodic.snap");
  sluice::manual_clock c{kStart};
  memory_store_options o = with_snapshot(path, c);
  o.snapshot_interval = milliseconds(20);
  memory_store s(o);
  (void)must(s.acquire(req("a", make(5, seconds(60)), algorithm::sliding_counter, 2)));
  const auto deadline = std::chrono::steady_clock::now() + seconds(20);
  while (s.stats().snapshots < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_GE(s.stats().snapshots, 3u);
  EXPECT_EQ(s.stats().snapshot_failures, 0u);
  // A copy of the file as it is now (a store on `path` itself would write it too).
  const std::string copy_path = dir.file("copy.snap");
  write_all(copy_path, read_all(path));
  memory_store copy(with_snapshot(copy_path, c));
  EXPECT_EQ(must(copy.peek(req("a", make(5, seconds(60)), algorithm::sliding_counter))).remaining,
            3);
}

// Verifies that a failed write (its directory gone) is counted, warned about once per 10 s,
// said in health(), and stops no decision; a later good write clears the health detail.
TEST(MemorySnapshot, FailedWriteIsCountedAndWarnedNotFatal) {
  auto dir = std::make_unique<temp_dir>();
  const fs::path where = dir->path();
  const std::string path = dir->file("gone.snap");
  sluice::manual_clock c{kStart};
  std::mutex mu;
  std::vector<std::string> warnings;
  memory_store_options o = with_snapshot(path, c);
  o.warn = [&](std::string_view w) {
    const std::lock_guard lock(mu);
    warnings.emplace_back(w);
  };
  memory_store s(o);
  dir.reset();  // the directory is gone
  for (int i = 0; i < 3; ++i) {
    auto w = s.write_snapshot();
    ASSERT_FALSE(w);
    EXPECT_NE(w.error().message().find(path), std::string::npos) << w.error().message();
    EXPECT_TRUE(must(s.acquire(req("k", make(5, seconds(60)), algorithm::gcra))).allowed);
  }
  EXPECT_EQ(s.stats().snapshot_failures, 3u);
  EXPECT_EQ(warnings.size(), 1u);
  EXPECT_NE(s.health().detail.find("snapshot"), std::string::npos);
  EXPECT_TRUE(s.health().ready);
  fs::create_directories(where);
  EXPECT_EQ(must(s.write_snapshot()), 1u);
  EXPECT_EQ(s.health().detail, "");
  bool metric = false;
  s.visit_metrics([&](const sluice::store_metric& m) {
    if (m.name == "sluice_memory_snapshot_failures_total") metric = m.value == 3;
  });
  EXPECT_TRUE(metric);
  fs::remove_all(where);
}

// Verifies that bad snapshot parameters in a URI are clear errors.
TEST(MemorySnapshot, BadUriParametersAreErrors) {
  temp_dir dir;
  const std::string path = dir.file("p.snap");
  const std::pair<std::string, std::string> cases[] = {
      {"memory://?snapshot=", "snapshot needs a file path"},
      {"memory://?snapshot=" + path + "&snapshot_interval=soon", "snapshot_interval must be"},
      {"memory://?snapshot=" + path + "&snapshot_interval=1ms", "snapshot_interval must be"},
      {"memory://?snapshot=" + path + "&snapshot_on_error=maybe", "fail or empty"},
      {"memory://?snapshot_interval=10s", "need snapshot=PATH"},
      {"memory://?snapshot=/nonexistent-sluice-dir/x.snap", "does not exist"},
  };
  for (const auto& [uri, says] : cases) {
    auto o = sluice::parse_memory_uri(uri);
    ASSERT_FALSE(o) << uri;
    EXPECT_EQ(o.error().code, errc::invalid_store_uri);
    EXPECT_NE(o.error().message().find(says), std::string::npos) << o.error().message();
  }
  auto o = sluice::parse_memory_uri("memory://?snapshot=" + path +
                                    "&snapshot_interval=250ms&snapshot_on_error=empty");
  ASSERT_TRUE(o) << o.error().message();
  EXPECT_EQ(o->snapshot_path, path);
  EXPECT_EQ(o->snapshot_interval, milliseconds(250));
  EXPECT_TRUE(o->snapshot_empty_on_error);
}

// Verifies that decisions racing snapshot writes stay exact (no key admits more than its
// limit) and that each snapshot taken meanwhile loads, with no key over its limit either.
TEST(MemorySnapshotConcurrency, DecisionsRacingWritesStayExact) {
  temp_dir dir;
  const std::string path = dir.file("race.snap");
  sluice::manual_clock c{kStart};
  memory_store_options o = with_snapshot(path, c);
  o.shards = 2;
  memory_store s(o);
  constexpr int kKeys = 200;
  constexpr int kLimit = 20;
  const sluice::limit l = make(kLimit, seconds(3600));
  std::vector<std::atomic<int>> admitted(kKeys);
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      for (int i = 0; i < 20'000; ++i) {
        const int k = static_cast<int>(rng() % kKeys);
        const algorithm a = all_algorithms[k % 3];
        auto d = s.acquire(req("key" + std::to_string(k), l, a));
        if (d && d->allowed) admitted[static_cast<std::size_t>(k)].fetch_add(1);
      }
    });
  }
  std::size_t writes = 0;
  const std::string copy_path = dir.file("copy.snap");
  std::thread writer([&] {
    while (!done.load()) {
      if (s.write_snapshot()) ++writes;
      write_all(copy_path, read_all(path));
      memory_store loaded(with_snapshot(copy_path, c));
      for (int k = 0; k < kKeys; ++k) {
        const auto d = loaded.peek(req("key" + std::to_string(k), l, all_algorithms[k % 3]));
        ASSERT_TRUE(d);
        ASSERT_GE(d->remaining, 0);
      }
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  writer.join();
  EXPECT_GT(writes, 0u);
  for (int k = 0; k < kKeys; ++k) EXPECT_EQ(admitted[static_cast<std::size_t>(k)].load(), kLimit);
  // The last snapshot, after the decisions: every key is spent in it.
  ASSERT_EQ(must(s.write_snapshot()), static_cast<std::size_t>(kKeys));
  memory_store loaded(with_snapshot(path, c));
  for (int k = 0; k < kKeys; ++k) {
    const auto d = must(loaded.acquire(req("key" + std::to_string(k), l, all_algorithms[k % 3])));
    EXPECT_FALSE(d.allowed) << k;
  }
}

}  // namespace
