//! xDS resource decoding: the input as a `DiscoveryResponse`, as an `Any` and
//! as a `SidecarConfig` message (prost), each resource then through the JSON
//! to `ConfigSpec` conversion and `validate`, as a sidecar applies a push.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_filters::ValidateCx;
use meshgate_xds::config::{validate, ConfigSpec};
use meshgate_xds::pb::{DiscoveryResponse, SidecarConfig};
use meshgate_xds::resource::{to_config, SIDECAR_CONFIG_TYPE_URL};
use prost::Message;
use prost_types::Any;

fuzz_target!(|data: &[u8]| {
    let cx = ValidateCx::control_plane();
    if let Ok(response) = DiscoveryResponse::decode(data) {
        for any in &response.resources {
            let _ = to_config(any, &cx);
        }
    }
    if let Ok(any) = Any::decode(data) {
        let _ = to_config(&any, &cx);
    }
    let any = Any {
        type_url: SIDECAR_CONFIG_TYPE_URL.to_string(),
        value: data.to_vec(),
    };
    let _ = to_config(&any, &cx);
    if let Ok(message) = SidecarConfig::decode(data) {
        if let Ok(spec) = ConfigSpec::try_from(&message) {
            let _ = validate(&spec, &cx);
        }
    }
});
