//! Protocol-level end-to-end tests of the `weir` binary: each test starts `weir serve` on a
//! free port with its own data directory and speaks the Kafka wire protocol to it directly
//! (kafka-protocol for encoding, hand-made bytes where a client would never send them).
//!
//! Run with `cargo test --release --test protocol`.

mod api_versions;
mod fetch;
mod frames;
mod idempotence;
mod metadata;
mod offsets;
mod produce;
mod sasl;
mod support;
