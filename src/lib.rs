//! swarming: a distributed ping monitor.
//!
//! Agents ping targets (ICMP) and publish results over MQTT; indexers
//! collect them from every broker and store them in Elasticsearch.

pub mod agent;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod document;
pub mod elasticsearch;
pub mod file_output;
pub mod guard;
pub mod http;
pub mod indexer;
pub mod insight;
pub mod kibana;
pub mod mqtt;
pub mod ping;
pub mod protocol;
pub mod spool;
pub mod swarm_state;
pub mod tls;
pub mod watch_sign;
