//! RFC 9421 signature bases: every inner list of the head's
//! `Signature-Input` built over the request and over a response to it, and
//! component identifiers as config writes them (`x-component` lines).
#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use meshgate_filters::signature::base::{
    component_id, parse_component, parse_signature_input, serialize_params, signature_base,
    Component, Message, Params, SignatureParams,
};
use meshgate_filters::signature::digest::verify_content_digest;
use meshgate_fuzz::Head;

fn build(head: &Head, list: &SignatureParams<'_>) {
    let request = head.parts();
    let _ = signature_base(&Message::Request(request), list);
    let _ = signature_base(
        &Message::Response {
            status: StatusCode::OK,
            headers: &head.headers,
            request: Some(request),
        },
        list,
    );
    let _ = serialize_params(list);
    for component in &list.components {
        let _ = component_id(component);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(head) = Head::parse(data) else {
        return;
    };
    for value in head.headers.get_all("signature-input") {
        let Ok(dict) = parse_signature_input(value.as_bytes()) else {
            continue;
        };
        for (_, list) in &dict.0 {
            if let Some(list) = list {
                build(&head, list);
            }
        }
    }
    let components: Vec<_> = head
        .headers
        .get_all("x-component")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|text| parse_component(text).ok())
        .collect();
    if !components.is_empty() {
        let list = SignatureParams {
            components: components.iter().map(Component::from_item).collect(),
            params: Params::new(),
        };
        build(&head, &list);
    }
    let digests: Vec<&[u8]> = head
        .headers
        .get_all("content-digest")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !digests.is_empty() {
        let _ = verify_content_digest(&digests, b"{\"hello\": \"world\"}");
    }
});
