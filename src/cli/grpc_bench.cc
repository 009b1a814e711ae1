#include "cli/grpc_bench.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "envoy/service/ratelimit/v3/rls.grpc.pb.h"
#include "server/grpc_server.h"

namespace sluice::cli {
namespace {

namespace rls = envoy::service::ratelimit::v3;

void add_descriptor(rls::RateLimitRequest& r, const std::string& key, const std::string& value) {
  auto* e = r.add_descriptors()->add_entries();
  e->set_key(key);
  e->set_value(value);
}

// Returns the request for key `i`, as `grpc_bench_options` describes it.
rls::RateLimitRequest request_for(const grpc_bench_options& o, std::size_t i) {
  rls::RateLimitRequest r;
  r.set_domain(o.domain);
  r.set_hits_addend(o.hits);
  add_descriptor(r, "user", o.prefix + ":" + std::to_string(i));
  if (o.descriptors >= 2) {
    const std::size_t j = i % 1024;
    add_descriptor(r, "remote_address",
                   "10.0." + std::to_string(j / 256) + "." + std::to_string(j % 256));
  }
  return r;
}

call_outcome outcome_of(const grpc::Status& s, const rls::RateLimitResponse& r) {
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) return call_outcome::timeout;
  if (!s.ok()) return call_outcome::error;
  switch (r.overall_code()) {
    case rls::RateLimitResponse::OK:
      return call_outcome::allowed;
    case rls::RateLimitResponse::OVER_LIMIT:
      return call_outcome::denied;
    default:
      return call_outcome::error;
  }
}

// One call in flight: what gRPC needs until the callback runs. The request is shared (one per
// key, read-only while calls are in flight).
struct grpc_call {
  explicit grpc_call(call_token t) : token(std::move(t)) {}
  grpc::ClientContext context;
  rls::RateLimitResponse response;
  call_token token;
};

}  // namespace

result<bench_report> run_grpc_bench(const grpc_bench_options& options) {
  server::quiet_abseil_mutexes();  // the client's gRPC takes the same mutexes
  // Each channel its own subchannel pool, hence its own connection: channels with the same
  // target and arguments would otherwise share one.
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = options.tls_ca_pem;
    tls.pem_cert_chain = options.tls_cert_pem;
    tls.pem_private_key = options.tls_key_pem;
    credentials = grpc::SslCredentials(tls);
  }
  std::vector<std::unique_ptr<rls::RateLimitService::Stub>> stubs;
  for (std::size_t c = 0; c < std::max<std::size_t>(1, options.channels); ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(rls::RateLimitService::NewStub(
        grpc::CreateCustomChannel(options.target, credentials, args)));
  }

  const std::size_t key_count = std::max<std::size_t>(1, options.keys);
  std::vector<rls::RateLimitRequest> requests;
  requests.reserve(key_count);
  for (std::size_t i = 0; i < key_count; ++i) requests.push_back(request_for(options, i));

  // One call spending nothing first, on every channel (connecting them outside the timing):
  // a service that is down or refuses the domain fails here, not after seconds of errors.
  rls::RateLimitRequest check = requests[0];
  for (auto& d : *check.mutable_descriptors()) d.mutable_hits_addend()->set_value(0);
  for (auto& stub : stubs) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + options.timeout);
    rls::RateLimitResponse response;
    const grpc::Status s = stub->ShouldRateLimit(&context, check, &response);
    if (!s.ok()) {
      return make_error(errc::store_unavailable,
                        options.target + ": " + std::to_string(static_cast<int>(s.error_code())) +
                            " " + s.error_message());
    }
  }

  std::size_t next_stub = 0;
  return run_load(options, [&](std::size_t key, call_token token) {
    auto* call = new grpc_call(std::move(token));
    call->context.set_deadline(std::chrono::system_clock::now() + options.timeout);
    auto& stub = *stubs[next_stub];
    if (++next_stub == stubs.size()) next_stub = 0;
    stub.async()->ShouldRateLimit(&call->context, &requests[key], &call->response,
                                  [call](grpc::Status s) {
                                    const call_outcome o = outcome_of(s, call->response);
                                    const call_token t = std::move(call->token);
                                    delete call;
                                    t.complete(o);
                                  });
  });
}

}  // namespace sluice::cli
