//! Integration tests: one binary (the crate links once), real Redis, real sockets.

mod fake_llm;
mod helpers;

mod archive;
mod backpressure;
mod canary;
mod cluster;
mod e2e;
mod edges;
mod guard;
mod hostile;
mod ingress;
mod ingress_media;
mod ingress_prejoin;
mod media;
mod moderation_audit;
mod observability;
mod openings;
mod procs;
mod quota;
mod redis_faults;
mod redis_stalls;
mod resume;
mod retrieval;
mod retrieval_words;
mod tenancy;
mod tls;
mod transports;
mod upstreams;
mod workers;
