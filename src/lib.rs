//! swarming: a distributed ping monitor.
//!
//! Agents ping targets (ICMP) and publish results over MQTT; indexers
//! collect them from every broker and store them in Elasticsearch.

pub mod config;
pub mod document;
pub mod elasticsearch;
pub mod protocol;
