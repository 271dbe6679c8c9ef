//! etcd's v3 API, generated from the vendored protos (`proto/`, `build.rs`).
#![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub use etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
pub use mvccpb::{event::EventType, Event, KeyValue};
