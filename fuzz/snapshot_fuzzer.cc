// Feeds bytes to the memory store's snapshot reader (store/memory/snapshot.cc) twice: as they
// are, and with the trailer's checksum made right, so that the record checks are reached and
// not only the checksum. A snapshot the reader accepts is then loaded by a store from a file
// (the same path `sluice serve` takes), decided on, written back and read again, and must
// load with the same keys. Aborts, saying why, on any disagreement; crashes are the
// sanitizers'.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include "sluice/clock.h"
#include "sluice/limit.h"
#include "sluice/memory_store.h"
#include "store/memory/snapshot.h"

namespace {

using sluice::internal::snapshot_record;

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "snapshot_fuzzer: %s\n", why.c_str());
  std::abort();
}

const std::string& scratch_path() {
  static const std::string path = "/tmp/sluice-snapshot-fuzz-" + std::to_string(::getpid());
  return path;
}

// Returns the keys `bytes` holds, or nothing when the reader refuses them.
bool read_keys(std::string_view bytes, std::set<std::string>& keys, std::int64_t& written_at) {
  auto info = sluice::internal::read_snapshot(bytes, [&](const snapshot_record& r) {
    keys.emplace(r.key);
    return sluice::result<void>{};
  });
  if (!info) {
    if (info.error().code != sluice::errc::invalid_snapshot || info.error().detail.empty()) {
      fail("a refusal without errc::invalid_snapshot and a detail");
    }
    return false;
  }
  written_at = info->written_at;
  return true;
}

void load_and_decide(const std::string& bytes, const std::set<std::string>& keys,
                     std::int64_t written_at) {
  const std::string& path = scratch_path();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  // At the time of the write, so that nothing has expired on load.
  sluice::manual_clock clock{std::chrono::microseconds{written_at}};
  sluice::memory_store_options o;
  o.shards = 2;
  o.time_source = &clock;
  o.snapshot_path = path;
  o.snapshot_interval = std::chrono::milliseconds{0};
  auto store = sluice::memory_store::open(o);
  if (!store) {
    // Keys repeated in a file are refused only by the store.
    if (store.error().detail.find("written twice") == std::string::npos) {
      fail("the reader accepts what the store refuses: " + store.error().message());
    }
    return;
  }
  const auto l = sluice::make_limit(3, std::chrono::seconds(1));
  for (const std::string& key : keys) {
    for (const sluice::algorithm a : {sluice::algorithm::gcra, sluice::algorithm::sliding_counter,
                                      sluice::algorithm::sliding_log}) {
      auto d = (*store)->peek(sluice::request{key, *l, a, 1, std::nullopt});
      if (!d && key.size() <= o.max_key_length) fail("a peek failed: " + d.error().message());
    }
  }
  auto written = (*store)->write_snapshot();
  if (!written) fail("writing it back failed: " + written.error().message());
  store->reset();  // writes it once more
  std::ifstream in(path, std::ios::binary);
  const std::string again{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::set<std::string> keys_again;
  std::int64_t at = 0;
  if (!read_keys(again, keys_again, at)) fail("a snapshot the store wrote does not read");
  for (const std::string& k : keys_again) {
    if (keys.count(k) == 0) fail("the store wrote a key it never loaded");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  std::set<std::string> keys;
  std::int64_t written_at = 0;
  read_keys(bytes, keys, written_at);
  if (bytes.size() >= 48) {
    sluice::internal::snapshot_hash h;
    h.update(bytes.data(), bytes.size() - 8);
    std::uint64_t sum = h.digest();
    for (std::size_t i = bytes.size() - 8; i < bytes.size(); ++i, sum >>= 8) {
      bytes[i] = static_cast<char>(sum & 0xff);
    }
  }
  keys.clear();
  if (read_keys(bytes, keys, written_at)) load_and_decide(bytes, keys, written_at);
  return 0;
}
