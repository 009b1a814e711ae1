// The parts of Redis Cluster support that need no I/O: which slot a key hashes to, what a
// MOVED or ASK reply says, and the slot map in a CLUSTER SLOTS reply. Tested with bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/error.h"
#include "store/redis/resp.h"

namespace sluice::redis {

inline constexpr int kClusterSlots = 16384;

// CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes
// keys with: crc16("123456789") == 0x31C3.
std::uint16_t crc16(std::string_view bytes) noexcept;

// Returns the slot of `key` as Redis computes it: when the key holds a '{' followed later
// by a '}' with at least one byte between them, only those bytes (the hash tag) are
// hashed; otherwise the whole key. `{user}:a` and `{user}:b` share a slot.
int key_slot(std::string_view key) noexcept;

// A redirection in an error reply: "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>".
struct redirect {
  bool ask = false;  // ASK (this call only, after ASKING) rather than MOVED (for good)
  int slot = 0;
  std::string host;  // empty when the server does not know its own address (use the one asked)
  std::uint16_t port = 0;
};

// Returns the redirection in `error_text` (the error reply's text), or nothing when it is
// not one or is malformed.
std::optional<redirect> parse_redirect(std::string_view error_text);

// One range of slots and the master that serves it.
struct slot_range {
  int first = 0;
  int last = 0;  // inclusive
  std::string host;
  std::uint16_t port = 0;
};

// Returns the ranges of a CLUSTER SLOTS reply. An empty or "?" host means the node that
// was asked (`asked_host`). Returns `errc::store_error` when the reply is not a slot map
// (not an array, ranges out of 0..16383 or reversed, a master without host and port).
result<std::vector<slot_range>> parse_cluster_slots(const reply& r, std::string_view asked_host);

}  // namespace sluice::redis
