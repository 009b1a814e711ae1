// The gRPC listener: a raw callback method for ShouldRateLimit (the request is parsed here, so
// a malformed one is answered INVALID_ARGUMENT and its message and response live as long as
// the handler needs them, not as long as gRPC's call), and a typed callback service for health.
#include "server/grpc_server.h"

#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>

#include <google/protobuf/arena.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <mutex>
#include <thread>
#include <utility>

#include "envoy/service/ratelimit/v3/rls.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace sluice::server {
namespace {

namespace health = grpc::health::v1;

// The name the health service answers for besides "" (the whole server).
constexpr std::string_view kRlsServiceName = "envoy.service.ratelimit.v3.RateLimitService";

// One ShouldRateLimit call as the handler sees it: the request, the response, and whether it
// has been answered. Deleted by the last reference: its reactor's (until gRPC's OnDone, which
// comes only after Finish) and one per live copy of the call's rls_done. Kept apart from the
// reactor, which gRPC hands between its threads in ways a ThreadSanitizer build cannot see
// (docs/DESIGN.md, "Testing and CI"): what the handler's threads touch changes hands through
// these atomics only. Thread-safe.
class rls_call {
 public:
  // `reactor` and gRPC's buffer for the response bytes, `reply`, are valid until the call is
  // answered.
  rls_call(grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* reply)
      : reactor_(reactor), reply_(reply) {}

 private:
  // The call's messages live in an arena whose first block is part of the call, so parsing
  // the request and building the response allocate nothing of their own for a usual call
  // (strings longer than the standard library keeps inline still do).
  static google::protobuf::ArenaOptions arena_options(char* block, std::size_t size) {
    google::protobuf::ArenaOptions o;
    o.initial_block = block;
    o.initial_block_size = size;
    return o;
  }
  alignas(std::max_align_t) char arena_block_[2048];
  google::protobuf::Arena arena_{arena_options(arena_block_, sizeof(arena_block_))};

 public:
  rls::RateLimitRequest& request =
      *google::protobuf::Arena::CreateMessage<rls::RateLimitRequest>(&arena_);
  rls::RateLimitResponse& response =
      *google::protobuf::Arena::CreateMessage<rls::RateLimitResponse>(&arena_);

  // Returns true when this answered the call: sends `response` (status OK) or `status`.
  // Returns false, doing nothing, when the call was answered already.
  bool answer(const grpc::Status& status) {
    if (answered_.exchange(true, std::memory_order_acq_rel)) return false;
    if (!status.ok()) {
      reactor_->Finish(status);
      return true;
    }
    bool own_buffer = false;
    reactor_->Finish(grpc::SerializationTraits<rls::RateLimitResponse>::Serialize(response, reply_,
                                                                                  &own_buffer));
    return true;
  }

  // A copy of the call's rls_done was made.
  void answer_copied() {
    answers_.fetch_add(1, std::memory_order_relaxed);
    refs_.fetch_add(1, std::memory_order_relaxed);
  }
  // A copy of the call's rls_done was destroyed: the last one answers the call if nothing did.
  void answer_dropped() {
    if (answers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      answer(grpc::Status(grpc::StatusCode::INTERNAL,
                          "the rate limit handler dropped the call unanswered"));
    }
    unref();
  }

  void unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  grpc::ServerUnaryReactor* const reactor_;
  grpc::ByteBuffer* const reply_;
  std::atomic<bool> answered_{false};
  std::atomic<int> refs_{1};  // the reactor's until OnDone, plus answers_
  std::atomic<int> answers_{0};
};

// The reactor gRPC drives for one call. Deleted by gRPC's OnDone, on a gRPC thread, while its
// rls_call may live on until the handler lets go of it.
class rls_reactor final : public grpc::ServerUnaryReactor {
 public:
  explicit rls_reactor(grpc::ByteBuffer* reply) : call_(new rls_call(this, reply)) {}

  rls_call& call() { return *call_; }

  // The client cancelled, its deadline passed, or the server's drain ended: answer now, so
  // that gRPC can end the call; whatever the handler sends later is dropped.
  void OnCancel() override { call_->answer(grpc::Status::CANCELLED); }
  void OnDone() override {
    call_->unref();
    delete this;
  }

 private:
  rls_call* const call_;
};

// The callable inside an rls_done: a counted reference to its call.
class call_answer {
 public:
  explicit call_answer(rls_call* call) : call_(call) { call_->answer_copied(); }
  call_answer(const call_answer& other) : call_(other.call_) {
    if (call_ != nullptr) call_->answer_copied();
  }
  call_answer(call_answer&& other) noexcept : call_(std::exchange(other.call_, nullptr)) {}
  call_answer& operator=(const call_answer&) = delete;
  call_answer& operator=(call_answer&&) = delete;
  ~call_answer() {
    if (call_ != nullptr) call_->answer_dropped();
  }

  void operator()(const grpc::Status& status) const {
    if (call_ != nullptr) call_->answer(status);
  }

 private:
  rls_call* call_;
};

class rls_service final : public rls::RateLimitService::WithRawCallbackMethod_ShouldRateLimit<
                              rls::RateLimitService::Service> {
 public:
  rls_service(rls_handler& handler, const std::atomic<bool>& draining)
      : handler_(handler), draining_(draining) {}

  // Returns the reactor of a new call, which may be answered already: a malformed request
  // gets INVALID_ARGUMENT, and any call once the drain has begun UNAVAILABLE, without
  // reaching the handler.
  grpc::ServerUnaryReactor* ShouldRateLimit(grpc::CallbackServerContext* /*context*/,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* reply) override {
    auto* reactor = new rls_reactor(reply);
    rls_call* call = &reactor->call();
    // gRPC refuses new calls itself once its Shutdown runs; this covers the moment before.
    if (draining_.load(std::memory_order_relaxed)) {
      call->answer(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      return reactor;
    }
    // An empty message (every field at its default) may arrive as no buffer at all.
    if (request->Valid()) {
      grpc::ByteBuffer bytes(*request);  // shares the slices; parsing consumes the copy
      if (!grpc::SerializationTraits<rls::RateLimitRequest>::Deserialize(&bytes, &call->request)
               .ok()) {
        call->answer(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  "not a RateLimitRequest: malformed protobuf"));
        return reactor;
      }
    }
    // Held across the handler's call: a handler that throws has its `done` destroyed by the
    // unwinding, which must not answer "dropped" before the catch answers "failed".
    const call_answer keep(call);
    try {
      handler_.should_rate_limit(call->request, &call->response, keep);
    } catch (...) {
      // The handler must not throw; one that does still answers its caller.
      call->answer(grpc::Status(grpc::StatusCode::INTERNAL, "the rate limit handler failed"));
    }
    return reactor;
  }

 private:
  rls_handler& handler_;
  const std::atomic<bool>& draining_;
};

class health_service final : public health::Health::CallbackService {
 public:
  health_service(const std::function<bool()>& serving, const std::atomic<bool>& draining)
      : serving_(serving), draining_(draining) {}

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const health::HealthCheckRequest* request,
                                  health::HealthCheckResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (!request->service().empty() && request->service() != kRlsServiceName) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service"));
    } else {
      response->set_status(status());
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const health::HealthListRequest* /*request*/,
                                 health::HealthListResponse* response) override {
    const health::HealthCheckResponse::ServingStatus s = status();
    (*response->mutable_statuses())[""].set_status(s);
    (*response->mutable_statuses())[std::string(kRlsServiceName)].set_status(s);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // Watch is left UNIMPLEMENTED (the generated default): Kubernetes and Envoy call Check, and
  // a stream that never ends would hold every drain for its whole drain_timeout.

 private:
  // NOT_SERVING once the drain has begun: a probe should send no more calls this way.
  health::HealthCheckResponse::ServingStatus status() const {
    const bool up = !draining_.load(std::memory_order_relaxed) && (!serving_ || serving_());
    return up ? health::HealthCheckResponse::SERVING : health::HealthCheckResponse::NOT_SERVING;
  }

  const std::function<bool()>& serving_;
  const std::atomic<bool>& draining_;
};

int to_int_ms(std::chrono::milliseconds d) {
  return static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(d.count(), 0, INT_MAX));
}

}  // namespace

struct grpc_server::impl {
  impl(grpc_server_options o, rls_handler& handler)
      : options(std::move(o)), rls(handler, draining), health(options.serving, draining) {}

  grpc_server_options options;
  std::atomic<bool> draining{false};  // set by stop(), before gRPC's Shutdown begins
  rls_service rls;
  health_service health;
  std::unique_ptr<grpc::Server> server;  // declared after the services it uses
  int port = 0;
  std::mutex mu;          // guards stopping and stopper
  bool stopping = false;  // once set, stays set
  std::thread stopper;    // runs the blocking grpc::Server::Shutdown

  // Starts the shutdown with `drain` for calls in flight, or shortens a running one to 0.
  void stop(std::chrono::milliseconds drain);
};

grpc_server::grpc_server(grpc_server_options options, rls_handler& handler)
    : impl_(std::make_unique<impl>(std::move(options), handler)) {}

grpc_server::~grpc_server() {
  shutdown();
  wait();
}

void quiet_abseil_mutexes() noexcept {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

result<void> grpc_server::start() {
  impl& s = *impl_;
  if (s.server) return {};
  quiet_abseil_mutexes();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!s.options.tls_cert_pem.empty()) {
    grpc::SslServerCredentialsOptions tls(
        s.options.tls_client_ca_pem.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    tls.pem_root_certs = s.options.tls_client_ca_pem;
    tls.pem_key_cert_pairs.push_back({s.options.tls_key_pem, s.options.tls_cert_pem});
    credentials = grpc::SslServerCredentials(tls);
  }
  builder.AddListeningPort(s.options.listen, credentials, &s.port);
  builder.RegisterService(&s.rls);
  builder.RegisterService(&s.health);
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<std::size_t>(s.options.max_receive_message_bytes, INT_MAX)));
  // A port in use is an error, as for the HTTP listener; gRPC would share it by default.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, to_int_ms(s.options.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, to_int_ms(s.options.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             to_int_ms(s.options.min_client_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  s.server = builder.BuildAndStart();
  if (!s.server || s.port == 0) {
    s.server.reset();
    s.port = 0;
    return fail(sluice::error{
        std::make_error_code(std::errc::address_not_available),
        "cannot listen for gRPC on " + s.options.listen +
            ": the address is in use, not an address of this host, or not HOST:PORT"});
  }
  return {};
}

std::uint16_t grpc_server::port() const { return static_cast<std::uint16_t>(impl_->port); }

std::string grpc_server::local_address() const {
  const std::string& listen = impl_->options.listen;
  return listen.substr(0, listen.rfind(':')) + ":" + std::to_string(port());
}

void grpc_server::impl::stop(std::chrono::milliseconds drain) {
  std::lock_guard lock(mu);
  if (!server) return;
  if (stopping) {
    // Draining already: end it. The calls' OnCancel answer them, and Shutdown returns.
    if (drain.count() == 0) grpc_server_cancel_all_calls(server->c_server());
    return;
  }
  stopping = true;
  draining.store(true, std::memory_order_relaxed);
  const auto deadline = std::chrono::system_clock::now() + drain;
  // Shutdown blocks until the drain is over, and must not run on a gRPC callback thread.
  stopper = std::thread([s = server.get(), deadline] { s->Shutdown(deadline); });
}

void grpc_server::shutdown() { impl_->stop(impl_->options.drain_timeout); }

void grpc_server::shutdown_now() { impl_->stop(std::chrono::milliseconds(0)); }

void grpc_server::wait() {
  impl& s = *impl_;
  if (!s.server) return;
  s.server->Wait();
  std::lock_guard lock(s.mu);
  if (s.stopper.joinable()) s.stopper.join();
}

}  // namespace sluice::server
