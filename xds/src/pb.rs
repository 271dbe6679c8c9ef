//! Generated protobuf and gRPC code (see `proto/` and `build.rs`).
#![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]

pub mod envoy {
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

pub mod meshgate {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meshgate.v1.rs"));
    }
}

pub use envoy::config::core::v3::{node::UserAgentVersionType, Node};
pub use envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
pub use google::rpc::Status;
pub use meshgate::v1::SidecarConfig;
