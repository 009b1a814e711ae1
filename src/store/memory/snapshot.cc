#include "store/memory/snapshot.h"

#include <fcntl.h>
#include <unistd.h>
// For XXH64_state_t's size, so the streaming state needs no allocation.
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>

namespace sluice::internal {
namespace {

constexpr std::string_view kMagic = "SLUICESN";
constexpr std::string_view kEndMagic = "SLUICEND";
constexpr std::size_t kHeaderSize = 24;   // magic, version, flags, written_at
constexpr std::size_t kTrailerSize = 24;  // end magic, records, checksum

// The latest time a state may hold: an arrival time or window up to a window past `now`.
constexpr std::int64_t kTimeMax = max_time.count() + max_window.count();
// The most units a state may count: a count is at most its window in µs.
constexpr std::int64_t kCountMax = max_window.count();

void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint8_t algorithm_code(algorithm a) {
  switch (a) {
    case algorithm::gcra:
      return 1;
    case algorithm::sliding_counter:
      return 2;
    case algorithm::sliding_log:
      return 3;
  }
  return 0;
}

unexpected<error> bad(const std::string& what) { return make_error(errc::invalid_snapshot, what); }

// Reads little-endian integers from a span of bytes, failing past its end.
class cursor {
 public:
  explicit cursor(std::string_view bytes) : bytes_(bytes) {}

  bool read(std::uint64_t& v, int size) {
    if (bytes_.size() - pos_ < static_cast<std::size_t>(size)) return false;
    v = 0;
    for (int i = size - 1; i >= 0; --i) {
      v = (v << 8) | static_cast<unsigned char>(bytes_[pos_ + static_cast<std::size_t>(i)]);
    }
    pos_ += static_cast<std::size_t>(size);
    return true;
  }
  bool read_i64(std::int64_t& v) {
    std::uint64_t u = 0;
    if (!read(u, 8)) return false;
    v = static_cast<std::int64_t>(u);
    return true;
  }
  bool read_bytes(std::string_view& v, std::size_t size) {
    if (bytes_.size() - pos_ < size) return false;
    v = bytes_.substr(pos_, size);
    pos_ += size;
    return true;
  }
  std::size_t left() const { return bytes_.size() - pos_; }

 private:
  std::string_view bytes_;
  std::size_t pos_ = 0;
};

bool time_ok(std::int64_t t) { return t >= 0 && t <= kTimeMax; }
bool count_ok(std::int64_t n) { return n >= 0 && n <= kCountMax; }

// Reads one record at `c`; the detail names what is wrong.
result<void> read_record(cursor& c, snapshot_record& r) {
  std::uint64_t code = 0;
  std::uint64_t key_len = 0;
  if (!c.read(code, 1) || !c.read(key_len, 2)) return bad("ends inside a record");
  switch (code) {
    case 1:
      r.algo = algorithm::gcra;
      break;
    case 2:
      r.algo = algorithm::sliding_counter;
      break;
    case 3:
      r.algo = algorithm::sliding_log;
      break;
    default:
      return bad("unknown algorithm code " + std::to_string(code));
  }
  if (key_len == 0) return bad("empty key");
  if (!c.read_bytes(r.key, key_len) || !c.read_i64(r.expires_at)) {
    return bad("ends inside a record");
  }
  if (!time_ok(r.expires_at)) return bad("expiry out of range");
  r.entries.clear();
  if (r.algo == algorithm::sliding_counter) {
    if (!c.read_i64(r.window_start) || !c.read_i64(r.previous) || !c.read_i64(r.current)) {
      return bad("ends inside a record");
    }
    if (!time_ok(r.window_start)) return bad("window start out of range");
    if (!count_ok(r.previous) || !count_ok(r.current)) return bad("count out of range");
  } else if (r.algo == algorithm::sliding_log) {
    std::uint64_t n = 0;
    if (!c.read(n, 4)) return bad("ends inside a record");
    if (c.left() / 16 < n) return bad("ends inside a record");
    r.entries.reserve(n);
    std::int64_t total = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::int64_t at = 0;
      std::int64_t count = 0;
      (void)c.read_i64(at);
      (void)c.read_i64(count);
      if (!time_ok(at)) return bad("log entry time out of range");
      if (count < 1 || count > kCountMax) return bad("log entry count out of range");
      if (!r.entries.empty() && at <= r.entries.back().at.count()) {
        return bad("log entries out of order");
      }
      total += count;
      if (total > kCountMax) return bad("log total out of range");
      r.entries.push_back({std::chrono::microseconds{at}, count});
    }
  }
  return {};
}

std::atomic<std::uint64_t> temp_serial{0};

}  // namespace

snapshot_hash::snapshot_hash() noexcept {
  static_assert(sizeof(XXH64_state_t) <= sizeof(state_) && alignof(XXH64_state_t) <= 8);
  XXH64_reset(reinterpret_cast<XXH64_state_t*>(state_), 0);
}

void snapshot_hash::update(const void* data, std::size_t size) noexcept {
  XXH64_update(reinterpret_cast<XXH64_state_t*>(state_), data, size);
}

std::uint64_t snapshot_hash::digest() const noexcept {
  return XXH64_digest(reinterpret_cast<const XXH64_state_t*>(state_));
}

void append_record(std::string& out, const snapshot_record& r) {
  put_le(out, algorithm_code(r.algo), 1);
  put_le(out, r.key.size(), 2);
  out.append(r.key);
  put_le(out, static_cast<std::uint64_t>(r.expires_at), 8);
  if (r.algo == algorithm::sliding_counter) {
    put_le(out, static_cast<std::uint64_t>(r.window_start), 8);
    put_le(out, static_cast<std::uint64_t>(r.previous), 8);
    put_le(out, static_cast<std::uint64_t>(r.current), 8);
  } else if (r.algo == algorithm::sliding_log) {
    put_le(out, r.entries.size(), 4);
    for (const auto& e : r.entries) {
      put_le(out, static_cast<std::uint64_t>(e.at.count()), 8);
      put_le(out, static_cast<std::uint64_t>(e.count), 8);
    }
  }
}

result<snapshot_info> read_snapshot(
    std::string_view bytes, const std::function<result<void>(const snapshot_record&)>& each) {
  if (bytes.size() < kMagic.size() || bytes.substr(0, kMagic.size()) != kMagic) {
    return bad("not a sluice snapshot (it does not start with \"SLUICESN\")");
  }
  if (bytes.size() < kHeaderSize + kTrailerSize) {
    return bad("truncated (" + std::to_string(bytes.size()) + " bytes; a snapshot has at least " +
               std::to_string(kHeaderSize + kTrailerSize) + ")");
  }
  cursor head(bytes.substr(kMagic.size()));
  std::uint64_t version = 0;
  std::uint64_t flags = 0;
  snapshot_info info;
  head.read(version, 4);
  head.read(flags, 4);
  head.read_i64(info.written_at);
  if (version != kSnapshotVersion) {
    return bad("format version " + std::to_string(version) + "; this build reads version " +
               std::to_string(kSnapshotVersion));
  }
  const std::string_view trailer = bytes.substr(bytes.size() - kTrailerSize);
  if (trailer.substr(0, kEndMagic.size()) != kEndMagic) {
    return bad("truncated: no end marker (the write was cut short, or the file was)");
  }
  cursor tail(trailer.substr(kEndMagic.size()));
  std::uint64_t checksum = 0;
  tail.read(info.records, 8);
  tail.read(checksum, 8);
  snapshot_hash h;
  h.update(bytes.data(), bytes.size() - 8);
  if (h.digest() != checksum) return bad("corrupt: checksum mismatch");
  if (flags != 0) return bad("unknown flags " + std::to_string(flags));
  // A store's clock never reads past max_time (decisions refuse it).
  if (info.written_at < 0 || info.written_at > max_time.count()) {
    return bad("write time out of range");
  }

  cursor c(bytes.substr(kHeaderSize, bytes.size() - kHeaderSize - kTrailerSize));
  snapshot_record r;
  std::uint64_t n = 0;
  while (c.left() > 0) {
    if (auto ok = read_record(c, r); !ok) {
      return bad("corrupt: record " + std::to_string(n + 1) + ": " + ok.error().detail);
    }
    ++n;
    if (n > info.records) break;
    if (auto ok = each(r); !ok) return fail(ok.error());
  }
  if (n != info.records) {
    return bad("corrupt: the trailer counts " + std::to_string(info.records) +
               " records, the file holds " + (n > info.records ? "more" : std::to_string(n)));
  }
  return info;
}

snapshot_writer::~snapshot_writer() {
  if (fd_ >= 0) ::close(fd_);
  if (!temp_.empty()) ::unlink(temp_.c_str());
}

unexpected<error> snapshot_writer::failure(const std::string& what, int err) const {
  return make_error(errc::store_error, "snapshot \"" + path_ + "\": " + what + ": " +
                                           std::generic_category().message(err));
}

result<void> snapshot_writer::write_all(std::string_view bytes) {
  hash_.update(bytes.data(), bytes.size());
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return failure("writing " + temp_, errno);
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

result<void> snapshot_writer::begin(std::int64_t written_at) {
  temp_ = path_ + ".tmp-" + std::to_string(::getpid()) + "-" +
          std::to_string(temp_serial.fetch_add(1, std::memory_order_relaxed));
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    const int err = errno;
    temp_.clear();
    return failure("cannot create a temporary file beside it", err);
  }
  std::string header(kMagic);
  put_le(header, kSnapshotVersion, 4);
  put_le(header, 0, 4);
  put_le(header, static_cast<std::uint64_t>(written_at), 8);
  return write_all(header);
}

result<void> snapshot_writer::append(std::string_view records, std::uint64_t count) {
  records_ += count;
  return write_all(records);
}

result<void> snapshot_writer::commit() {
  std::string trailer(kEndMagic);
  put_le(trailer, records_, 8);
  if (auto ok = write_all(trailer); !ok) return ok;
  std::string sum;
  put_le(sum, hash_.digest(), 8);
  if (auto ok = write_all(sum); !ok) return ok;
  if (::fsync(fd_) != 0) return failure("fsync of " + temp_, errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return failure("closing " + temp_, errno);
  if (::rename(temp_.c_str(), path_.c_str()) != 0) return failure("renaming " + temp_, errno);
  temp_.clear();
  // The rename lasts only once the directory's entry is on disk too.
  const std::string dir = parent_directory(path_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return failure("opening its directory", errno);
  const int synced = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (synced != 0) return failure("fsync of its directory", err);
  return {};
}

std::string parent_directory(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace sluice::internal
