//! The quantizer's error: shared by the graph passes ([`super::graph`]) and the plan.

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{0}")]
    Model(String),
}
