//! Redis 7 or newer is required: chatfleet's state changes are Redis Functions (`FUNCTION LOAD`,
//! `FCALL`), which Redis 6 does not have. Checked at start, before the library is loaded, so an
//! old server stops the process with a message that says what to install instead of an
//! "unknown command" from deep inside the first call.

use fred::types::Version;

/// The oldest Redis major version with Functions.
pub const MIN_MAJOR: u64 = 7;

/// Redis is older than 7.
#[derive(Debug, thiserror::Error)]
#[error(
    "Redis {found} is too old: chatfleet needs Redis {MIN_MAJOR} or newer (it uses Redis Functions). \
     Install redis-server >= 7 (Debian 12 and Ubuntu 24.04 ship it; on Ubuntu 22.04 use the \
     packages.redis.io APT repository) or point redis.url at a Redis 7+ server"
)]
pub struct TooOld {
    found: Version,
}

/// Checks the version the client read from `INFO server` when it connected. An unknown version
/// (the client could not read it) passes: loading the functions library then fails plainly.
pub fn check(found: Option<Version>) -> Result<(), TooOld> {
    match found {
        Some(v) if v.major < MIN_MAJOR => Err(TooOld { found: v }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_6_is_refused_with_what_to_install() {
        let err = check(Some(Version::new(6, 2, 14))).unwrap_err().to_string();
        assert!(err.contains("Redis 6.2.14 is too old"), "{err}");
        assert!(err.contains("redis-server >= 7"), "{err}");
    }

    #[test]
    fn redis_7_and_later_pass() {
        check(Some(Version::new(7, 0, 15))).unwrap();
        check(Some(Version::new(8, 2, 0))).unwrap();
        check(None).unwrap();
    }
}
