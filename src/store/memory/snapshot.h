// The memory store's snapshot file (docs/DESIGN.md, "Snapshots"): its binary format, read
// from bytes and written through a temporary file renamed into place. Internal to sluice.
//
// Layout, integers little-endian:
//   header   "SLUICESN", u32 version (2), u32 flags (0), i64 written_at (µs, store's clock)
//   records  u8 algorithm (1 gcra, 2 sliding_counter, 3 sliding_log), u16 key length, the key,
//            i64 expires_at, then per algorithm:
//              gcra             nothing more (its state is its expiry, the arrival time)
//              sliding_counter  i64 window_start, i64 previous, i64 current
//              sliding_log      u32 entries, each i64 at, i64 count (oldest first)
//   trailer  "SLUICEND", u64 records, u64 XXH64 (seed 0) of every byte before it
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/error.h"
#include "sluice/limit.h"

namespace sluice::internal {

// Version 2: the checksum is XXH64 (version 1's was a hash of sluice's own).
inline constexpr std::uint32_t kSnapshotVersion = 2;

// One key's state as a snapshot holds it. The views point into the bytes being read.
struct snapshot_record {
  algorithm algo = algorithm::gcra;
  std::string_view key;
  std::int64_t expires_at = 0;
  // sliding_counter
  std::int64_t window_start = 0;
  std::int64_t previous = 0;
  std::int64_t current = 0;
  // sliding_log, oldest first
  std::vector<sliding_log_state::entry> entries;
};

// The trailer's checksum: XXH64 (seed 0, libxxhash) of every byte before it. Streaming:
// `update` any number of times, then `digest`.
class snapshot_hash {
 public:
  snapshot_hash() noexcept;
  void update(const void* data, std::size_t size) noexcept;
  std::uint64_t digest() const noexcept;

 private:
  // XXH64_state_t's storage, which xxhash.h declares only with XXH_STATIC_LINKING_ONLY.
  alignas(8) unsigned char state_[88];
};

// Appends `r` to `out` in the record format above.
void append_record(std::string& out, const snapshot_record& r);

// What a snapshot's header and trailer say.
struct snapshot_info {
  std::int64_t written_at = 0;
  std::uint64_t records = 0;
};

// Checks `bytes` as a whole snapshot (magic, version, end marker, checksum, every record
// well formed and in range) and calls `each` on every record in order; the first error
// `each` returns stops the reading and is returned. Fails with `errc::invalid_snapshot` and
// a detail saying what is wrong ("not a sluice snapshot", "truncated", "checksum mismatch",
// "record 7: ..."), never crashes on any input.
result<snapshot_info> read_snapshot(
    std::string_view bytes, const std::function<result<void>(const snapshot_record&)>& each);

// Writes a snapshot to a temporary file beside `path` and renames it over `path`:
// `begin`, `append` the encoded records, then `commit` (fsync, rename, fsync of the
// directory). A writer destroyed before `commit` removes its temporary file. Not
// thread-safe.
class snapshot_writer {
 public:
  explicit snapshot_writer(std::string path) : path_(std::move(path)) {}
  ~snapshot_writer();
  snapshot_writer(const snapshot_writer&) = delete;
  snapshot_writer& operator=(const snapshot_writer&) = delete;

  result<void> begin(std::int64_t written_at);
  // Appends records already encoded with append_record; `count` of them.
  result<void> append(std::string_view records, std::uint64_t count);
  result<void> commit();

 private:
  result<void> write_all(std::string_view bytes);
  unexpected<error> failure(const std::string& what, int err) const;

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  snapshot_hash hash_;
  std::uint64_t records_ = 0;
};

// Returns the directory part of `path` ("." for a bare file name).
std::string parent_directory(const std::string& path);

}  // namespace sluice::internal
