//! TEMPORARY interface copy; replaced by the real editor from branch wt-props.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerSpec {
    pub name: String,
    pub bind_host: String,
    pub port: u16,
    pub advertised_host: String,
    pub security_protocol: String,
}
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerSettings {
    pub owned_names: Vec<String>,
    pub listeners: Vec<ListenerSpec>,
    pub inter_broker_listener: String,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertiesEdit {
    pub content: String,
    pub changed_keys: Vec<String>,
}
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropertiesError {
    #[error("x")]
    X,
}
pub fn apply_listeners(original: &str, _desired: &ListenerSettings) -> Result<PropertiesEdit, PropertiesError> {
    Ok(PropertiesEdit { content: original.into(), changed_keys: vec![] })
}
