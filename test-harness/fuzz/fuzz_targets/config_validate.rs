//! The config file and the control plane's stored form: the input as YAML
//! and as JSON, each through `validate` when it parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_filters::ValidateCx;
use meshgate_xds::config::{parse_json, parse_yaml, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Files are not read: inputs must not reach the fuzzing machine's disk.
    let cx = ValidateCx::control_plane();
    for parsed in [parse_yaml(text), parse_json(text)] {
        if let Ok(spec) = parsed {
            let _ = validate(&spec, &cx);
            let _ = spec.redacted();
        }
    }
});
