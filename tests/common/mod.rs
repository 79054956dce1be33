//! Test support: real mosquitto brokers, real daemon processes, an MQTT
//! collector. Each test binary uses a part of it.
#![allow(dead_code)]

pub mod daemon;
pub mod mosquitto;
pub mod mqtt;
