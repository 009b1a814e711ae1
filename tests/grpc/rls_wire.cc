// rls_wire request|response: writes the bytes the generated C++ code serializes for one
// RateLimitRequest or RateLimitResponse with every field set, for test_rls_wire.py to compare
// with what the Python stubs generated from the same .proto files make of the same message.
#include <iostream>
#include <string_view>

#include "envoy/service/ratelimit/v3/rls.pb.h"

namespace {

namespace rls = envoy::service::ratelimit::v3;

// Returns the request test_rls_wire.py builds as REQUEST.
rls::RateLimitRequest request() {
  rls::RateLimitRequest r;
  r.set_domain("envoy");
  r.set_hits_addend(3);
  auto* ip = r.add_descriptors();
  auto* e = ip->add_entries();
  e->set_key("remote_address");
  e->set_value("10.0.0.1");
  e = ip->add_entries();
  e->set_key("path");
  e->set_value("/v1/chat");
  auto* user = r.add_descriptors();
  e = user->add_entries();
  e->set_key("user");
  e->set_value("42");
  user->mutable_limit()->set_requests_per_unit(5);
  user->mutable_limit()->set_unit(envoy::type::v3::HOUR);
  user->mutable_hits_addend()->set_value(9);
  return r;
}

// Returns the response test_rls_wire.py builds as RESPONSE.
rls::RateLimitResponse response() {
  rls::RateLimitResponse r;
  r.set_overall_code(rls::RateLimitResponse::OVER_LIMIT);
  auto* ok = r.add_statuses();
  ok->set_code(rls::RateLimitResponse::OK);
  ok->mutable_current_limit()->set_name("per-ip");
  ok->mutable_current_limit()->set_requests_per_unit(100);
  ok->mutable_current_limit()->set_unit(rls::RateLimitResponse::RateLimit::WEEK);
  ok->set_limit_remaining(99);
  ok->mutable_duration_until_reset()->set_seconds(1);
  ok->mutable_duration_until_reset()->set_nanos(500000000);
  ok->mutable_quota()->set_requests(4);
  ok->mutable_quota()->mutable_valid_until()->set_seconds(1700000000);
  ok->mutable_quota()->set_id("q");
  auto* over = r.add_statuses();
  over->set_code(rls::RateLimitResponse::OVER_LIMIT);
  over->mutable_current_limit()->set_name("per-user");
  over->mutable_current_limit()->set_requests_per_unit(5);
  over->mutable_current_limit()->set_unit(rls::RateLimitResponse::RateLimit::HOUR);
  over->mutable_duration_until_reset()->set_seconds(720);
  auto* h = r.add_response_headers_to_add();
  h->set_key("x-ratelimit-limit");
  h->set_value("5");
  h = r.add_request_headers_to_add();
  h->set_key("x-raw");
  h->set_raw_value(std::string("\xff\x00", 2));
  r.set_raw_body("slow down\n");
  (*r.mutable_dynamic_metadata()->mutable_fields())["policy"].set_string_value("per-user");
  r.mutable_quota()->set_requests(1);
  r.mutable_quota()->set_id("all");
  return r;
}

}  // namespace

// Returns 0 after writing the bytes, 2 on a wrong argument.
int main(int argc, char** argv) {
  const std::string_view what = argc == 2 ? argv[1] : "";
  std::string bytes;
  if (what == "request") {
    bytes = request().SerializeAsString();
  } else if (what == "response") {
    bytes = response().SerializeAsString();
  } else {
    std::cerr << "usage: rls_wire request|response\n";
    return 2;
  }
  std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return std::cout.good() ? 0 : 1;
}
