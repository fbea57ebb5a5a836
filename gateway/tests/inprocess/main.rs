//! In-process gateway tests: a real gateway on 127.0.0.1 port 0 with `memory://` storage and
//! the embedded metadata store, driven with kafka-protocol frames over TCP. They cover the
//! handlers' logic (produce, fetch, offsets, metadata, admin, idempotence, classic groups) and
//! the connection's handling of malformed frames, without a child process. Each test starts
//! its own gateway and takes well under two seconds.

mod admin;
mod frames;
mod groups;
mod idempotence;
mod metadata;
mod produce_fetch;
mod support;
