"""etcd's v3 gRPC API on the installed protobuf: message classes and the stubs we call.

The messages are etcd's own definitions (``etcdpb_data``, copied out of python-etcd3 0.12 by
``scripts/extract_etcd_protos.py``), loaded into a private descriptor pool so they run on the C
implementation of protobuf. python-etcd3's generated modules predate protobuf 4 and force the
pure-Python implementation, which costs about 28 times more CPU per message (200 µs against 7 µs
for a four-put transaction on the development machine); on a busy conductor that was most of its
CPU. Only :mod:`conductor.store` uses this module.
"""
from __future__ import annotations

import base64
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .etcdpb_data import FILES


def _with_learners(serialized: bytes) -> bytes:
    """rpc.proto as copied from python-etcd3 0.12 predates etcd 3.4's learners: add what 3.4's own
    rpc.proto has (same names and field numbers, so the wire format is etcd's): ``Member.isLearner``
    (5), ``MemberAddRequest.isLearner`` (2) and the MemberPromote messages."""
    fdp = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    types = {m.name: m for m in fdp.message_type}
    boolean = descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for message, number in (("Member", 5), ("MemberAddRequest", 2)):
        if not any(f.name == "isLearner" for f in types[message].field):
            types[message].field.add(name="isLearner", number=number, type=boolean, label=optional,
                                     json_name="isLearner")
    if "MemberPromoteRequest" not in types:
        request = fdp.message_type.add(name="MemberPromoteRequest")
        request.field.add(name="ID", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
                          label=optional, json_name="ID")
        response = fdp.message_type.add(name="MemberPromoteResponse")
        message_type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        response.field.add(name="header", number=1, type=message_type, label=optional,
                           type_name=".etcdserverpb.ResponseHeader", json_name="header")
        response.field.add(name="members", number=2, type=message_type,
                           label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                           type_name=".etcdserverpb.Member", json_name="members")
    return fdp.SerializeToString()


_pool = descriptor_pool.DescriptorPool()
for _name in ("kv.proto", "auth.proto", "rpc.proto"):
    _data = base64.b64decode("".join(FILES[_name]))
    _pool.AddSerializedFile(_with_learners(_data) if _name == "rpc.proto" else _data)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(name))


RangeRequest = _message("etcdserverpb.RangeRequest")
RangeResponse = _message("etcdserverpb.RangeResponse")
PutRequest = _message("etcdserverpb.PutRequest")
PutResponse = _message("etcdserverpb.PutResponse")
DeleteRangeRequest = _message("etcdserverpb.DeleteRangeRequest")
DeleteRangeResponse = _message("etcdserverpb.DeleteRangeResponse")
RequestOp = _message("etcdserverpb.RequestOp")
Compare = _message("etcdserverpb.Compare")
TxnRequest = _message("etcdserverpb.TxnRequest")
TxnResponse = _message("etcdserverpb.TxnResponse")
CompactionRequest = _message("etcdserverpb.CompactionRequest")
CompactionResponse = _message("etcdserverpb.CompactionResponse")
LeaseGrantRequest = _message("etcdserverpb.LeaseGrantRequest")
LeaseGrantResponse = _message("etcdserverpb.LeaseGrantResponse")
LeaseRevokeRequest = _message("etcdserverpb.LeaseRevokeRequest")
LeaseRevokeResponse = _message("etcdserverpb.LeaseRevokeResponse")
LeaseKeepAliveRequest = _message("etcdserverpb.LeaseKeepAliveRequest")
LeaseKeepAliveResponse = _message("etcdserverpb.LeaseKeepAliveResponse")
LeaseTimeToLiveRequest = _message("etcdserverpb.LeaseTimeToLiveRequest")
LeaseTimeToLiveResponse = _message("etcdserverpb.LeaseTimeToLiveResponse")
WatchRequest = _message("etcdserverpb.WatchRequest")
WatchCreateRequest = _message("etcdserverpb.WatchCreateRequest")
WatchResponse = _message("etcdserverpb.WatchResponse")
StatusRequest = _message("etcdserverpb.StatusRequest")
StatusResponse = _message("etcdserverpb.StatusResponse")
AlarmRequest = _message("etcdserverpb.AlarmRequest")  # action GET / ACTIVATE / DEACTIVATE
AlarmResponse = _message("etcdserverpb.AlarmResponse")
DefragmentRequest = _message("etcdserverpb.DefragmentRequest")
DefragmentResponse = _message("etcdserverpb.DefragmentResponse")
AuthenticateRequest = _message("etcdserverpb.AuthenticateRequest")  # name, password -> token
AuthenticateResponse = _message("etcdserverpb.AuthenticateResponse")
MemberAddRequest = _message("etcdserverpb.MemberAddRequest")
MemberAddResponse = _message("etcdserverpb.MemberAddResponse")
MemberRemoveRequest = _message("etcdserverpb.MemberRemoveRequest")
MemberRemoveResponse = _message("etcdserverpb.MemberRemoveResponse")
MemberListRequest = _message("etcdserverpb.MemberListRequest")
MemberListResponse = _message("etcdserverpb.MemberListResponse")
MemberPromoteRequest = _message("etcdserverpb.MemberPromoteRequest")
MemberPromoteResponse = _message("etcdserverpb.MemberPromoteResponse")
ALARM_NAMES = {v.number: v.name for v in _pool.FindEnumTypeByName("etcdserverpb.AlarmType").values}
ALARM_NOSPACE = next(n for n, name in ALARM_NAMES.items() if name == "NOSPACE")

AUTH_CALLS = {  # Conductor's name: (etcd method, request message); every one answers with a header
    "AuthEnable": "AuthEnableRequest", "AuthDisable": "AuthDisableRequest", "UserAdd": "AuthUserAddRequest",
    "UserDelete": "AuthUserDeleteRequest", "UserChangePassword": "AuthUserChangePasswordRequest",
    "UserGrantRole": "AuthUserGrantRoleRequest", "UserList": "AuthUserListRequest", "UserGet": "AuthUserGetRequest",
    "RoleAdd": "AuthRoleAddRequest", "RoleDelete": "AuthRoleDeleteRequest",
    "RoleGrantPermission": "AuthRoleGrantPermissionRequest",
}
AUTH_MESSAGES = {name: (_message("etcdserverpb." + req), _message("etcdserverpb." + req.replace("Request", "Response")))
                 for name, req in AUTH_CALLS.items()}
Permission = _message("authpb.Permission")  # permType READ 0, WRITE 1, READWRITE 2; key; range_end

_METHODS = {
    # attribute: (service/method, kind, request, response)
    "Range": ("KV/Range", "unary", RangeRequest, RangeResponse),
    "Put": ("KV/Put", "unary", PutRequest, PutResponse),
    "DeleteRange": ("KV/DeleteRange", "unary", DeleteRangeRequest, DeleteRangeResponse),
    "Txn": ("KV/Txn", "unary", TxnRequest, TxnResponse),
    "Compact": ("KV/Compact", "unary", CompactionRequest, CompactionResponse),
    "LeaseGrant": ("Lease/LeaseGrant", "unary", LeaseGrantRequest, LeaseGrantResponse),
    "LeaseRevoke": ("Lease/LeaseRevoke", "unary", LeaseRevokeRequest, LeaseRevokeResponse),
    "LeaseKeepAlive": ("Lease/LeaseKeepAlive", "stream", LeaseKeepAliveRequest, LeaseKeepAliveResponse),
    "LeaseTimeToLive": ("Lease/LeaseTimeToLive", "unary", LeaseTimeToLiveRequest, LeaseTimeToLiveResponse),
    "Watch": ("Watch/Watch", "stream", WatchRequest, WatchResponse),
    "Status": ("Maintenance/Status", "unary", StatusRequest, StatusResponse),
    "Alarm": ("Maintenance/Alarm", "unary", AlarmRequest, AlarmResponse),
    "Defragment": ("Maintenance/Defragment", "unary", DefragmentRequest, DefragmentResponse),
    "Authenticate": ("Auth/Authenticate", "unary", AuthenticateRequest, AuthenticateResponse),
    "MemberAdd": ("Cluster/MemberAdd", "unary", MemberAddRequest, MemberAddResponse),
    "MemberRemove": ("Cluster/MemberRemove", "unary", MemberRemoveRequest, MemberRemoveResponse),
    "MemberList": ("Cluster/MemberList", "unary", MemberListRequest, MemberListResponse),
    "MemberPromote": ("Cluster/MemberPromote", "unary", MemberPromoteRequest, MemberPromoteResponse),
    **{name: (f"Auth/{name}", "unary", req, resp) for name, (req, resp) in AUTH_MESSAGES.items()},
}


class Stub:
    """Callables for every etcd method we use, on one channel: ``stub.Range(request, timeout=5)``."""

    def __init__(self, channel: grpc.Channel):
        for attr, (path, kind, request, response) in _METHODS.items():
            make = channel.unary_unary if kind == "unary" else channel.stream_stream
            setattr(self, attr, make(f"/etcdserverpb.{path}", request_serializer=request.SerializeToString,
                                     response_deserializer=response.FromString))

    Range: Any
    Put: Any
    DeleteRange: Any
    Txn: Any
    Compact: Any
    LeaseGrant: Any
    LeaseRevoke: Any
    LeaseKeepAlive: Any
    LeaseTimeToLive: Any
    Watch: Any
    Status: Any
    Alarm: Any
    Defragment: Any
    Authenticate: Any
    MemberAdd: Any
    MemberRemove: Any
    MemberList: Any
    MemberPromote: Any
    AuthEnable: Any
    AuthDisable: Any
    UserAdd: Any
    UserDelete: Any
    UserChangePassword: Any
    UserGrantRole: Any
    UserList: Any
    UserGet: Any
    RoleAdd: Any
    RoleDelete: Any
    RoleGrantPermission: Any
