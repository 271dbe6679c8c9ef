//! meshgate's xDS resource: `meshgate.v1.SidecarConfig` in a `google.protobuf.Any`.
//!
//! The resource carries the config file's JSON form in `config_json`, so the
//! wire form maps losslessly to [`ConfigSpec`] (the same schema as the YAML
//! file) and a schema change needs no proto change. `version` and `service`
//! are typed for cheap inspection by tools.

use std::collections::BTreeMap;

use meshgate_filters::{FieldError, FieldErrors, ValidateCx};
use prost::Message;
use prost_types::Any;

use crate::config::{parse_json, validate, Config, ConfigSpec};
use crate::pb::{Node, SidecarConfig};

/// Type URL of [`SidecarConfig`] resources.
pub const SIDECAR_CONFIG_TYPE_URL: &str = "type.googleapis.com/meshgate.v1.SidecarConfig";

/// `Node.metadata` key holding the sidecar's labels as a struct of strings.
pub const LABELS_METADATA_KEY: &str = "labels";

/// Builds the resource for `spec`, stamping `version` into it.
pub fn encode(service: &str, version: &str, spec: &ConfigSpec) -> Result<Any, serde_json::Error> {
    let mut spec = spec.clone();
    spec.version = Some(version.to_string());
    let message = SidecarConfig {
        version: version.to_string(),
        service: service.to_string(),
        config_json: serde_json::to_string(&spec)?,
    };
    Ok(Any {
        type_url: SIDECAR_CONFIG_TYPE_URL.to_string(),
        value: message.encode_to_vec(),
    })
}

impl TryFrom<&SidecarConfig> for ConfigSpec {
    type Error = FieldErrors;

    /// Parses the carried config; a shape error names the field it is at.
    fn try_from(message: &SidecarConfig) -> Result<Self, Self::Error> {
        let mut spec = parse_json(&message.config_json)?;
        if spec.version.is_none() && !message.version.is_empty() {
            spec.version = Some(message.version.clone());
        }
        Ok(spec)
    }
}

/// Unpacks an `Any` into the config it carries (shape only, no validation).
pub fn decode(any: &Any) -> Result<ConfigSpec, FieldErrors> {
    if any.type_url != SIDECAR_CONFIG_TYPE_URL {
        return Err(FieldError::new(
            "(resource)",
            format!(
                "unexpected type {:?}, want {SIDECAR_CONFIG_TYPE_URL:?}",
                any.type_url
            ),
        )
        .into());
    }
    let message = SidecarConfig::decode(any.value.as_slice())
        .map_err(|e| FieldError::new("(resource)", format!("invalid SidecarConfig: {e}")))?;
    ConfigSpec::try_from(&message)
}

/// The one conversion from a wire resource to an applicable config; its error
/// (`FieldErrors`' Display) is what a NACK's `error_detail.message` carries.
pub fn to_config(any: &Any, cx: &ValidateCx) -> Result<Config, FieldErrors> {
    let spec = decode(any)?;
    validate(&spec, cx)
}

/// Reads the labels a sidecar announced in `Node.metadata.labels`.
pub fn node_labels(node: &Node) -> BTreeMap<String, String> {
    use prost_types::value::Kind;
    let mut labels = BTreeMap::new();
    let Some(Kind::StructValue(fields)) = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(LABELS_METADATA_KEY))
        .and_then(|v| v.kind.as_ref())
    else {
        return labels;
    };
    for (key, value) in &fields.fields {
        if let Some(Kind::StringValue(s)) = &value.kind {
            labels.insert(key.clone(), s.clone());
        }
    }
    labels
}

/// Metadata announcing `labels`, the inverse of [`node_labels`].
pub fn labels_metadata(labels: &BTreeMap<String, String>) -> prost_types::Struct {
    use prost_types::value::Kind;
    let inner = prost_types::Struct {
        fields: labels
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(v.clone())),
                    },
                )
            })
            .collect(),
    };
    prost_types::Struct {
        fields: [(
            LABELS_METADATA_KEY.to_string(),
            prost_types::Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// The sidecar's software version as announced in the node.
pub fn node_agent_version(node: &Node) -> String {
    use crate::pb::UserAgentVersionType;
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    if node.user_agent_name.is_empty() {
        version
    } else {
        format!("{}/{}", node.user_agent_name, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_lossless_and_stamps_version() {
        let spec = crate::config::parse_yaml(
            "inbound: { listen: '127.0.0.1:1' }\nerror_codes: { rate_limited: 1029 }\n",
        )
        .expect("valid yaml");
        let any = encode("orders", "v7", &spec).expect("encodes");
        let back = decode(&any).expect("decodes");
        let mut want = spec.clone();
        want.version = Some("v7".into());
        assert_eq!(back, want);
    }

    #[test]
    fn wrong_type_and_bad_json_are_field_errors() {
        let any = Any {
            type_url: "type.googleapis.com/other.Thing".into(),
            value: vec![],
        };
        assert!(decode(&any).is_err());
        let bad = SidecarConfig {
            version: "v1".into(),
            service: "s".into(),
            config_json: r#"{"inbound":{"listen":"x","bogus":1}}"#.into(),
        };
        let err = ConfigSpec::try_from(&bad).expect_err("unknown field rejected");
        assert!(err.to_string().contains("inbound"), "{err}");
    }

    #[test]
    fn labels_round_trip_through_node_metadata() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())]
            .into_iter()
            .collect();
        let node = Node {
            metadata: Some(labels_metadata(&labels)),
            ..Default::default()
        };
        assert_eq!(node_labels(&node), labels);
    }
}
