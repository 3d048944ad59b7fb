//! Integration tests: one binary (the crate links once), real Redis, real sockets.

mod helpers;

mod backpressure;
mod e2e;
mod observability;
mod procs;
mod resume;
mod transports;
mod workers;
