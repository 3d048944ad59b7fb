//! Redis key names: everything of a partition in one Cluster slot.
//!
//! A session lives in partition `p = fnv1a(tenant, session) mod P`. Every key of the partition
//! carries the hash tag `{pNN}`, so the turn stream and all of its sessions' keys share one slot
//! and each Lua function touches one slot only. Every key a function touches is built here and
//! declared in the call's KEYS (`lua/chatfleet.lua`, "Keys"), so Cluster routing and slot
//! migration see the real keys.

use std::fmt;

/// Name of the consumer group every worker joins on each partition stream.
pub const GROUP: &str = "workers";

/// True for a tenant, session id or prefix: 1-64 characters of `[A-Za-z0-9_.-]`.
///
/// The restriction keeps key names unambiguous (no `:`, braces or whitespace) and bounded.
pub fn is_valid_component(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// FNV-1a, 64 bit. Chosen because it is tiny and fully specified: the partition of a session
/// must never change across versions, so the hash must not depend on a library's internals.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator keeps ("ab","c") and ("a","bc") apart.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Key namespace of one deployment: prefix and partition count.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
    partitions: u16,
}

impl Keyspace {
    pub fn new(prefix: impl Into<String>, partitions: u16) -> Self {
        Self { prefix: prefix.into(), partitions }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Partition of a session.
    pub fn partition_of(&self, tenant: &str, session: &str) -> u16 {
        (fnv1a(&[tenant.as_bytes(), session.as_bytes()]) % u64::from(self.partitions)) as u16
    }

    /// The session's keys.
    pub fn session(&self, tenant: &str, session: &str) -> SessionKeys {
        let p = self.partition_of(tenant, session);
        SessionKeys {
            partition: p,
            base: format!("{}:{{p{:02}}}:s:{}:{}", self.prefix, p, tenant, session),
            stream: self.stream(p),
        }
    }

    /// The keys of the session whose base key (as stored in a turn entry or a dead letter) is
    /// `base`, in partition `p`.
    pub fn session_of_base(&self, p: u16, base: String) -> SessionKeys {
        SessionKeys { partition: p, base, stream: self.stream(p) }
    }

    /// Turn stream of a partition (consumer group [`GROUP`]).
    pub fn stream(&self, p: u16) -> String {
        format!("{}:{{p{:02}}}:turns", self.prefix, p)
    }

    /// Wake-up channel of a partition (sharded pub/sub, same slot as its stream): workers in
    /// Cluster read a partition when it is published.
    pub fn wake_channel(&self, p: u16) -> String {
        format!("{}:wake", self.stream(p))
    }

    /// The partition named by a `{pNN}` hash tag inside `key`.
    pub fn partition_in(key: &str) -> Option<u16> {
        let start = key.find("{p")? + 2;
        let end = start + key[start..].find('}')?;
        key[start..end].parse().ok()
    }

    /// Dead-letter stream of a partition. Per partition, not global, so that a Lua function can
    /// write it in the same slot as the turn it buries.
    pub fn dlq(&self, p: u16) -> String {
        format!("{}:{{p{:02}}}:dlq", self.prefix, p)
    }

    /// Archive stream of a partition: finished turns waiting for the archivers (src/archive).
    /// Per partition, in the partition's slot, so `end_turn` appends to it in the same call.
    pub fn archive(&self, p: u16) -> String {
        format!("{}:{{p{:02}}}:archive", self.prefix, p)
    }

    /// Lock that makes one worker at a time sweep a partition for expired leases.
    pub fn sweep_lock(&self, p: u16) -> String {
        format!("{}:{{p{:02}}}:sweep", self.prefix, p)
    }

    /// Lock electing the one process that exports queue metrics.
    pub fn exporter_lock(&self) -> String {
        format!("{}:queue-exporter", self.prefix)
    }

    /// Prefix of the per-worker control channel (plain pub/sub) that carries stop requests.
    pub fn worker_channel_prefix(&self) -> String {
        format!("{}:w:", self.prefix)
    }

    /// A tenant's quota keys: their own hash tag `{t:<tenant>}`, so they never share a slot with
    /// a partition. The set of turns holding an in-flight slot.
    pub fn quota_inflight(&self, tenant: &str) -> String {
        format!("{}:{{t:{}}}:q:inflight", self.prefix, tenant)
    }

    /// The counter of turns a tenant was admitted in one clock minute (Redis time).
    pub fn quota_minute(&self, tenant: &str, minute: u64) -> String {
        format!("{}:{{t:{}}}:q:tpm:{}", self.prefix, tenant, minute)
    }
}

/// Number of keys in a session block (the first keys of every session op, in this order).
pub const SESSION_BLOCK: usize = 9;

/// The session's keys, in the order `lua/chatfleet.lua` expects them at an op's key index:
/// meta, log, hist, dedupe, dq, conns, partial, flags, summary.
pub fn session_block(base: &str) -> [String; SESSION_BLOCK] {
    ["meta", "log", "hist", "dedupe", "dq", "conns", "partial", "flags", "summary"].map(|k| format!("{base}:{k}"))
}

/// The keys a delta writes, in the order of `emitc`'s *delta layout* (`lua/chatfleet.lua`): meta,
/// log, partial text, turn hash. Deltas are most of the calls, and every declared key costs one.
pub fn delta_block(base: &str, turn_id: &str) -> [String; 4] {
    [format!("{base}:meta"), format!("{base}:log"), format!("{base}:partial"), turn_key(base, turn_id)]
}

/// A turn's keys (after the session block): its hash and its tool records.
pub fn turn_block(base: &str, turn_id: &str) -> [String; 2] {
    let turn = turn_key(base, turn_id);
    let tools = format!("{turn}:tools");
    [turn, tools]
}

/// A turn's hash.
pub fn turn_key(base: &str, turn_id: &str) -> String {
    format!("{base}:turn:{turn_id}")
}

/// A session's meta hash (epoch, seq, active turn).
pub fn meta_key(base: &str) -> String {
    format!("{base}:meta")
}

/// A session's history: the messages a turn's model call reads.
pub fn history_key(base: &str) -> String {
    format!("{base}:hist")
}

/// A session's event log.
pub fn log_key(base: &str) -> String {
    format!("{base}:log")
}

/// A session's dedupe hash: client_msg_id -> "<turn id> <seq>".
pub fn dedupe_key(base: &str) -> String {
    format!("{base}:dedupe")
}

/// The tenant named in a session base (`<prefix>:{pNN}:s:<tenant>:<sid>`).
pub fn tenant_of(base: &str) -> &str {
    base.split(':').nth(3).unwrap_or_default()
}

/// The names of one session, as the Lua functions expect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub partition: u16,
    /// `<prefix>:{pNN}:s:<tenant>:<sid>`: KEYS[1] of every session function.
    pub base: String,
    /// The partition's turn stream.
    pub stream: String,
}

impl SessionKeys {
    /// The session's sharded pub/sub channel.
    pub fn channel(&self) -> String {
        format!("{}:ch", self.base)
    }

    /// The session id (the last component of the base name).
    pub fn session_id(&self) -> &str {
        self.base.rsplit(':').next().unwrap_or_default()
    }

    /// The session's base name, recovered from its channel name.
    pub fn base_of_channel(channel: &str) -> Option<&str> {
        channel.strip_suffix(":ch")
    }
}

impl fmt::Display for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_across_versions() {
        // Changing the hash would move every live session: these values (computed independently
        // from the FNV-1a definition) are pinned.
        let ks = Keyspace::new("cf", 64);
        assert_eq!(ks.partition_of("dev", "s1"), 6);
        assert_eq!(ks.partition_of("dev", "abc"), 40);
        assert_eq!(ks.partition_of("dev", "session-42"), 29);
        let spread: std::collections::HashSet<u16> =
            (0..1000).map(|i| ks.partition_of("t", &format!("s{i}"))).collect();
        assert_eq!(spread.len(), 64, "1000 sessions reach every partition");
    }

    #[test]
    fn all_keys_of_a_session_share_the_partition_hash_tag() {
        let ks = Keyspace::new("cf", 64);
        let s = ks.session("acme", "abc");
        let tag = format!("{{p{:02}}}", s.partition);
        assert!(s.base.contains(&tag) && s.stream.contains(&tag) && s.channel().contains(&tag));
        assert!(ks.dlq(s.partition).contains(&tag));
        assert!(ks.archive(s.partition).contains(&tag));
        assert_eq!(SessionKeys::base_of_channel(&s.channel()), Some(s.base.as_str()));
        assert!(ks.wake_channel(s.partition).contains(&tag));
        assert_eq!(Keyspace::partition_in(&ks.wake_channel(7)), Some(7));
    }

    #[test]
    fn components_reject_separators_and_braces() {
        assert!(is_valid_component("abc-DEF_1.2"));
        for bad in ["", "a:b", "a{b}", "a b", &"x".repeat(65), "é"] {
            assert!(!is_valid_component(bad), "{bad:?}");
        }
    }
}
