// The compiled part of the Python package `sluice`: `sluice._sluice`, a sluice::limiter for
// Python (docs/DESIGN.md, "Python"). python/sluice/__init__.py re-exports it and
// python/sluice/_sluice.pyi types it; the docstrings here are what help() shows.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <structmember.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

#include "sluice/limiter.h"
#include "sluice/open_store.h"

namespace py = pybind11;

namespace {

// sluice.Decision: a decision as Python sees it, times in float seconds, and the failure mode
// that made it. A type written with the C API rather than a pybind11 class: every call
// returns one, and a pybind11 instance (a separately allocated C++ object, registered in
// pybind11's instance map and looked up by type on every cast) cost about a third of a
// memory-store `acquire` from Python. This one is a single allocation with its fields inline.
// Immutable, no __dict__; its only reference (`fallback`: None or an interned str) cannot
// make a cycle, so it is not tracked by the GC.
struct decision_object {
  PyObject_HEAD char allowed;  // T_BOOL
  char shadow;
  long long limit;
  long long remaining;
  double retry_after;
  double reset_after;
  PyObject* fallback;  // never null: None or "allow" / "deny" / "local"
};

PyTypeObject* decision_type = nullptr;
PyObject* fallback_names[3] = {};  // interned "allow", "deny", "local"

double seconds(std::chrono::microseconds d) { return static_cast<double>(d.count()) / 1e6; }

// Returns a new Decision, or null with a Python error set (no memory).
PyObject* new_decision(bool allowed, long long limit, long long remaining, double retry_after,
                       double reset_after, PyObject* fallback, bool shadow) {
  auto* o = PyObject_New(decision_object, decision_type);
  if (o == nullptr) return nullptr;
  o->allowed = allowed ? 1 : 0;
  o->shadow = shadow ? 1 : 0;
  o->limit = limit;
  o->remaining = remaining;
  o->retry_after = retry_after;
  o->reset_after = reset_after;
  Py_INCREF(fallback);
  o->fallback = fallback;
  return reinterpret_cast<PyObject*>(o);
}

py::object to_python(const sluice::decision& d) {
  PyObject* fallback = Py_None;
  if (const auto f = sluice::fallback_of(d.source)) {
    fallback = fallback_names[static_cast<int>(*f) % 3];
  }
  PyObject* o =
      new_decision(d.allowed, d.limit, d.remaining, seconds(d.retry_after), seconds(d.reset_after),
                   fallback, d.source == sluice::decision_source::shadow);
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

decision_object& as_decision(PyObject* o) { return *reinterpret_cast<decision_object*>(o); }

PyObject* decision_new(PyTypeObject*, PyObject* args, PyObject* kwargs) {
  static const char* names[] = {"allowed",     "limit",    "remaining", "retry_after",
                                "reset_after", "fallback", "shadow",    nullptr};
  int allowed = -1;
  long long limit = 0;
  long long remaining = 0;
  double retry_after = 0;
  double reset_after = 0;
  PyObject* fallback = Py_None;
  int shadow = 0;
  PyObject* limit_given = nullptr;
  PyObject* remaining_given = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$pOOddOp:Decision", const_cast<char**>(names),
                                   &allowed, &limit_given, &remaining_given, &retry_after,
                                   &reset_after, &fallback, &shadow)) {
    return nullptr;
  }
  if (allowed < 0 || limit_given == nullptr || remaining_given == nullptr) {
    PyErr_SetString(PyExc_TypeError,
                    "Decision() needs the keyword arguments allowed, limit and remaining");
    return nullptr;
  }
  for (PyObject* v : {limit_given, remaining_given}) {
    if (!PyLong_Check(v) || PyBool_Check(v)) {
      PyErr_Format(PyExc_TypeError, "Decision: limit and remaining must be int, not %s",
                   Py_TYPE(v)->tp_name);
      return nullptr;
    }
  }
  limit = PyLong_AsLongLong(limit_given);
  remaining = PyLong_AsLongLong(remaining_given);
  if (PyErr_Occurred() != nullptr) return nullptr;
  if (fallback != Py_None) {
    int known = 0;
    for (PyObject* name : fallback_names) {
      const int eq = PyUnicode_Check(fallback) ? PyUnicode_Compare(fallback, name) == 0 : 0;
      if (eq) {
        fallback = name;
        known = 1;
      }
    }
    if (known == 0) {
      PyErr_SetString(PyExc_ValueError,
                      "Decision: fallback must be None, \"allow\", \"deny\" or \"local\"");
      return nullptr;
    }
  }
  return new_decision(allowed != 0, limit, remaining, retry_after, reset_after, fallback,
                      shadow != 0);
}

void decision_dealloc(PyObject* self) {
  Py_DECREF(as_decision(self).fallback);
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);  // a heap type's instances hold a reference to it
}

int decision_bool(PyObject* self) { return as_decision(self).allowed; }

PyObject* decision_compare(PyObject* a, PyObject* b, int op) {
  if (!PyObject_TypeCheck(b, decision_type) || (op != Py_EQ && op != Py_NE)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const auto& x = as_decision(a);
  const auto& y = as_decision(b);
  const bool same = x.allowed == y.allowed && x.shadow == y.shadow && x.limit == y.limit &&
                    x.remaining == y.remaining && x.retry_after == y.retry_after &&
                    x.reset_after == y.reset_after && x.fallback == y.fallback;
  return PyBool_FromLong((op == Py_EQ) == same ? 1 : 0);
}

Py_hash_t decision_hash(PyObject* self) {
  const auto& d = as_decision(self);
  PyObject* t = Py_BuildValue("(NLLddON)", PyBool_FromLong(d.allowed), d.limit, d.remaining,
                              d.retry_after, d.reset_after, d.fallback, PyBool_FromLong(d.shadow));
  if (t == nullptr) return -1;
  const Py_hash_t h = PyObject_Hash(t);
  Py_DECREF(t);
  return h;
}

PyObject* decision_repr(PyObject* self) {
  const auto& d = as_decision(self);
  try {
    auto text = [](double v) { return std::string(py::str(py::float_(v))); };
    const std::string out =
        "Decision(allowed=" + std::string(d.allowed ? "True" : "False") +
        ", limit=" + std::to_string(d.limit) + ", remaining=" + std::to_string(d.remaining) +
        ", retry_after=" + text(d.retry_after) + ", reset_after=" + text(d.reset_after) +
        ", fallback=" + std::string(py::repr(d.fallback)) +
        ", shadow=" + (d.shadow ? "True" : "False") + ")";
    return PyUnicode_FromStringAndSize(out.data(), static_cast<Py_ssize_t>(out.size()));
  } catch (py::error_already_set& e) {
    e.restore();
    return nullptr;
  }
}

PyMemberDef decision_members[] = {
    {"allowed", T_BOOL, offsetof(decision_object, allowed), READONLY,
     "Whether the request is admitted."},
    {"limit", T_LONGLONG, offsetof(decision_object, limit), READONLY, "The limit's count."},
    {"remaining", T_LONGLONG, offsetof(decision_object, remaining), READONLY,
     "Units still available (after this request, when allowed)."},
    {"retry_after", T_DOUBLE, offsetof(decision_object, retry_after), READONLY,
     "Seconds until this request would be admitted; 0.0 when allowed."},
    {"reset_after", T_DOUBLE, offsetof(decision_object, reset_after), READONLY,
     "Seconds until the key is back to its full limit."},
    {"fallback", T_OBJECT, offsetof(decision_object, fallback), READONLY,
     "\"allow\", \"deny\" or \"local\" when the policy's failure mode decided\n"
     "because the store failed; None when the store decided."},
    {"shadow", T_BOOL, offsetof(decision_object, shadow), READONLY,
     "True when a shadow policy denied and the decision says allowed."},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot decision_slots[] = {
    {Py_tp_doc,
     const_cast<char*>("Decision(*, allowed, limit, remaining, retry_after=0.0, reset_after=0.0,\n"
                       "fallback=None, shadow=False)\n\n"
                       "The answer to \"may this key spend this much now?\". Immutable.\n"
                       "True when allowed: `if limiter.acquire(\"chat\", user): ...`.\n"
                       "Limiters build their own; the constructor is for tests and fakes.")},
    {Py_tp_new, reinterpret_cast<void*>(&decision_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(&decision_dealloc)},
    {Py_tp_richcompare, reinterpret_cast<void*>(&decision_compare)},
    {Py_tp_hash, reinterpret_cast<void*>(&decision_hash)},
    {Py_tp_repr, reinterpret_cast<void*>(&decision_repr)},
    {Py_tp_members, decision_members},
    {Py_nb_bool, reinterpret_cast<void*>(&decision_bool)},
    {0, nullptr},
};

PyType_Spec decision_spec = {"sluice.Decision", sizeof(decision_object), 0,
                             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, decision_slots};

// The exception types of the module, created once and kept for the process's life.
PyObject* store_error_type = nullptr;
PyObject* unknown_policy_type = nullptr;
// asyncio.get_running_loop, looked up once.
PyObject* get_running_loop = nullptr;

// Returns the name of a sluice error code ("invalid_cost"), for the exceptions' `code`.
std::string_view code_name(const std::error_code& ec) {
  using sluice::errc;
  if (ec.category() != sluice::sluice_category()) return "unknown";
  switch (static_cast<errc>(ec.value())) {
    case errc::invalid_limit:
      return "invalid_limit";
    case errc::invalid_algorithm:
      return "invalid_algorithm";
    case errc::invalid_duration:
      return "invalid_duration";
    case errc::invalid_key:
      return "invalid_key";
    case errc::invalid_cost:
      return "invalid_cost";
    case errc::cost_exceeds_limit:
      return "cost_exceeds_limit";
    case errc::invalid_time:
      return "invalid_time";
    case errc::invalid_policy:
      return "invalid_policy";
    case errc::unknown_policy:
      return "unknown_policy";
    case errc::invalid_store_uri:
      return "invalid_store_uri";
    case errc::unsupported_store:
      return "unsupported_store";
    case errc::store_full:
      return "store_full";
    case errc::store_unavailable:
      return "store_unavailable";
    case errc::timeout:
      return "timeout";
    case errc::store_error:
      return "store_error";
    case errc::invalid_snapshot:
      return "invalid_snapshot";
  }
  return "unknown";
}

// Bad input is a ValueError, an unknown policy an UnknownPolicyError (a LookupError), and
// anything the store did a StoreError.
PyObject* exception_type(const std::error_code& ec) {
  using sluice::errc;
  if (ec.category() != sluice::sluice_category()) return store_error_type;
  switch (static_cast<errc>(ec.value())) {
    case errc::unknown_policy:
      return unknown_policy_type;
    case errc::unsupported_store:
    case errc::store_full:
    case errc::store_unavailable:
    case errc::timeout:
    case errc::store_error:
    case errc::invalid_snapshot:  // the store's own file, not the caller's input
      return store_error_type;
    default:
      return PyExc_ValueError;
  }
}

// Returns the exception for `e`, with sluice's message and the code's name as `code`.
py::object make_exception(const sluice::error& e) {
  py::object exc = py::handle(exception_type(e.code))(e.message());
  exc.attr("code") = std::string(code_name(e.code));
  return exc;
}

[[noreturn]] void raise(const sluice::error& e) {
  const py::object exc = make_exception(e);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

sluice::unexpected<sluice::error> invalid_limit(std::string detail) {
  return sluice::make_error(sluice::errc::invalid_limit, std::move(detail));
}

std::string type_name(py::handle h) { return Py_TYPE(h.ptr())->tp_name; }

// Returns the bytes of a str (UTF-8) or bytes key, valid while `key` is.
std::string_view key_view(py::handle key) {
  if (PyUnicode_Check(key.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(key.ptr(), &n);
    if (s == nullptr) throw py::error_already_set();
    return {s, static_cast<std::size_t>(n)};
  }
  if (PyBytes_Check(key.ptr())) {
    return {PyBytes_AS_STRING(key.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(key.ptr()))};
  }
  throw py::type_error("key must be str or bytes, not " + type_name(key));
}

// Returns the limit of a limit string ("30/hour") or a (count, seconds) tuple.
sluice::result<sluice::limit> to_limit(py::handle spec) {
  if (PyUnicode_Check(spec.ptr())) return sluice::parse_limit(spec.cast<std::string>());
  if (!PyTuple_Check(spec.ptr())) {
    throw py::type_error("a limit is a str such as \"30/hour\" or a (count, seconds) tuple, not " +
                         type_name(spec));
  }
  const auto t = py::reinterpret_borrow<py::tuple>(spec);
  if (t.size() != 2) throw py::type_error("a limit tuple is (count, seconds)");
  if (!PyLong_Check(t[0].ptr()) || PyBool_Check(t[0].ptr())) {
    throw py::type_error("a limit's count must be an int, not " + type_name(t[0]));
  }
  int overflow = 0;
  const long long count = PyLong_AsLongLongAndOverflow(t[0].ptr(), &overflow);
  if (overflow != 0) return invalid_limit("limit count is out of range");
  if (!PyFloat_Check(t[1].ptr()) && (!PyLong_Check(t[1].ptr()) || PyBool_Check(t[1].ptr()))) {
    throw py::type_error("a limit's window must be a number of seconds, not " + type_name(t[1]));
  }
  const double window = PyFloat_AsDouble(t[1].ptr());
  if (window == -1.0 && PyErr_Occurred() != nullptr) throw py::error_already_set();
  const double us = std::round(window * 1e6);
  // Beyond max_window, and NaN, are left for make_limit to name; 1e300 must not overflow.
  if (!(us > -1e18 && us < 1e18)) return invalid_limit("limit window is out of range");
  return sluice::make_limit(count, std::chrono::microseconds(static_cast<std::int64_t>(us)));
}

// Returns the policy `name` described by a limit, or a dict of limit, algorithm, on_failure,
// shadow and deny_cache (only limit required).
sluice::result<sluice::policy> to_policy(std::string name, py::handle spec) {
  sluice::policy p;
  p.name = std::move(name);
  if (!PyDict_Check(spec.ptr())) {
    auto l = to_limit(spec);
    if (!l) return sluice::fail(l.error());
    p.limit = *l;
    return p;
  }
  const auto fields = py::reinterpret_borrow<py::dict>(spec);
  auto bad = [&p](std::string detail) {
    return sluice::make_error(sluice::errc::invalid_policy,
                              "policy \"" + p.name + "\": " + std::move(detail));
  };
  if (!fields.contains("limit")) return bad("limit is required");
  for (const auto& [k, v] : fields) {
    const std::string field = py::str(k);
    auto text = [&]() {
      if (!PyUnicode_Check(v.ptr())) {
        throw py::type_error("policy field " + field + " must be a str, not " + type_name(v));
      }
      return v.cast<std::string>();
    };
    if (field == "limit") {
      auto l = to_limit(v);
      if (!l) return sluice::fail(l.error());
      p.limit = *l;
    } else if (field == "algorithm") {
      auto a = sluice::parse_algorithm(text());
      if (!a) return sluice::fail(a.error());
      p.algorithm = *a;
    } else if (field == "on_failure") {
      auto m = sluice::parse_failure_mode(text());
      if (!m) return sluice::fail(m.error());
      p.on_failure = *m;
    } else if (field == "shadow") {
      if (!PyBool_Check(v.ptr())) {
        throw py::type_error("policy field shadow must be a bool, not " + type_name(v));
      }
      p.shadow = v.cast<bool>();
    } else if (field == "deny_cache") {
      if (!PyBool_Check(v.ptr())) {
        throw py::type_error("policy field deny_cache must be a bool, not " + type_name(v));
      }
      p.deny_cache = v.cast<bool>();
    } else {
      return bad("unknown field \"" + field +
                 "\" (limit, algorithm, on_failure, shadow, deny_cache)");
    }
  }
  return p;
}

// Answers of async calls on one asyncio loop, handed from the store's I/O thread to the
// loop's thread: the I/O thread queues them and wakes the loop through an eventfd the loop
// watches (one write per batch, not per answer), so it never waits for the GIL; the loop
// completes the futures. Thread-safe; holds no Python object, so it may die on any thread.
class mailbox {
 public:
  struct answer {
    std::uint64_t id;
    sluice::result<sluice::decision> outcome;
  };

  mailbox() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  mailbox(const mailbox&) = delete;
  mailbox& operator=(const mailbox&) = delete;
  ~mailbox() { ::close(fd_); }

  int fd() const noexcept { return fd_; }

  void post(std::uint64_t id, sluice::result<sluice::decision> outcome) {
    bool wake = false;
    {
      const std::lock_guard lock(mu_);
      wake = answers_.empty();  // else the loop is woken already and has not taken them
      answers_.push_back({id, std::move(outcome)});
    }
    if (wake) {
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(fd_, &one, sizeof one);  // cannot overflow
    }
  }

  // Returns what was posted since the last call. The eventfd is read before the queue is
  // taken, so an answer posted in between wakes the loop again rather than being stranded.
  std::vector<answer> take() {
    std::uint64_t count = 0;
    [[maybe_unused]] const ssize_t n = ::read(fd_, &count, sizeof count);
    std::vector<answer> out;
    const std::lock_guard lock(mu_);
    out.swap(answers_);
    return out;
  }

 private:
  const int fd_;
  std::mutex mu_;
  std::vector<answer> answers_;
};

// The limiter's warnings (store failures, at most one per 10 s), kept until a thread holding
// the GIL hands them to Python's `logging` (logger "sluice"). They are made wherever the
// limiter notices the failure, often on a store's I/O thread, which must not wait for the
// GIL; every call and completion passes them on before it returns.
class warning_queue {
 public:
  void push(std::string_view message) {
    const std::lock_guard lock(mu_);
    if (messages_.size() == kMax) messages_.pop_front();  // the newest say the most
    messages_.emplace_back(message);
    pending_.store(true, std::memory_order_release);
  }

  // Logs what is queued. Precondition: the GIL is held.
  void flush() {
    if (!pending_.load(std::memory_order_acquire)) return;
    std::deque<std::string> out;
    {
      const std::lock_guard lock(mu_);
      out.swap(messages_);
      pending_.store(false, std::memory_order_relaxed);
    }
    try {
      const py::object logger = py::module_::import("logging").attr("getLogger")("sluice");
      for (const auto& m : out) logger.attr("warning")("%s", m);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("sluice: logging a warning");
    }
  }

 private:
  static constexpr std::size_t kMax = 16;
  std::mutex mu_;
  std::deque<std::string> messages_;
  std::atomic<bool> pending_{false};
};

class py_limiter {
 public:
  py_limiter(const std::string& store_uri, const py::object& policies)
      : warnings_(std::make_shared<warning_queue>()), lim_(open(store_uri, warnings_)) {
    sync_ = dynamic_cast<const sluice::sync_store*>(&lim_->store()) != nullptr;
    if (policies.is_none()) return;
    const py::object mapping = py::module_::import("collections.abc").attr("Mapping");
    if (!py::isinstance(policies, mapping)) {
      throw py::type_error("policies must be a mapping of names to policies, not " +
                           type_name(policies));
    }
    for (const auto& [name, spec] : py::dict(policies)) {
      if (!PyUnicode_Check(name.ptr())) {
        throw py::type_error("policy names must be str, not " + type_name(name));
      }
      auto p = to_policy(name.cast<std::string>(), spec);
      if (!p) raise(p.error());
      if (auto added = lim_->add_policy(std::move(*p)); !added) raise(added.error());
    }
  }

  py_limiter(const py_limiter&) = delete;
  py_limiter& operator=(const py_limiter&) = delete;

  // Stops watching the mailboxes of loops still open. No call is in flight: each holds a
  // reference to the Limiter until its answer is in.
  ~py_limiter() {
    for (auto& ch : channels_) {
      try {
        if (!ch->loop.attr("is_closed")().cast<bool>()) {
          ch->loop.attr("remove_reader")(ch->box->fd());
        }
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("sluice: closing a Limiter");
      }
    }
  }

  enum class call { acquire, peek };

  py::object decide(call c, py::handle policy, py::handle key, std::int64_t cost) {
    const auto t = resolve(policy);
    if (!t) raise(t.error());
    const std::string_view k = key_view(key);
    const sluice::result<sluice::decision> r = outside_gil([&] {
      return c == call::acquire ? lim_->acquire(t->get(), k, cost) : lim_->peek(t->get(), k, cost);
    });
    warnings_->flush();
    if (!r) raise(r.error());
    return to_python(*r);
  }

  void reset(py::handle policy, py::handle key) {
    const auto t = resolve(policy);
    if (!t) raise(t.error());
    const std::string_view k = key_view(key);
    const sluice::result<void> r = outside_gil([&] { return lim_->reset(t->get(), k); });
    warnings_->flush();
    if (!r) raise(r.error());
  }

  py::object refund(py::handle policy, py::handle key, std::int64_t cost) {
    const auto t = resolve(policy);
    if (!t) raise(t.error());
    const std::string_view k = key_view(key);
    const sluice::result<sluice::decision> r =
        outside_gil([&] { return lim_->refund(t->get(), k, cost); });
    warnings_->flush();
    if (!r) raise(r.error());
    return to_python(*r);
  }

  // Returns the decisions of (policy, key[, cost]) items, all or nothing.
  py::list acquire_all(py::handle items) {
    if (!PyList_Check(items.ptr()) && !PyTuple_Check(items.ptr())) {
      throw py::type_error("items must be a list of (policy, key[, cost]) tuples, not " +
                           type_name(items));
    }
    const auto seq = py::reinterpret_borrow<py::sequence>(items);
    std::vector<target> targets;  // keep inline policies alive for the call
    std::vector<sluice::spend> spends;
    targets.reserve(seq.size());
    spends.reserve(seq.size());
    for (const py::handle item : seq) {
      if (!PyTuple_Check(item.ptr()) ||
          (PyTuple_GET_SIZE(item.ptr()) != 2 && PyTuple_GET_SIZE(item.ptr()) != 3)) {
        throw py::type_error("each item is a (policy, key) or (policy, key, cost) tuple, not " +
                             type_name(item));
      }
      const auto t = py::reinterpret_borrow<py::tuple>(item);
      auto resolved = resolve(t[0]);
      if (!resolved) raise(resolved.error());
      targets.push_back(std::move(*resolved));
      std::int64_t cost = 1;
      if (t.size() == 3) {
        if (!PyLong_Check(t[2].ptr()) || PyBool_Check(t[2].ptr())) {
          throw py::type_error("a cost must be an int, not " + type_name(t[2]));
        }
        cost = t[2].cast<std::int64_t>();
      }
      spends.push_back({&targets.back().get(), key_view(t[1]), cost});
    }
    const auto r = outside_gil([&] { return lim_->acquire_all(spends); });
    warnings_->flush();
    if (!r) raise(r.error());
    py::list out;
    for (const sluice::decision& d : *r) out.append(to_python(d));
    return out;
  }

  // Returns an asyncio future of the running loop that the decision completes.
  static py::object decide_async(const py::object& self, call c, py::handle policy, py::handle key,
                                 std::int64_t cost) {
    auto& me = self.cast<py_limiter&>();
    const py::object loop = py::handle(get_running_loop)();
    py::object future = loop.attr("create_future")();
    auto t = me.resolve(policy);
    if (!t) {
      future.attr("set_exception")(make_exception(t.error()));
      return future;
    }
    const std::string_view k = key_view(key);
    // Shared: another thread may add a channel while this one waits in `start`.
    const std::shared_ptr<channel> ch = me.channel_for(loop);
    const std::uint64_t id = ++me.last_id_;
    const py::int_ py_id(id);
    // The entry keeps the Limiter (so its store) alive until the answer is in.
    ch->calls[py_id] = py::make_tuple(future, self);
    // A store that decides on the calling thread (the memory store, a breaker that is
    // open) answers inside `start`: that answer is kept here and given at once.
    struct inline_answer {
      std::thread::id caller = std::this_thread::get_id();
      bool returned = false;  // read and written by the caller's thread only
      std::optional<sluice::result<sluice::decision>> outcome;
    };
    auto here = std::make_shared<inline_answer>();
    auto done = [box = ch->box, id, here,
                 keep = t->inline_policy](sluice::result<sluice::decision> r) {
      if (std::this_thread::get_id() == here->caller && !here->returned) {
        here->outcome.emplace(std::move(r));
      } else {
        box->post(id, std::move(r));
      }
    };
    const sluice::policy& pol = t->get();
    me.outside_gil([&] { me.start(c, pol, k, cost, std::move(done)); });
    here->returned = true;
    if (here->outcome) {
      PyDict_DelItem(ch->calls.ptr(), py_id.ptr());
      complete(future, *here->outcome);
    }
    me.warnings_->flush();
    return future;
  }

  std::string describe() { return lim_->store().describe(); }

 private:
  // A registered policy, or an inline one owned here (and by pending completions).
  struct target {
    const sluice::policy* named = nullptr;
    std::shared_ptr<const sluice::policy> inline_policy;
    const sluice::policy& get() const { return named != nullptr ? *named : *inline_policy; }
  };

  static std::unique_ptr<sluice::limiter> open(const std::string& uri,
                                               std::shared_ptr<warning_queue> warnings) {
    auto s = sluice::open_store(uri);
    if (!s) raise(s.error());
    sluice::limiter_options o;
    o.store = std::move(*s);
    o.warn = [w = std::move(warnings)](std::string_view message) { w->push(message); };
    return std::make_unique<sluice::limiter>(std::move(o));
  }

 public:
  // Returns the limit of a registered policy's name or an inline limit, as the calls read
  // `policy`.
  std::pair<std::int64_t, double> limit_of(py::handle policy) const {
    const auto t = resolve(policy);
    if (!t) raise(t.error());
    const sluice::limit& l = t->get().limit;
    return {l.count, seconds(l.window)};
  }

 private:
  // A str is a policy's name when one has it, else a limit if it looks like one ("10/1m",
  // "10 per minute": policy names have neither '/' nor spaces); a tuple is a limit. Inline
  // limits are unscoped sliding_log policies that fail open, as the server's.
  sluice::result<target> resolve(py::handle spec) const {
    if (PyUnicode_Check(spec.ptr())) {
      const std::string_view name = key_view(spec);
      if (const auto* p = lim_->find_policy(name)) return target{p, nullptr};
      if (name.find_first_of("/ ") == std::string_view::npos) {
        return sluice::make_error(sluice::errc::unknown_policy,
                                  "no policy named \"" + std::string(name.substr(0, 64)) + "\"");
      }
    } else if (!PyTuple_Check(spec.ptr())) {
      throw py::type_error("policy must be a policy name (str) or a limit (str or tuple), not " +
                           type_name(spec));
    }
    auto l = to_limit(spec);
    if (!l) return sluice::fail(l.error());
    auto p = std::make_shared<sluice::policy>();
    p->limit = *l;
    return target{nullptr, std::move(p)};
  }

  // Runs `f` with the GIL released when the store may wait (a remote store), else holding it:
  // on the memory store, releasing it measured 5-10% slower per call from one thread.
  template <class F>
  auto outside_gil(F&& f) const -> decltype(f()) {
    if (sync_) return f();
    const py::gil_scoped_release nogil;
    return f();
  }

  void start(call c, const sluice::policy& p, std::string_view key, std::int64_t cost,
             sluice::limiter::completion done) {
    if (c == call::acquire) {
      lim_->async_acquire(p, key, cost, std::move(done));
    } else {
      lim_->async_peek(p, key, cost, std::move(done));
    }
  }

  // The async calls of one asyncio loop: the loop watches `box`; `calls` maps each call in
  // flight to (its future, the Limiter).
  struct channel {
    py::object loop;
    std::shared_ptr<mailbox> box;
    py::dict calls;
  };

  // Completes `future` with `outcome` unless it is done already (cancelled meanwhile).
  static void complete(const py::object& future, const sluice::result<sluice::decision>& r) {
    if (future.attr("done")().cast<bool>()) return;
    if (r) {
      future.attr("set_result")(to_python(*r));
    } else {
      future.attr("set_exception")(make_exception(r.error()));
    }
  }

  // Completes the calls whose answers `box` holds; run by `loop` when its eventfd is ready.
  static void drain(mailbox& box, const py::dict& calls, warning_queue& warnings) {
    warnings.flush();
    for (auto& a : box.take()) {
      const py::int_ id(a.id);
      PyObject* entry = PyDict_GetItemWithError(calls.ptr(), id.ptr());
      if (entry == nullptr) continue;  // its loop was closed and the call forgotten
      const auto call = py::reinterpret_borrow<py::tuple>(entry);
      PyDict_DelItem(calls.ptr(), id.ptr());
      try {
        complete(call[0], a.outcome);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("sluice: completing an asyncio future");
      }
    }  // `call` may hold the last reference to the Limiter: it goes here, on the loop
  }

  // Returns the channel of `loop`, made and watched on first use. Channels of loops closed
  // since are dropped then, with the calls they still held (nobody can await those).
  std::shared_ptr<channel> channel_for(const py::object& loop) {
    if (!channels_.empty() && channels_.back()->loop.is(loop)) return channels_.back();
    for (auto& ch : channels_) {
      if (ch->loop.is(loop)) return ch;
    }
    std::erase_if(channels_, [](const std::shared_ptr<channel>& ch) {
      if (!ch->loop.attr("is_closed")().cast<bool>()) return false;
      ch->calls.clear();
      return true;
    });
    auto ch = std::make_shared<channel>(channel{loop, std::make_shared<mailbox>(), py::dict()});
    auto on_ready = py::cpp_function([box = ch->box, calls = ch->calls, warnings = warnings_] {
      drain(*box, calls, *warnings);
    });
    loop.attr("add_reader")(ch->box->fd(), on_ready);
    channels_.push_back(ch);
    return ch;
  }

  std::vector<std::shared_ptr<channel>> channels_;  // touched with the GIL held only
  std::uint64_t last_id_ = 0;
  std::shared_ptr<warning_queue> warnings_;  // the limiter's warn pushes here
  std::unique_ptr<sluice::limiter> lim_;     // never null
  bool sync_ = false;  // the store decides on the caller's thread and never waits
};

PyObject* new_exception(py::module_& m, const char* name, PyObject* base, const char* doc) {
  const std::string qualified = std::string("sluice.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, base, nullptr);
  if (type == nullptr) throw py::error_already_set();
  m.add_object(name, py::handle(type));  // the module takes a reference; ours is kept
  return type;
}

}  // namespace

PYBIND11_MODULE(_sluice, m) {
  m.doc() = "sluice's rate limiter, compiled. Import it as `sluice`.";

  store_error_type = new_exception(
      m, "StoreError", PyExc_Exception,
      "The store failed (unreachable, timed out, full, or answered something unusable) and\n"
      "nothing decided in its place. `code` names the failure: store_unavailable, timeout,\n"
      "store_error, store_full or unsupported_store.");
  unknown_policy_type =
      new_exception(m, "UnknownPolicyError", PyExc_LookupError,
                    "No policy has that name (and it is not a limit such as \"10/1m\"). `code` is\n"
                    "\"unknown_policy\".");
  get_running_loop =
      py::object(py::module_::import("asyncio").attr("get_running_loop")).release().ptr();

  const char* fallbacks[] = {"allow", "deny", "local"};
  for (int i = 0; i < 3; ++i) {
    // In failure_mode's order, which to_python indexes by.
    if (std::string_view(to_string(static_cast<sluice::failure_mode>(i))) != fallbacks[i]) {
      throw std::logic_error("sluice: failure_mode names are out of order");
    }
    fallback_names[i] = PyUnicode_InternFromString(fallbacks[i]);
    if (fallback_names[i] == nullptr) throw py::error_already_set();
  }
  decision_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&decision_spec));
  if (decision_type == nullptr) throw py::error_already_set();
  m.add_object("Decision", py::handle(reinterpret_cast<PyObject*>(decision_type)));

  using call = py_limiter::call;
  py::class_<py_limiter>(
      m, "Limiter",
      "Named policies bound to a store. Thread-safe: share one among threads and tasks.\n\n"
      "    limiter = sluice.Limiter(\"memory://\", {\"chat\": \"30/hour\"})\n"
      "    if not limiter.acquire(\"chat\", \"user:42\"): ...\n")
      .def(py::init<const std::string&, const py::object&>(), py::arg("store") = "memory://",
           py::arg("policies") = py::none(),
           "Opens `store` (memory://, redis://, unix://, redis+cluster://, redis+sentinel://...)\n"
           "and registers `policies`: name -> a limit (\"30/hour\" or (30, 3600.0)) or a dict\n"
           "{\"limit\": ..., \"algorithm\": \"sliding_log\" | \"sliding_counter\" | \"gcra\",\n"
           "\"on_failure\": \"allow\" | \"deny\" | \"local\", \"shadow\": bool, \"deny_cache\":\n"
           "bool} (only limit required; deny_cache: once the store denies a key, deny it again\n"
           "in this process until the wait it gave is over, without asking the store). Raises "
           "ValueError for a bad URI or policy, StoreError for a store this\n"
           "build does not provide.")
      .def(
          "acquire",
          [](py_limiter& l, py::handle policy, py::handle key, std::int64_t cost) {
            return l.decide(call::acquire, policy, key, cost);
          },
          py::arg("policy"), py::arg("key"), py::arg("cost") = 1,
          "Returns the decision for `key` spending `cost` under `policy`, recording it when\n"
          "allowed. `policy` is a registered policy's name or an inline limit (\"10/1m\" or\n"
          "(10, 60.0): an unscoped sliding_log policy that fails open); `key` is str or\n"
          "bytes. Raises ValueError for bad input and UnknownPolicyError for an unknown name.\n"
          "Releases the GIL while a remote store answers.")
      .def(
          "peek",
          [](py_limiter& l, py::handle policy, py::handle key, std::int64_t cost) {
            return l.decide(call::peek, policy, key, cost);
          },
          py::arg("policy"), py::arg("key"), py::arg("cost") = 1,
          "Returns the decision `acquire` would give, spending nothing.")
      .def("reset", &py_limiter::reset, py::arg("policy"), py::arg("key"),
           "Forgets `key` under `policy`. Raises StoreError when the store fails (or its\n"
           "circuit breaker is open): the state kept there is then not forgotten.")
      .def("refund", &py_limiter::refund, py::arg("policy"), py::arg("key"), py::arg("cost"),
           "Gives back up to `cost` units that acquires of `key` spent under `policy` (never\n"
           "more than the full limit) and returns what peek of one unit answers then. Raises\n"
           "StoreError when the store fails: nothing is given back there.")
      .def("acquire_all", &py_limiter::acquire_all, py::arg("items"),
           "Decides several limits at once, all or nothing: `items` is a list of (policy, key)\n"
           "or (policy, key, cost) tuples (cost 0 only checks). Returns one Decision per item;\n"
           "the request is admitted when all are allowed, and then every limit was spent;\n"
           "when any is denied none was (each says what that limit alone would get).")
      .def(
          "acquire_async",
          [](py::object self, py::handle policy, py::handle key, std::int64_t cost) {
            return py_limiter::decide_async(self, call::acquire, policy, key, cost);
          },
          py::arg("policy"), py::arg("key"), py::arg("cost") = 1,
          "Returns an awaitable (an asyncio.Future of the running loop) of what `acquire`\n"
          "returns; the loop never blocks on the store. sluice's errors are raised by the\n"
          "await (a TypeError by the call). Needs a running loop (else RuntimeError).\n"
          "Cancelling it is safe; a decision already made by the store stands.")
      .def(
          "peek_async",
          [](py::object self, py::handle policy, py::handle key, std::int64_t cost) {
            return py_limiter::decide_async(self, call::peek, policy, key, cost);
          },
          py::arg("policy"), py::arg("key"), py::arg("cost") = 1,
          "Returns an awaitable of what `peek` returns.")
      .def("limit", &py_limiter::limit_of, py::arg("policy"),
           "Returns (count, window in seconds) of `policy`: a registered policy's name or an\n"
           "inline limit, read as acquire reads it. Raises ValueError or UnknownPolicyError.")
      .def_property_readonly("store", &py_limiter::describe,
                             "The store's URI, without credentials.")
      .def("__repr__", [](py_limiter& l) {
        return "sluice.Limiter(" + std::string(py::repr(py::str(l.describe()))) + ")";
      });

  m.def(
      "parse_limit",
      [](py::handle spec) {
        auto l = to_limit(spec);
        if (!l) raise(l.error());
        return std::make_pair(l->count, seconds(l->window));
      },
      py::arg("limit"),
      "Returns (count, window in seconds) of a limit: \"30/hour\", \"10/1m\", \"2/500ms\",\n"
      "\"10 per minute\", or a (count, seconds) tuple. Raises ValueError when it is not one.");
}
