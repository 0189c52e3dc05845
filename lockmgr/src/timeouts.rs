//! Every lock-manager timeout, derived from one base and validated together.
//!
//! # The timeline that keeps two owners apart
//!
//! A server sends heartbeat *h* at its clock reading `s` (real time `S`).
//! The lock manager receives it at real time `R ≥ S` and extends the
//! session to `R + lease_timeout` on its own clock. When the server gets the
//! acknowledgement of *h*, it may serve until `s + lease_timeout − guard` on
//! its own clock: it measures from when it *sent*, never from when the
//! answer came back, so network delay only shortens its lease.
//!
//! ```text
//! real time ─────────────────────────────────────────────────────────────►
//! server     S: send h ···· ack ············ stops serving ▏
//!                                           S + (lease−guard)/(1−ρ)
//! lockmgr        R: extend ·························· expires ▏ fence ▏ grant
//!                                                  R + lease/(1+ρ)
//! ```
//!
//! With clock rates within `1 ± ρ` of real time (`max_clock_drift_ppm`), the
//! server stops by real time `S + (lease − guard)/(1 − ρ)` and the lock
//! manager expires the session no earlier than `S + lease/(1 + ρ)`. The
//! server is therefore always first when `guard > lease · 2ρ/(1 + ρ)`;
//! `validate` insists on that with a factor of two to spare. Expiry alone is
//! never the only guard: the lock manager then fences the key on the volume
//! (PREEMPT) before it grants, and servers check the volume's owner word
//! before every reply. That is what lets it fence and regrant *at once* when
//! a session's connection closes, without waiting for the lease.

use std::time::Duration;

/// The timeouts. Build with [`Timeouts::from_base`]; adjust fields only
/// through a config that is then `validate`d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How often a server heartbeats.
    pub heartbeat_interval: Duration,
    /// The lock manager expires a session this long after its last heartbeat arrived.
    pub lease_timeout: Duration,
    /// A server stops serving this much before `send time + lease_timeout`.
    pub server_guard: Duration,
    /// Bound on clock rate error, in parts per million.
    pub max_clock_drift_ppm: u32,
    /// How long an owner has to release a partition on a planned move before
    /// its whole session is treated as failed.
    pub revoke_timeout: Duration,
    /// How long an owner that said it is still claiming the partition (a
    /// claim of a loaded partition reads its whole log) has to release it.
    pub revoke_cap: Duration,
    /// After a lock-manager restart, how long a holder from the persisted map
    /// has to reconnect and reclaim before its partitions are fenced and reassigned.
    pub restart_grace: Duration,
    /// A standby lock manager takes over once the active one's lease word
    /// has not moved for this long (at once if its process is provably dead).
    pub lockmgr_lease: Duration,
    /// How often the active lock manager renews its lease word.
    pub lockmgr_renew: Duration,
    /// How often a standby lock manager looks at the lease word.
    pub lockmgr_poll: Duration,
}

impl Timeouts {
    /// Defaults: a 100 ms base gives heartbeats every 100 ms and a 600 ms
    /// lease, so a silent server is replaced in about 0.7 s and a closed
    /// connection in milliseconds.
    pub const DEFAULT_BASE: Duration = Duration::from_millis(100);

    pub fn from_base(base: Duration) -> Timeouts {
        Timeouts {
            heartbeat_interval: base,
            lease_timeout: base * 6,
            server_guard: base * 2,
            max_clock_drift_ppm: 10_000, // 1%: far worse than any NTP-disciplined clock
            revoke_timeout: base * 5,
            revoke_cap: base * 600,
            restart_grace: base * 6,
            lockmgr_lease: base * 3 / 2,
            lockmgr_renew: base / 5,
            lockmgr_poll: base / 10,
        }
    }

    /// The lease a server grants itself after a heartbeat is acknowledged,
    /// measured from when it sent that heartbeat.
    pub fn server_lease(&self) -> Duration {
        self.lease_timeout - self.server_guard
    }

    /// Check the relations the timeline above needs.
    pub fn validate(&self) -> Result<(), String> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if self.heartbeat_interval < Duration::from_millis(5) {
            return Err(format!("heartbeat interval {} ms is below 5 ms", ms(self.heartbeat_interval)));
        }
        if self.lease_timeout < self.heartbeat_interval * 3 {
            return Err(format!(
                "lease timeout {} ms must cover at least 3 heartbeat intervals ({} ms)",
                ms(self.lease_timeout),
                ms(self.heartbeat_interval * 3)
            ));
        }
        if self.server_guard >= self.lease_timeout || self.server_lease() < self.heartbeat_interval * 2 {
            return Err(format!(
                "server guard {} ms leaves a server lease of {} ms, less than 2 heartbeat intervals",
                ms(self.server_guard),
                ms(self.lease_timeout.saturating_sub(self.server_guard))
            ));
        }
        if self.max_clock_drift_ppm >= 100_000 {
            return Err(format!("clock drift bound {} ppm is not credible (>= 10%)", self.max_clock_drift_ppm));
        }
        let rho = f64::from(self.max_clock_drift_ppm) / 1e6;
        let needed = self.lease_timeout.as_secs_f64() * 2.0 * rho / (1.0 + rho) * 2.0;
        if self.server_guard.as_secs_f64() <= needed {
            return Err(format!(
                "server guard {} ms must exceed {:.1} ms (twice lease x 2 drift / (1 + drift)) so a server always stops before its lease expires at the lock manager",
                ms(self.server_guard),
                needed * 1000.0
            ));
        }
        if self.revoke_timeout < self.heartbeat_interval * 2 {
            return Err(format!("revoke timeout {} ms is below 2 heartbeat intervals", ms(self.revoke_timeout)));
        }
        if self.revoke_cap < self.revoke_timeout {
            return Err(format!("revoke cap {} ms is below the revoke timeout {} ms", ms(self.revoke_cap), ms(self.revoke_timeout)));
        }
        if self.lockmgr_lease < self.lockmgr_renew * 4 || self.lockmgr_poll > self.lockmgr_renew {
            return Err(format!(
                "lock-manager lease {} ms must cover 4 renewals ({} ms each), polled at least as often",
                ms(self.lockmgr_lease),
                ms(self.lockmgr_renew)
            ));
        }
        // A standby takes over, and a server finds it, within the lease a
        // server grants itself after its last acknowledged heartbeat.
        if self.lockmgr_lease + self.heartbeat_interval >= self.server_lease() {
            return Err(format!(
                "lock-manager lease {} ms plus a heartbeat interval must be below the server lease {} ms, or a lock-manager takeover stops the servers",
                ms(self.lockmgr_lease),
                ms(self.server_lease())
            ));
        }
        if self.restart_grace < self.lease_timeout {
            return Err(format!(
                "restart grace {} ms is shorter than the lease {} ms: a live holder could still be serving",
                ms(self.restart_grace),
                ms(self.lease_timeout)
            ));
        }
        Ok(())
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::from_base(Timeouts::DEFAULT_BASE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_scaled_bases_validate() {
        for base_ms in [10, 50, 100, 1000, 10_000] {
            Timeouts::from_base(Duration::from_millis(base_ms)).validate().unwrap();
        }
        assert!(Timeouts::default().lease_timeout < Duration::from_secs(1));
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let t = Timeouts::default();
        assert!(Timeouts { lease_timeout: t.heartbeat_interval * 2, ..t }.validate().is_err());
        assert!(Timeouts { server_guard: Duration::from_millis(1), ..t }.validate().is_err());
        assert!(Timeouts { server_guard: t.lease_timeout, ..t }.validate().is_err());
        assert!(Timeouts { max_clock_drift_ppm: 200_000, ..t }.validate().is_err());
        assert!(Timeouts { restart_grace: t.lease_timeout / 2, ..t }.validate().is_err());
        assert!(Timeouts { heartbeat_interval: Duration::from_millis(1), ..t }.validate().is_err());
        assert!(Timeouts { lockmgr_lease: t.server_lease(), ..t }.validate().is_err());
        assert!(Timeouts { lockmgr_renew: t.lockmgr_lease, ..t }.validate().is_err());
    }

    #[test]
    fn server_always_stops_first_at_the_drift_bound() {
        let t = Timeouts::default();
        let rho = f64::from(t.max_clock_drift_ppm) / 1e6;
        let server_stops = t.server_lease().as_secs_f64() / (1.0 - rho);
        let lockmgr_expires = t.lease_timeout.as_secs_f64() / (1.0 + rho);
        assert!(server_stops < lockmgr_expires, "{server_stops} >= {lockmgr_expires}");
    }
}
