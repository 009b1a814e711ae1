#include "store/redis/resp.h"

#include <hiredis/hiredis.h>

#include <charconv>
#include <string>

namespace sluice::redis {
namespace {

reply convert(const redisReply& r) {
  reply out;
  switch (r.type) {
    case REDIS_REPLY_STRING:
      out.type = reply::kind::string;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = reply::kind::status;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = reply::kind::error;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = reply::kind::integer;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = reply::kind::array;
      out.elements.reserve(r.elements);
      for (std::size_t i = 0; i < r.elements; ++i) out.elements.push_back(convert(*r.element[i]));
      break;
    default:
      out.type = reply::kind::nil;
      break;
  }
  return out;
}

template <class Args>
void append_all(std::string& out, const Args& args) {
  char digits[24];
  out += '*';
  const auto end = std::to_chars(digits, digits + sizeof digits, args.size()).ptr;
  out.append(digits, end);
  out += "\r\n";
  for (std::string_view a : args) append_bulk(out, a);
}

}  // namespace

void append_bulk(std::string& out, std::string_view arg) {
  char digits[24];
  out += '$';
  const auto end = std::to_chars(digits, digits + sizeof digits, arg.size()).ptr;
  out.append(digits, end);
  out += "\r\n";
  out.append(arg);
  out += "\r\n";
}

void append_array_header(std::string& out, std::size_t n) {
  char digits[24];
  out += '*';
  const auto end = std::to_chars(digits, digits + sizeof digits, n).ptr;
  out.append(digits, end);
  out += "\r\n";
}

reader::reader() : r_(redisReaderCreate()) {}

reader::~reader() { redisReaderFree(r_); }

void reader::feed(std::string_view bytes) {
  if (!bytes.empty()) redisReaderFeed(r_, bytes.data(), bytes.size());
}

result<std::optional<reply>> reader::next() {
  void* raw = nullptr;
  if (r_ == nullptr || redisReaderGetReply(r_, &raw) != REDIS_OK) {
    const std::string why = r_ == nullptr ? "out of memory" : r_->errstr;
    return make_error(errc::store_error, "redis: malformed reply (" + why + ")");
  }
  if (raw == nullptr) return std::optional<reply>{};
  std::unique_ptr<redisReply, void (*)(void*)> owned(static_cast<redisReply*>(raw),
                                                     freeReplyObject);
  return std::optional<reply>{convert(*owned)};
}

void append_command(std::string& out, std::initializer_list<std::string_view> args) {
  append_all(out, args);
}

void append_command(std::string& out, const std::vector<std::string_view>& args) {
  append_all(out, args);
}

}  // namespace sluice::redis
