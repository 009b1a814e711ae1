"""The Python stubs generated from proto/ at build time (<build>/python_grpc): they import
with python3-grpcio, carry the field names and numbers of Envoy's own .proto files (the table
below is copied from envoyproxy/data-plane-api), and serialize every field of a request and a
response to the same bytes as the generated C++ code (the rls_wire program, $SLUICE_RLS_WIRE).
"""

import os
import subprocess

import pytest
from google.protobuf import descriptor

from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2

# message: {field: (number, type)}, every field of every message the RLS exchange uses.
F = descriptor.FieldDescriptor
ENVOY_FIELDS = {
    "envoy.service.ratelimit.v3.RateLimitRequest": {
        "domain": (1, F.TYPE_STRING),
        "descriptors": (2, F.TYPE_MESSAGE),
        "hits_addend": (3, F.TYPE_UINT32),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse": {
        "overall_code": (1, F.TYPE_ENUM),
        "statuses": (2, F.TYPE_MESSAGE),
        "response_headers_to_add": (3, F.TYPE_MESSAGE),
        "request_headers_to_add": (4, F.TYPE_MESSAGE),
        "raw_body": (5, F.TYPE_BYTES),
        "dynamic_metadata": (6, F.TYPE_MESSAGE),
        "quota": (7, F.TYPE_MESSAGE),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse.RateLimit": {
        "name": (3, F.TYPE_STRING),
        "requests_per_unit": (1, F.TYPE_UINT32),
        "unit": (2, F.TYPE_ENUM),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse.Quota": {
        "requests": (1, F.TYPE_UINT32),
        "valid_until": (2, F.TYPE_MESSAGE),
        "id": (3, F.TYPE_STRING),
    },
    "envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus": {
        "code": (1, F.TYPE_ENUM),
        "current_limit": (2, F.TYPE_MESSAGE),
        "limit_remaining": (3, F.TYPE_UINT32),
        "duration_until_reset": (4, F.TYPE_MESSAGE),
        "quota": (5, F.TYPE_MESSAGE),
    },
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor": {
        "entries": (1, F.TYPE_MESSAGE),
        "limit": (2, F.TYPE_MESSAGE),
        "hits_addend": (3, F.TYPE_MESSAGE),
    },
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry": {
        "key": (1, F.TYPE_STRING),
        "value": (2, F.TYPE_STRING),
    },
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.RateLimitOverride": {
        "requests_per_unit": (1, F.TYPE_UINT32),
        "unit": (2, F.TYPE_ENUM),
    },
    "envoy.config.core.v3.HeaderValue": {
        "key": (1, F.TYPE_STRING),
        "value": (2, F.TYPE_STRING),
        "raw_value": (3, F.TYPE_BYTES),
    },
}

# The message type of each message field whose type is not its own name's.
ENVOY_FIELD_TYPES = {
    ("envoy.service.ratelimit.v3.RateLimitRequest", "descriptors"):
        "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor",
    ("envoy.service.ratelimit.v3.RateLimitResponse", "response_headers_to_add"):
        "envoy.config.core.v3.HeaderValue",
    ("envoy.service.ratelimit.v3.RateLimitResponse", "dynamic_metadata"):
        "google.protobuf.Struct",
    ("envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus", "duration_until_reset"):
        "google.protobuf.Duration",
    ("envoy.service.ratelimit.v3.RateLimitResponse.Quota", "valid_until"):
        "google.protobuf.Timestamp",
    ("envoy.extensions.common.ratelimit.v3.RateLimitDescriptor", "hits_addend"):
        "google.protobuf.UInt64Value",
    ("envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.RateLimitOverride", "unit"):
        "envoy.type.v3.RateLimitUnit",
}

ENVOY_ENUMS = {
    "envoy.service.ratelimit.v3.RateLimitResponse.Code":
        {"UNKNOWN": 0, "OK": 1, "OVER_LIMIT": 2},
    "envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit":
        {"UNKNOWN": 0, "SECOND": 1, "MINUTE": 2, "HOUR": 3, "DAY": 4, "WEEK": 7, "MONTH": 5,
         "YEAR": 6},
    "envoy.type.v3.RateLimitUnit":
        {"UNKNOWN": 0, "SECOND": 1, "MINUTE": 2, "HOUR": 3, "DAY": 4, "MONTH": 5, "YEAR": 6},
}

MODULES = [rls_pb2, ratelimit_pb2, base_pb2, ratelimit_unit_pb2]


def find_message(name):
    for m in MODULES:
        try:
            return m.DESCRIPTOR.pool.FindMessageTypeByName(name)
        except KeyError:
            continue
    raise KeyError(name)


def field_type_name(f):
    if f.message_type is not None:
        return f.message_type.full_name
    if f.enum_type is not None:
        return f.enum_type.full_name
    return None


def test_messages_have_envoys_field_names_and_numbers():
    # Verifies that each message has exactly Envoy's fields, numbers and wire types.
    for name, fields in ENVOY_FIELDS.items():
        m = find_message(name)
        got = {f.name: (f.number, f.type) for f in m.fields}
        assert got == fields, name
        for f in m.fields:
            expected = ENVOY_FIELD_TYPES.get((name, f.name))
            if expected is not None:
                assert field_type_name(f) == expected, (name, f.name)
    assert find_message("envoy.service.ratelimit.v3.RateLimitResponse.Quota") \
        .oneofs_by_name["expiration_specifier"].fields[0].name == "valid_until"


def test_enums_have_envoys_values():
    # Verifies that each enum has exactly Envoy's names and numbers.
    pool = rls_pb2.DESCRIPTOR.pool
    for name, values in ENVOY_ENUMS.items():
        e = pool.FindEnumTypeByName(name)
        assert {v.name: v.number for v in e.values} == values, name


def test_service_is_envoys():
    # Verifies the service, method and types Envoy's gRPC client calls, and that the gRPC stub
    # names the same method path.
    service = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
    assert service.full_name == "envoy.service.ratelimit.v3.RateLimitService"
    method = service.methods_by_name["ShouldRateLimit"]
    assert method.input_type.full_name == "envoy.service.ratelimit.v3.RateLimitRequest"
    assert method.output_type.full_name == "envoy.service.ratelimit.v3.RateLimitResponse"
    assert not method.client_streaming and not method.server_streaming
    source = open(rls_pb2_grpc.__file__).read()
    assert "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" in source


def request():
    """The request rls_wire builds (rls_wire.cc, request())."""
    r = rls_pb2.RateLimitRequest(domain="envoy", hits_addend=3)
    ip = r.descriptors.add()
    ip.entries.add(key="remote_address", value="10.0.0.1")
    ip.entries.add(key="path", value="/v1/chat")
    user = r.descriptors.add()
    user.entries.add(key="user", value="42")
    user.limit.requests_per_unit = 5
    user.limit.unit = ratelimit_unit_pb2.HOUR
    user.hits_addend.value = 9
    return r


def response():
    """The response rls_wire builds (rls_wire.cc, response())."""
    R = rls_pb2.RateLimitResponse
    r = R(overall_code=R.OVER_LIMIT, raw_body=b"slow down\n")
    ok = r.statuses.add(code=R.OK, limit_remaining=99)
    ok.current_limit.name = "per-ip"
    ok.current_limit.requests_per_unit = 100
    ok.current_limit.unit = R.RateLimit.WEEK
    ok.duration_until_reset.seconds = 1
    ok.duration_until_reset.nanos = 500000000
    ok.quota.requests = 4
    ok.quota.valid_until.seconds = 1700000000
    ok.quota.id = "q"
    over = r.statuses.add(code=R.OVER_LIMIT)
    over.current_limit.name = "per-user"
    over.current_limit.requests_per_unit = 5
    over.current_limit.unit = R.RateLimit.HOUR
    over.duration_until_reset.seconds = 720
    r.response_headers_to_add.add(key="x-ratelimit-limit", value="5")
    r.request_headers_to_add.add(key="x-raw", raw_value=b"\xff\x00")
    r.dynamic_metadata["policy"] = "per-user"
    r.quota.requests = 1
    r.quota.id = "all"
    return r


def cpp_bytes(what):
    return subprocess.run([os.environ["SLUICE_RLS_WIRE"], what], check=True,
                          capture_output=True, timeout=30).stdout


@pytest.mark.parametrize("what,build,cls", [
    ("request", request, rls_pb2.RateLimitRequest),
    ("response", response, rls_pb2.RateLimitResponse),
])
def test_python_and_cpp_agree_on_the_bytes(what, build, cls):
    # Verifies that the Python stubs serialize the message to the C++ code's bytes, and read
    # those bytes back as the same message.
    cpp = cpp_bytes(what)
    assert len(cpp) > 0
    assert build().SerializeToString(deterministic=True) == cpp
    assert cls.FromString(cpp) == build()
