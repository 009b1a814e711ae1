// Errors and the small result type used across sluice.
//
// Nothing on the decision path throws: an over-limit request is a `decision`, and a
// failure is an `error` (a `std::error_code` in sluice's own category plus a short detail
// naming what was wrong and where). Exceptions are reserved for start-up code.
#pragma once

#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace sluice {

// Error codes of sluice's own category. Zero is never used for an error.
enum class errc {
  invalid_limit = 1,   // a limit that does not parse or is out of range
  invalid_algorithm,   // an algorithm name sluice does not know
  invalid_duration,    // a duration that does not parse or is out of range
  invalid_key,         // an empty or oversized key
  invalid_cost,        // a cost below 1
  cost_exceeds_limit,  // a cost larger than the limit's count: it can never be admitted
  invalid_time,        // an explicit `now` outside the supported range
  invalid_policy,      // a policy with a bad name or a duplicate name
  unknown_policy,      // no policy of that name
  invalid_store_uri,   // a store URI that does not parse
  unsupported_store,   // a store scheme this build does not provide
  store_full,          // the store is at its key cap and could not make room
  store_unavailable,   // the store cannot be reached
  timeout,             // the store did not answer before the deadline
  store_error,         // the store answered something unusable (protocol error, bad reply,
                       // authentication refused, script error)
};

// Returns the category of `errc` values; its name is "sluice".
const std::error_category& sluice_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), sluice_category()};
}

// A failure: a code to branch on and a detail for people (may be empty).
struct error {
  std::error_code code;
  std::string detail;

  // Returns the detail when there is one, else the code's message.
  std::string message() const { return detail.empty() ? code.message() : detail; }
};

inline error make_error(errc e, std::string detail = {}) {
  return {make_error_code(e), std::move(detail)};
}

// Returns true when `ec` says the store failed (`store_unavailable`, `timeout`,
// `store_error`) rather than that the request was bad: the errors a policy's failure
// mode applies to (invariant 3 of DESIGN.md).
inline bool is_store_failure(const std::error_code& ec) noexcept {
  if (ec.category() != sluice_category()) return false;
  const auto e = static_cast<errc>(ec.value());
  return e == errc::store_unavailable || e == errc::timeout || e == errc::store_error;
}

// Holds either a T or an `error`. A minimal stand-in for C++23's std::expected.
//
//   result<limit> l = parse_limit("30/hour");
//   if (!l) std::cerr << l.error().message();
template <class T>
class result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit on purpose
  result(sluice::error e) : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  // Precondition: has_value().
  T& value() & { return *std::get_if<0>(&v_); }
  const T& value() const& { return *std::get_if<0>(&v_); }
  T&& value() && { return std::move(*std::get_if<0>(&v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // Precondition: !has_value().
  const sluice::error& error() const { return *std::get_if<1>(&v_); }

 private:
  std::variant<T, sluice::error> v_;
};

// The result of an operation with nothing to return on success.
template <>
class result<void> {
 public:
  result() = default;
  result(sluice::error e) : e_(std::move(e)), failed_(true) {}  // NOLINT: implicit on purpose

  bool has_value() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return has_value(); }
  const sluice::error& error() const { return e_; }

 private:
  sluice::error e_;
  bool failed_ = false;
};

}  // namespace sluice

template <>
struct std::is_error_code_enum<sluice::errc> : std::true_type {};
