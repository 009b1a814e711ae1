#include "store/redis/cluster.h"

#include <array>
#include <charconv>

namespace sluice::redis {
namespace {

// The table of CRC-16/XMODEM for every byte value, built at compile time.
constexpr std::array<std::uint16_t, 256> make_crc_table() {
  std::array<std::uint16_t, 256> table{};
  for (unsigned byte = 0; byte < 256; ++byte) {
    unsigned crc = byte << 8;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1;
    table[byte] = static_cast<std::uint16_t>(crc);
  }
  return table;
}

constexpr auto kCrcTable = make_crc_table();

template <class T>
bool parse_whole(std::string_view text, T& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

unexpected<error> bad_slots(const std::string& why) {
  return make_error(errc::store_error, "redis: CLUSTER SLOTS reply: " + why);
}

}  // namespace

std::uint16_t crc16(std::string_view bytes) noexcept {
  std::uint16_t crc = 0;
  for (const char c : bytes) {
    const auto index = static_cast<std::uint8_t>((crc >> 8) ^ static_cast<std::uint8_t>(c));
    crc = static_cast<std::uint16_t>((crc << 8) ^ kCrcTable[index]);
  }
  return crc;
}

int key_slot(std::string_view key) noexcept {
  if (const std::size_t open = key.find('{'); open != std::string_view::npos) {
    const std::size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return crc16(key) & (kClusterSlots - 1);
}

std::optional<redirect> parse_redirect(std::string_view text) {
  redirect r;
  if (text.starts_with("MOVED ")) {
    text.remove_prefix(6);
  } else if (text.starts_with("ASK ")) {
    r.ask = true;
    text.remove_prefix(4);
  } else {
    return std::nullopt;
  }
  const std::size_t space = text.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  if (!parse_whole(text.substr(0, space), r.slot) || r.slot < 0 || r.slot >= kClusterSlots) {
    return std::nullopt;
  }
  const std::string_view address = text.substr(space + 1);
  const std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  if (!parse_whole(address.substr(colon + 1), r.port) || r.port == 0) return std::nullopt;
  std::string_view host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  r.host = std::string(host);
  return r;
}

result<std::vector<slot_range>> parse_cluster_slots(const reply& r, std::string_view asked_host) {
  if (r.is_error()) return bad_slots("error: " + r.text.substr(0, 200));
  if (r.type != reply::kind::array) return bad_slots("not an array");
  std::vector<slot_range> out;
  out.reserve(r.elements.size());
  for (const reply& range : r.elements) {
    const auto& e = range.elements;
    if (range.type != reply::kind::array || e.size() < 3 || e[0].type != reply::kind::integer ||
        e[1].type != reply::kind::integer || e[2].type != reply::kind::array) {
      return bad_slots("a range is not [first, last, [host, port, ...], ...]");
    }
    slot_range s;
    if (e[0].integer < 0 || e[1].integer >= kClusterSlots || e[0].integer > e[1].integer) {
      return bad_slots("slots " + std::to_string(e[0].integer) + "-" +
                       std::to_string(e[1].integer) + " are not a range of 0..16383");
    }
    s.first = static_cast<int>(e[0].integer);
    s.last = static_cast<int>(e[1].integer);
    const auto& master = e[2].elements;
    if (master.size() < 2 || master[0].type != reply::kind::string ||
        master[1].type != reply::kind::integer || master[1].integer <= 0 ||
        master[1].integer > 65535) {
      return bad_slots("a master is not [host, port, ...]");
    }
    s.host =
        master[0].text.empty() || master[0].text == "?" ? std::string(asked_host) : master[0].text;
    s.port = static_cast<std::uint16_t>(master[1].integer);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace sluice::redis
