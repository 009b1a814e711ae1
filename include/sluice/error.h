// Errors and the small result type used across sluice.
//
// Nothing on the decision path throws: an over-limit request is a `decision`, and a
// failure is an `error` (a `std::error_code` in sluice's own category plus a short detail
// naming what was wrong and where). Exceptions are reserved for start-up code.
// (docs/DESIGN.md, "Errors and results")
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
  invalid_snapshot,    // a memory-store snapshot that is corrupt, truncated or not one
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

// Returns true when `ec` says the store failed (`store_unavailable`, `timeout`,
// `store_error`) rather than that the request was bad: the errors a policy's failure
// mode applies to (docs/DESIGN.md, invariant 3).
inline bool is_store_failure(const std::error_code& ec) noexcept {
  if (ec.category() != sluice_category()) return false;
  const auto e = static_cast<errc>(ec.value());
  return e == errc::store_unavailable || e == errc::timeout || e == errc::store_error;
}

namespace internal {
// Prints what was asked of which result and aborts: the defined end of a program that reads
// the value of a failed result (or the error of a good one), in every build type.
[[noreturn]] void bad_result_access(const char* what, const error* held) noexcept;
}  // namespace internal

// The failure held by an `expected`: the shape of C++23's std::unexpected.
template <class E>
class unexpected {
 public:
  explicit unexpected(E e) : e_(std::move(e)) {}
  const E& error() const& noexcept { return e_; }
  E& error() & noexcept { return e_; }
  E&& error() && noexcept { return std::move(e_); }

 private:
  E e_;
};

// Holds either a T or an E: the subset of C++23's std::expected that sluice uses, with the
// same names and meanings, so that `result` can become `std::expected<T, error>` by changing
// its alias below. Reading the value of a failed `expected` (or the error of a good one) is
// never undefined: it prints what was held and aborts (internal::bad_result_access).
template <class T, class E>
class [[nodiscard]] expected {
 public:
  using value_type = T;
  using error_type = E;

  // Holds a value-initialised T, so that a result can be declared before it is assigned.
  expected() requires std::is_default_constructible_v<T> : v_(std::in_place_index<0>) {}
  expected(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit
  template <class G>
  requires std::is_constructible_v<E, const G&> expected(const unexpected<G>& e)
      : v_(std::in_place_index<1>, e.error()) {}  // NOLINT
  template <class G>
  requires std::is_constructible_v<E, G&&> expected(unexpected<G>&& e)
      : v_(std::in_place_index<1>, std::move(e).error()) {}  // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return *value_ptr(); }
  const T& value() const& { return *value_ptr(); }
  T&& value() && { return std::move(*value_ptr()); }
  T* operator->() { return value_ptr(); }
  const T* operator->() const { return value_ptr(); }
  T& operator*() & { return *value_ptr(); }
  const T& operator*() const& { return *value_ptr(); }
  T&& operator*() && { return std::move(*value_ptr()); }
  template <class U>
  T value_or(U&& fallback) const& {
    return has_value() ? *std::get_if<0>(&v_) : static_cast<T>(std::forward<U>(fallback));
  }

  const E& error() const& { return *error_ptr(); }
  E& error() & { return *error_ptr(); }
  E&& error() && { return std::move(*error_ptr()); }

 private:
  T* value_ptr() const {
    auto* p = std::get_if<0>(&v_);
    if (p == nullptr) internal::bad_result_access("value() of a failed result", error_if_any());
    return const_cast<T*>(p);
  }
  E* error_ptr() const {
    auto* p = std::get_if<1>(&v_);
    if (p == nullptr) internal::bad_result_access("error() of a successful result", nullptr);
    return const_cast<E*>(p);
  }
  const sluice::error* error_if_any() const noexcept {
    if constexpr (std::is_same_v<E, sluice::error>) return std::get_if<1>(&v_);
    return nullptr;
  }

  std::variant<T, E> v_;
};

// The same with nothing to return on success.
template <class E>
class [[nodiscard]] expected<void, E> {
 public:
  using value_type = void;
  using error_type = E;

  expected() = default;
  template <class G>
  requires std::is_constructible_v<E, const G&> expected(const unexpected<G>& e)
      : e_(e.error()), failed_(true) {}  // NOLINT: implicit
  template <class G>
  requires std::is_constructible_v<E, G&&> expected(unexpected<G>&& e)
      : e_(std::move(e).error()), failed_(true) {}  // NOLINT

  bool has_value() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return has_value(); }
  // Checks that there is no error, as std::expected<void, E>::value() does.
  void value() const {
    if (failed_) internal::bad_result_access("value() of a failed result", error_if_any());
  }

  const E& error() const& {
    if (!failed_) internal::bad_result_access("error() of a successful result", nullptr);
    return e_;
  }
  E& error() & {
    if (!failed_) internal::bad_result_access("error() of a successful result", nullptr);
    return e_;
  }
  E&& error() && {
    if (!failed_) internal::bad_result_access("error() of a successful result", nullptr);
    return std::move(e_);
  }

 private:
  const sluice::error* error_if_any() const noexcept {
    if constexpr (std::is_same_v<E, sluice::error>) return &e_;
    return nullptr;
  }

  E e_{};
  bool failed_ = false;
};

// Holds either a T or an `error`. Build a failure with `make_error`, or pass one on with
// `fail(other.error())`; under C++23 this alias becomes `std::expected<T, error>` and the
// code around it is unchanged.
//
//   result<limit> l = parse_limit("30/hour");
//   if (!l) std::cerr << l.error().message();
template <class T>
using result = expected<T, error>;

// Returns `e` as the failure of any result.
inline unexpected<error> fail(error e) { return unexpected<error>(std::move(e)); }

// Returns a failure with code `e` and `detail`, for any result.
inline unexpected<error> make_error(errc e, std::string detail = {}) {
  return fail(error{make_error_code(e), std::move(detail)});
}

}  // namespace sluice

template <>
struct std::is_error_code_enum<sluice::errc> : std::true_type {};
