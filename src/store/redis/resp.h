// RESP for the Redis store: replies parsed by hiredis's reader, commands encoded straight
// into a connection's output buffer. No I/O here.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/error.h"

struct redisReader;

namespace sluice::redis {

// One reply, copied out of hiredis so nothing hiredis leaks past this file.
struct reply {
  enum class kind : std::uint8_t { string, array, integer, nil, status, error };
  kind type = kind::nil;
  std::int64_t integer = 0;
  std::string text;  // string, status and error replies
  std::vector<reply> elements;

  bool is_error() const noexcept { return type == kind::error; }
};

// Parses replies out of a byte stream. Not thread-safe.
class reader {
 public:
  reader();
  ~reader();
  reader(const reader&) = delete;
  reader& operator=(const reader&) = delete;

  // Adds bytes read from the connection.
  void feed(std::string_view bytes);
  // Returns the next complete reply, nothing when more bytes are needed, or
  // `errc::store_error` when the stream is not RESP (the connection must be dropped).
  result<std::optional<reply>> next();

 private:
  redisReader* r_;
};

// Appends the RESP encoding of one command (an array of bulk strings) to `out`. Written
// here rather than with redisFormatCommandArgv so that a pipeline's commands are encoded
// in place into one buffer, with no allocation per command.
void append_command(std::string& out, std::initializer_list<std::string_view> args);
void append_command(std::string& out, const std::vector<std::string_view>& args);
// The pieces of a command written one by one: `*n`, then n bulk strings.
void append_array_header(std::string& out, std::size_t n);
void append_bulk(std::string& out, std::string_view arg);

}  // namespace sluice::redis
