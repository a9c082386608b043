//! wsup: a websocket connection supervisor.
//!
//! See `docs/architecture.md` for the layers and the state machine.
pub mod backoff;
pub mod classify;
pub mod machine;

