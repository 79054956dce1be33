//! Test support: real mosquitto brokers, real daemon processes, an MQTT
//! collector, and a fake Elasticsearch that keeps the `_bulk` contract.
//! Each test binary uses a part of it.
#![allow(dead_code)]

pub mod daemon;
pub mod devtools;
pub mod fake_es;
pub mod fixtures;
pub mod mosquitto;
pub mod mqtt;
pub mod smallfs;
