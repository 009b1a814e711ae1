// The gRPC transport of `sluice serve` with real gRPC clients (the generated C++ stubs, and
// gRPC's generic stub for bytes that are no RateLimitRequest) on loopback, port 0. The
// handler here answers from the request alone (transport only, no limiter): each descriptor
// gets a status named after its entries.
#include "server/grpc_server.h"

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "envoy/service/ratelimit/v3/rls.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/serve.h"

namespace sluice::server {
namespace {

using namespace std::chrono_literals;
namespace health = grpc::health::v1;
using response_code = rls::RateLimitResponse::Code;
using unit = rls::RateLimitResponse::RateLimit::Unit;

constexpr const char* kMethod = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
// Every wait in these tests is for something that happens in milliseconds; this long means
// it never will.
constexpr auto kPatience = 30s;

// Fills `response` from `request` alone: status i is named after descriptor i's entries
// ("k=v,k2=v2"), OVER_LIMIT when an entry's key is "deny"; every other field says which
// request it answers.
void echo(const rls::RateLimitRequest& request, rls::RateLimitResponse* response) {
  bool over = false;
  for (int i = 0; i < request.descriptors_size(); ++i) {
    const auto& d = request.descriptors(i);
    auto* s = response->add_statuses();
    std::string name;
    bool deny = false;
    for (const auto& e : d.entries()) {
      name += (name.empty() ? "" : ",") + e.key() + "=" + e.value();
      deny = deny || e.key() == "deny";
    }
    over = over || deny;
    s->set_code(deny ? rls::RateLimitResponse::OVER_LIMIT : rls::RateLimitResponse::OK);
    s->mutable_current_limit()->set_name(name);
    s->mutable_current_limit()->set_requests_per_unit(d.has_limit() ? d.limit().requests_per_unit()
                                                                    : 100);
    s->mutable_current_limit()->set_unit(d.has_limit() ? static_cast<unit>(d.limit().unit())
                                                       : rls::RateLimitResponse::RateLimit::WEEK);
    s->set_limit_remaining(d.has_hits_addend() ? static_cast<std::uint32_t>(d.hits_addend().value())
                                               : request.hits_addend());
    s->mutable_duration_until_reset()->set_seconds(i + 1);
    s->mutable_duration_until_reset()->set_nanos(500'000'000);
    s->mutable_quota()->set_requests(static_cast<std::uint32_t>(i + 1));
    s->mutable_quota()->mutable_valid_until()->set_seconds(1'700'000'000 + i);
    s->mutable_quota()->set_id("q" + std::to_string(i));
  }
  response->set_overall_code(over ? rls::RateLimitResponse::OVER_LIMIT
                                  : rls::RateLimitResponse::OK);
  auto* h = response->add_response_headers_to_add();
  h->set_key("x-domain");
  h->set_value(request.domain());
  auto* r = response->add_request_headers_to_add();
  r->set_key("x-raw");
  r->set_raw_value(std::string("\xff\x00\x01", 3));
  response->set_raw_body(std::string("over\0limit", 10));
  auto& fields = *response->mutable_dynamic_metadata()->mutable_fields();
  fields["domain"].set_string_value(request.domain());
  fields["descriptors"].set_number_value(request.descriptors_size());
  response->mutable_quota()->set_requests(7);
  response->mutable_quota()->set_id("all");
}

// A call the handler holds instead of answering.
struct held_call {
  const rls::RateLimitRequest* request;
  rls::RateLimitResponse* response;
  rls_done done;
};

// The handler of these tests. It answers at once (`echo`), holds calls for the test to answer
// later, holds every other call, drops them unanswered or throws, as `how` says. Thread-safe.
class test_handler final : public rls_handler {
 public:
  enum class mode { answer, hold, hold_half, drop, fail };

  void should_rate_limit(const rls::RateLimitRequest& request, rls::RateLimitResponse* response,
                         rls_done done) override {
    const int n = calls.fetch_add(1);
    {
      std::lock_guard lock(mu_);
      last_ = request;
    }
    mode m = how.load();
    if (m == mode::hold_half) m = n % 2 == 0 ? mode::hold : mode::answer;
    switch (m) {
      case mode::answer:
        echo(request, response);
        done(grpc::Status::OK);
        return;
      case mode::hold:
      case mode::hold_half: {
        std::lock_guard lock(mu_);
        held_.push_back({&request, response, std::move(done)});
        cv_.notify_all();
        return;
      }
      case mode::drop:
        return;
      case mode::fail:
        throw std::runtime_error("a bug in the handler");
    }
  }

  // Returns the `n` calls held first once there are that many (fewer after kPatience).
  std::vector<held_call> take_held(std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kPatience, [&] { return held_.size() >= n; });
    std::vector<held_call> out;
    while (!held_.empty() && out.size() < n) {
      out.push_back(std::move(held_.front()));
      held_.erase(held_.begin());
    }
    return out;
  }

  // Returns the last request the handler saw.
  rls::RateLimitRequest last() {
    std::lock_guard lock(mu_);
    return last_;
  }

  std::atomic<mode> how{mode::answer};
  std::atomic<int> calls{0};

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<held_call> held_;
  rls::RateLimitRequest last_;
};

// Counts arrivals; `wait` returns whether `n` arrived within kPatience.
class countdown {
 public:
  explicit countdown(int n) : left_(n) {}
  void arrive() {
    std::lock_guard lock(mu_);
    if (--left_ <= 0) cv_.notify_all();
  }
  bool wait() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return left_ <= 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

// ShouldRateLimit calls in flight at once, and what each needs until it is answered. The
// destructor cancels the calls still unanswered and waits for them, so that a test that
// fails half-way ends cleanly instead of freeing what gRPC still uses. Not thread-safe.
class async_calls {
 public:
  // Starts one call per request on `stub`.
  async_calls(rls::RateLimitService::Stub& stub, std::vector<rls::RateLimitRequest> requests)
      : calls_(requests.size()), left_(static_cast<int>(requests.size())) {
    for (std::size_t i = 0; i < calls_.size(); ++i) {
      one& c = calls_[i];
      c.request = std::move(requests[i]);
      c.ctx.set_deadline(std::chrono::system_clock::now() + kPatience);
      stub.async()->ShouldRateLimit(&c.ctx, &c.request, &c.response, [this, &c](grpc::Status s) {
        c.status = std::move(s);
        c.answers.fetch_add(1);
        left_.arrive();
      });
    }
  }
  ~async_calls() {
    if (wait()) return;
    for (one& c : calls_) c.ctx.TryCancel();
    left_.wait();
  }

  // Returns whether every call was answered (within kPatience).
  bool wait() { return left_.wait(); }

  std::size_t size() const { return calls_.size(); }
  const grpc::Status& status(std::size_t i) const { return calls_[i].status; }
  const rls::RateLimitResponse& response(std::size_t i) const { return calls_[i].response; }
  // Returns how many times call i's callback ran.
  int answers(std::size_t i) const { return calls_[i].answers.load(); }

 private:
  struct one {
    grpc::ClientContext ctx;
    rls::RateLimitRequest request;
    rls::RateLimitResponse response;
    grpc::Status status;
    std::atomic<int> answers{0};
  };
  std::vector<one> calls_;
  countdown left_;
};

rls::RateLimitRequest request_for(
    const std::string& domain,
    std::initializer_list<std::pair<std::string, std::string>> entries = {{"user", "42"}}) {
  rls::RateLimitRequest r;
  r.set_domain(domain);
  auto* d = r.add_descriptors();
  for (const auto& [k, v] : entries) {
    auto* e = d->add_entries();
    e->set_key(k);
    e->set_value(v);
  }
  return r;
}

// A deadline for a client call that must not hang the test.
void set_deadline(grpc::ClientContext& ctx, std::chrono::milliseconds d = kPatience) {
  ctx.set_deadline(std::chrono::system_clock::now() + d);
}

class GrpcServer : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }

  // (Re)starts the server with `o` (its listen address forced to 127.0.0.1:0).
  void start(grpc_server_options o) {
    server_.reset();
    o.listen = "127.0.0.1:0";
    if (!o.serving) o.serving = [this] { return serving_.load(); };
    server_ = std::make_unique<grpc_server>(std::move(o), handler_);
    auto ok = server_->start();
    ASSERT_TRUE(ok) << ok.error().message();
    ASSERT_NE(server_->port(), 0);
    channel_ = grpc::CreateChannel(server_->local_address(), grpc::InsecureChannelCredentials());
    rls_ = rls::RateLimitService::NewStub(channel_);
    health_ = health::Health::NewStub(channel_);
  }

  // Returns the status of a synchronous ShouldRateLimit call; its response in `*response`.
  grpc::Status call(const rls::RateLimitRequest& request, rls::RateLimitResponse* response,
                    std::chrono::milliseconds deadline = kPatience) {
    grpc::ClientContext ctx;
    set_deadline(ctx, deadline);
    return rls_->ShouldRateLimit(&ctx, request, response);
  }

  // Returns the status of a generic call sending `bytes` as the request.
  grpc::Status call_raw(const std::string& bytes) {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext ctx;
    set_deadline(ctx);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    grpc::Status status;
    stub.UnaryCall(&ctx, kMethod, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
      std::lock_guard lock(mu);
      status = std::move(s);
      finished = true;
      cv.notify_all();
    });
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return finished; });
    return status;
  }

  // Returns the health service's answer for `service`.
  grpc::Status check(const std::string& service, health::HealthCheckResponse* response) {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    health::HealthCheckRequest request;
    request.set_service(service);
    return health_->Check(&ctx, request, response);
  }

  // Expects one call to be answered OK by echo.
  void expect_serves() {
    rls::RateLimitResponse response;
    const grpc::Status s = call(request_for("still-serving"), &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(response.statuses_size(), 1);
    EXPECT_EQ(response.statuses(0).current_limit().name(), "user=42");
  }

  test_handler handler_;
  std::atomic<bool> serving_{true};
  std::unique_ptr<grpc_server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<rls::RateLimitService::Stub> rls_;
  std::unique_ptr<health::Health::Stub> health_;
};

TEST_F(GrpcServer, ShouldRateLimitRoundTripsEveryField) {
  // Verifies that every request field reaches the handler and every response field the client.
  rls::RateLimitRequest request =
      request_for("envoy", {{"remote_address", "10.0.0.1"}, {"path", "/v1/chat"}});
  request.set_hits_addend(3);
  auto* d = request.add_descriptors();
  auto* e = d->add_entries();
  e->set_key("deny");
  e->set_value("");
  d->mutable_limit()->set_requests_per_unit(5);
  d->mutable_limit()->set_unit(envoy::type::v3::HOUR);
  d->mutable_hits_addend()->set_value(9);

  rls::RateLimitResponse response;
  const grpc::Status s = call(request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(handler_.last().SerializeAsString(), request.SerializeAsString());

  EXPECT_EQ(response.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  ASSERT_EQ(response.statuses_size(), 2);
  const auto& first = response.statuses(0);
  EXPECT_EQ(first.code(), rls::RateLimitResponse::OK);
  EXPECT_EQ(first.current_limit().name(), "remote_address=10.0.0.1,path=/v1/chat");
  EXPECT_EQ(first.current_limit().requests_per_unit(), 100u);
  EXPECT_EQ(first.current_limit().unit(), rls::RateLimitResponse::RateLimit::WEEK);
  EXPECT_EQ(first.limit_remaining(), 3u);  // the request's hits_addend
  EXPECT_EQ(first.duration_until_reset().seconds(), 1);
  EXPECT_EQ(first.duration_until_reset().nanos(), 500'000'000);
  EXPECT_EQ(first.quota().requests(), 1u);
  EXPECT_EQ(first.quota().valid_until().seconds(), 1'700'000'000);
  EXPECT_EQ(first.quota().id(), "q0");
  const auto& second = response.statuses(1);
  EXPECT_EQ(second.code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(second.current_limit().name(), "deny=");
  EXPECT_EQ(second.current_limit().requests_per_unit(), 5u);
  EXPECT_EQ(second.current_limit().unit(), rls::RateLimitResponse::RateLimit::HOUR);
  EXPECT_EQ(second.limit_remaining(), 9u);  // the descriptor's own hits_addend
  EXPECT_EQ(second.duration_until_reset().seconds(), 2);
  ASSERT_EQ(response.response_headers_to_add_size(), 1);
  EXPECT_EQ(response.response_headers_to_add(0).key(), "x-domain");
  EXPECT_EQ(response.response_headers_to_add(0).value(), "envoy");
  ASSERT_EQ(response.request_headers_to_add_size(), 1);
  EXPECT_EQ(response.request_headers_to_add(0).raw_value(), std::string("\xff\x00\x01", 3));
  EXPECT_EQ(response.raw_body(), std::string("over\0limit", 10));
  EXPECT_EQ(response.dynamic_metadata().fields().at("domain").string_value(), "envoy");
  EXPECT_EQ(response.dynamic_metadata().fields().at("descriptors").number_value(), 2);
  EXPECT_EQ(response.quota().requests(), 7u);
  EXPECT_EQ(response.quota().id(), "all");
}

// Verifies that a started server has turned off abseil's lock-order detection, which
// Debian's abseil (built without NDEBUG) runs on every absl::Mutex gRPC takes and which aborts
// the process on a cycle: two mutexes taken in both orders must not abort. A death test in a
// fresh process (the threadsafe style runs the test again from the start), so no other test
// has turned it off before.
TEST_F(GrpcServer, StartTurnsOffAbseilLockOrderDetection) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        absl::Mutex a;
        absl::Mutex b;
        a.Lock();
        b.Lock();
        b.Unlock();
        a.Unlock();
        b.Lock();
        a.Lock();
        a.Unlock();
        b.Unlock();
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(GrpcServer, EmptyRequestReachesTheHandler) {
  // Verifies that a request with every field at its default (zero bytes on the wire) is a
  // request, for the handler to judge, not a transport error.
  rls::RateLimitResponse response;
  const grpc::Status s = call(rls::RateLimitRequest(), &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(handler_.calls.load(), 1);
  EXPECT_EQ(response.statuses_size(), 0);
  EXPECT_EQ(response.overall_code(), rls::RateLimitResponse::OK);
}

TEST_F(GrpcServer, ConcurrentCallsAreEachAnsweredOnce) {
  // Verifies that 500 calls in flight at once, half answered inline and half later from
  // another thread, each get their own answer, once.
  constexpr int kCalls = 500;
  handler_.how = test_handler::mode::hold_half;
  // Answers held calls from a thread of its own, as a store's I/O thread would.
  std::thread answerer([&] {
    for (auto& h : handler_.take_held(kCalls / 2)) {
      echo(*h.request, h.response);
      h.done(grpc::Status::OK);
    }
  });
  std::vector<rls::RateLimitRequest> requests;
  for (int i = 0; i < kCalls; ++i)
    requests.push_back(request_for("d", {{"call", std::to_string(i)}}));
  async_calls calls(*rls_, std::move(requests));
  const bool all_answered = calls.wait();
  answerer.join();
  ASSERT_TRUE(all_answered);
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls.answers(i), 1) << "call " << i;
    ASSERT_TRUE(calls.status(i).ok()) << "call " << i << ": " << calls.status(i).error_message();
    ASSERT_EQ(calls.response(i).statuses_size(), 1);
    EXPECT_EQ(calls.response(i).statuses(0).current_limit().name(), "call=" + std::to_string(i));
  }
  EXPECT_EQ(handler_.calls.load(), kCalls);
}

TEST_F(GrpcServer, HeldCallsDoNotHoldGrpcThreads) {
  // Verifies that calls a handler has not answered yet occupy no gRPC thread: with 200 held
  // (more than gRPC has threads), other calls and health checks are answered, and the held
  // ones are answered when the handler answers, from its own thread.
  constexpr int kHeld = 200;
  handler_.how = test_handler::mode::hold;
  std::vector<rls::RateLimitRequest> requests;
  for (int i = 0; i < kHeld; ++i)
    requests.push_back(request_for("held", {{"call", std::to_string(i)}}));
  async_calls calls(*rls_, std::move(requests));
  std::vector<held_call> held = handler_.take_held(kHeld);
  ASSERT_EQ(held.size(), static_cast<std::size_t>(kHeld));

  health::HealthCheckResponse h;
  ASSERT_TRUE(check("", &h).ok());
  EXPECT_EQ(h.status(), health::HealthCheckResponse::SERVING);
  handler_.how = test_handler::mode::answer;
  expect_serves();

  std::thread([&] {
    for (held_call& c : held) {
      echo(*c.request, c.response);
      c.done(grpc::Status::OK);
    }
    held.clear();  // the last copies of `done` go here, on this thread
  }).join();
  ASSERT_TRUE(calls.wait());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    ASSERT_TRUE(calls.status(i).ok()) << calls.status(i).error_message();
    EXPECT_EQ(calls.response(i).statuses(0).current_limit().name(), "call=" + std::to_string(i));
  }
}

TEST_F(GrpcServer, ErrorStatusFromTheHandlerReachesTheClient) {
  // Verifies that a handler's error status is what the client gets, without the response,
  // and that answering twice sends the first answer only.
  handler_.how = test_handler::mode::hold;
  async_calls calls(*rls_, {request_for("unavailable")});
  std::vector<held_call> held = handler_.take_held(1);
  ASSERT_EQ(held.size(), 1u);
  echo(*held[0].request, held[0].response);
  held[0].done(grpc::Status(grpc::StatusCode::UNAVAILABLE, "store down"));
  held[0].done(grpc::Status::OK);
  ASSERT_TRUE(calls.wait());
  EXPECT_EQ(calls.status(0).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(calls.status(0).error_message(), "store down");
  EXPECT_EQ(calls.response(0).statuses_size(), 0);
  EXPECT_EQ(calls.answers(0), 1);
}

TEST_F(GrpcServer, DroppedOrThrowingHandlerIsInternal) {
  // Verifies that a call the handler drops unanswered, or throws on, is answered INTERNAL
  // instead of hanging, and that the server serves on.
  rls::RateLimitResponse response;
  handler_.how = test_handler::mode::drop;
  grpc::Status s = call(request_for("dropped"), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(s.error_message(), "the rate limit handler dropped the call unanswered");
  handler_.how = test_handler::mode::fail;
  s = call(request_for("thrown"), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(s.error_message(), "the rate limit handler failed");
  handler_.how = test_handler::mode::answer;
  expect_serves();
}

TEST_F(GrpcServer, MalformedRequestIsInvalidArgument) {
  // Verifies that bytes that are no RateLimitRequest (a truncated varint, a wrong wire type,
  // invalid UTF-8 in a string field) get INVALID_ARGUMENT without reaching the handler, and
  // that the server serves on.
  rls::RateLimitRequest utf8 = request_for("x", {{"key", "value"}});
  std::string bad_utf8 = utf8.SerializeAsString();
  bad_utf8.replace(bad_utf8.find("value"), 5, "\xff\xfe\xfd\xfc\xfb");
  const std::string malformed[] = {
      std::string("\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11),  // length never ends
      std::string("\x0a\x10short", 7),                                  // length past the end
      std::string("\x0b", 1),                                           // wire type 3 (group)
      bad_utf8,
  };
  for (const std::string& bytes : malformed) {
    const grpc::Status s = call_raw(bytes);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  }
  EXPECT_EQ(handler_.calls.load(), 0);
  expect_serves();
  // The same path with good bytes: the generic stub is not what was refused.
  EXPECT_TRUE(call_raw(request_for("raw").SerializeAsString()).ok());
}

TEST_F(GrpcServer, OversizedRequestIsResourceExhausted) {
  // Verifies that a request over max_receive_message_bytes is refused with
  // RESOURCE_EXHAUSTED before the handler sees it, and one under it is served.
  grpc_server_options o;
  o.max_receive_message_bytes = 4096;
  start(o);
  rls::RateLimitResponse response;
  grpc::Status s = call(request_for("big", {{"path", std::string(5000, 'a')}}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_EQ(handler_.calls.load(), 0);
  s = call(request_for("small", {{"path", std::string(3000, 'a')}}), &response);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(handler_.calls.load(), 1);
}

TEST_F(GrpcServer, HealthFollowsServing) {
  // Verifies that Check answers SERVING or NOT_SERVING as `serving` says, for the server and
  // for the rate limit service, NOT_FOUND for other services; that List names both; and that
  // Watch is UNIMPLEMENTED.
  health::HealthCheckResponse h;
  ASSERT_TRUE(check("", &h).ok());
  EXPECT_EQ(h.status(), health::HealthCheckResponse::SERVING);
  ASSERT_TRUE(check("envoy.service.ratelimit.v3.RateLimitService", &h).ok());
  EXPECT_EQ(h.status(), health::HealthCheckResponse::SERVING);
  serving_ = false;
  ASSERT_TRUE(check("", &h).ok());
  EXPECT_EQ(h.status(), health::HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(check("envoy.service.ratelimit.v3.RateLimitService", &h).ok());
  EXPECT_EQ(h.status(), health::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check("grpc.health.v1.Health", &h).error_code(), grpc::StatusCode::NOT_FOUND);

  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    health::HealthListResponse list;
    ASSERT_TRUE(health_->List(&ctx, health::HealthListRequest(), &list).ok());
    ASSERT_EQ(list.statuses_size(), 2);
    EXPECT_EQ(list.statuses().at("").status(), health::HealthCheckResponse::NOT_SERVING);
    EXPECT_EQ(list.statuses().at("envoy.service.ratelimit.v3.RateLimitService").status(),
              health::HealthCheckResponse::NOT_SERVING);
  }
  grpc::ClientContext ctx;
  set_deadline(ctx);
  auto watch = health_->Watch(&ctx, health::HealthCheckRequest());
  health::HealthCheckResponse ignored;
  EXPECT_FALSE(watch->Read(&ignored));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(GrpcServer, ClientDeadlineCancelsAHeldCall) {
  // Verifies that a held call whose client gives up is answered (DEADLINE_EXCEEDED for the
  // client) without the handler, and that the handler's late answer is dropped harmlessly.
  // One call first, so that the channel is connected: the 100 ms deadline is the held call's
  // alone, not the connection's set-up (which a ThreadSanitizer build can take longer than).
  expect_serves();
  handler_.how = test_handler::mode::hold;
  rls::RateLimitResponse response;
  const grpc::Status s = call(request_for("late"), &response, 100ms);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  std::vector<held_call> held = handler_.take_held(1);
  ASSERT_EQ(held.size(), 1u);
  echo(*held[0].request, held[0].response);
  held[0].done(grpc::Status::OK);
  held.clear();
  handler_.how = test_handler::mode::answer;
  expect_serves();
}

TEST_F(GrpcServer, ShutdownLetsCallsInFlightFinish) {
  // Verifies that shutdown refuses new calls but lets the ones in flight be answered, and
  // that wait() returns once they are.
  constexpr int kHeld = 10;
  handler_.how = test_handler::mode::hold;
  async_calls calls(*rls_, std::vector<rls::RateLimitRequest>(kHeld, request_for("drain")));
  std::vector<held_call> held = handler_.take_held(kHeld);
  ASSERT_EQ(held.size(), static_cast<std::size_t>(kHeld));
  server_->shutdown();
  server_->shutdown();  // again: harmless

  rls::RateLimitResponse refused;
  EXPECT_FALSE(call(request_for("after"), &refused).ok());
  health::HealthCheckResponse h;
  const grpc::Status health_status = check("", &h);
  EXPECT_TRUE(!health_status.ok() || h.status() == health::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(handler_.calls.load(), kHeld);
  std::thread([&] {
    for (held_call& c : held) {
      echo(*c.request, c.response);
      c.done(grpc::Status::OK);
    }
  }).join();
  server_->wait();
  ASSERT_TRUE(calls.wait());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    ASSERT_TRUE(calls.status(i).ok()) << calls.status(i).error_message();
    EXPECT_EQ(calls.response(i).statuses(0).current_limit().name(), "user=42");
  }
}

TEST_F(GrpcServer, ShutdownNowCancelsCallsInFlight) {
  // Verifies that shutdown_now ends the drain: held calls are cancelled, wait() returns
  // without the handler's answers, and answers that come after are dropped harmlessly.
  constexpr int kHeld = 5;
  handler_.how = test_handler::mode::hold;
  async_calls calls(*rls_, std::vector<rls::RateLimitRequest>(kHeld, request_for("cancel")));
  std::vector<held_call> held = handler_.take_held(kHeld);
  ASSERT_EQ(held.size(), static_cast<std::size_t>(kHeld));
  server_->shutdown();
  server_->shutdown_now();
  server_->wait();
  ASSERT_TRUE(calls.wait());
  for (std::size_t i = 0; i < calls.size(); ++i) EXPECT_FALSE(calls.status(i).ok());
  server_.reset();
  for (held_call& c : held) {
    echo(*c.request, c.response);
    c.done(grpc::Status::OK);
  }
}

TEST_F(GrpcServer, DrainTimeoutCancelsCallsNeverAnswered) {
  // Verifies that a drain ends at drain_timeout even when the handler never answers, and
  // that the client sees the call it ends as UNAVAILABLE (the server went away: retry
  // elsewhere, or Envoy's failure mode), not CANCELLED (gRPC's cancel-all sets that code).
  grpc_server_options o;
  o.drain_timeout = 50ms;
  start(o);
  handler_.how = test_handler::mode::hold;
  async_calls calls(*rls_, {request_for("never")});
  std::vector<held_call> held = handler_.take_held(1);
  ASSERT_EQ(held.size(), 1u);
  server_->shutdown();
  server_->wait();
  ASSERT_TRUE(calls.wait());
  EXPECT_EQ(calls.status(0).error_code(), grpc::StatusCode::UNAVAILABLE)
      << calls.status(0).error_message();
}

TEST_F(GrpcServer, PortInUseFailsToStart) {
  // Verifies that a second server on a port in use fails to start, naming the address,
  // instead of sharing the port (gRPC's SO_REUSEPORT default).
  grpc_server_options o;
  o.listen = "127.0.0.1:" + std::to_string(server_->port());
  grpc_server second(o, handler_);
  const result<void> ok = second.start();
  ASSERT_FALSE(ok);
  EXPECT_NE(ok.error().message().find(o.listen), std::string::npos) << ok.error().message();
  EXPECT_EQ(second.port(), 0);
  expect_serves();
}

// `sluice serve` with a gRPC listener: a service whose rate limit handler is the test's.
server_config serve_config() {
  server_config c;
  c.listen = "127.0.0.1:0";
  c.grpc_listen = "127.0.0.1:0";
  c.io_threads = 1;
  c.log_level = "off";
  served_policy p;
  p.policy.name = "chat";
  p.policy.limit = *parse_limit("30/hour");
  c.policies.push_back(p);
  return c;
}

TEST(ServeGrpc, GrpcListenNeedsEnvoyConfig) {
  // Verifies that serve refuses grpc_listen while no rate limit handler can be built for the
  // config (make_rls_handler returns none without envoy_config).
  try {
    service s(serve_config());
    FAIL() << "service started with grpc_listen and no envoy_config";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("grpc_listen needs envoy_config"), std::string::npos)
        << e.what();
  }
}

TEST(ServeGrpc, CliRefusesGrpcListenWithoutEnvoyConfig) {
  // Verifies that `sluice serve --grpc-listen` reaches the service and exits 1 with the
  // reason on stderr.
  const std::filesystem::path err =
      std::filesystem::temp_directory_path() / ("sluice-grpc-cli-" + std::to_string(getpid()));
  const std::string cmd = std::string(SLUICE_CLI_PATH) +
                          " serve --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 >/dev/null 2>" +
                          err.string();
  const int status = std::system(cmd.c_str());
  std::stringstream text;
  text << std::ifstream(err).rdbuf();
  std::filesystem::remove(err);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(text.str().find("grpc_listen needs envoy_config"), std::string::npos) << text.str();
}

TEST(ServeGrpc, ServesGrpcBesideHttpAndDrainsBoth) {
  // Verifies that with a rate limit handler, the service serves gRPC on its own port, says
  // so in its summary, answers health from the store, and that SIGTERM drains the gRPC
  // listener with the HTTP server: a held call is still answered, then wait() returns.
  test_handler* handler = nullptr;
  service s(serve_config(), /*handle_signals=*/true,
            [&](const server_config&, sluice::limiter&, metrics&) {
              auto h = std::make_unique<test_handler>();
              handler = h.get();
              return h;
            });
  ASSERT_NE(handler, nullptr);
  s.start();
  const std::string address = s.grpc_address();
  ASSERT_FALSE(address.empty());
  EXPECT_NE(address, s.local_address());
  EXPECT_NE(s.summary().find("gRPC (Envoy rate limit service, health) on " + address),
            std::string::npos)
      << s.summary();

  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = rls::RateLimitService::NewStub(channel);
  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    health::HealthCheckResponse h;
    ASSERT_TRUE(
        health::Health::NewStub(channel)->Check(&ctx, health::HealthCheckRequest(), &h).ok());
    EXPECT_EQ(h.status(), health::HealthCheckResponse::SERVING);  // memory:// is ready
  }
  handler->how = test_handler::mode::hold;
  async_calls calls(*stub, {request_for("serve")});
  std::vector<held_call> held = handler->take_held(1);
  ASSERT_EQ(held.size(), 1u);

  ASSERT_EQ(::raise(SIGTERM), 0);
  std::thread answer([&] {
    echo(*held[0].request, held[0].response);
    held[0].done(grpc::Status::OK);
  });
  s.wait();
  answer.join();
  ASSERT_TRUE(calls.wait());
  ASSERT_TRUE(calls.status(0).ok()) << calls.status(0).error_message();
  EXPECT_EQ(calls.response(0).statuses(0).current_limit().name(), "user=42");
}

}  // namespace
}  // namespace sluice::server
