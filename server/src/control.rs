//! The control core: what a server does with its partitions when the lock
//! manager speaks, with no task, socket or clock of its own.
//!
//! Events (a grant, a revoke, the session's expiry or loss, a pushed slot
//! map, a claim that finished, a stop) go in; actions come out, in the order
//! the shell (`server::serve`) must carry them out. The shell owns the
//! sockets, the blocking claims and the engine queue; a simulation drives
//! the same core.
//!
//! A granted partition is first *claiming* (recovered on a blocking thread),
//! then *serving*. The rules:
//! * a partition is routed to the engine only after its claim recovered it
//!   ([`Action::Serve`]), and unrouted before the engine is told to stop it
//!   ([`Action::Release`]), so no request reaches a partition we no longer
//!   serve;
//! * a claim that finishes for an earlier incarnation, or for a grant since
//!   replaced, is void: the partition is given up on the volume and never
//!   served ([`Action::Discard`]);
//! * a revoke during a claim is honoured when the claim finishes, and the
//!   lock manager is told so at once ([`Action::StillClaiming`]);
//! * a grant of an epoch we already gave back is stale (it crossed our
//!   release, or a restarted lock manager restored it): never served, and
//!   the lock manager is told again ([`Action::Disown`]); so is a revoke
//!   of a partition we already gave back (our release may have been lost
//!   with a connection the lock manager had stopped answering);
//! * the lock manager is told of a release only while our session is valid
//!   (it then grants the partition at once, with no fence and no lease wait);
//!   once the session expired, our key is being fenced and telling is moot.

use std::collections::BTreeMap;

use sharedisk_lockmgr::core::ClusterMap;

/// What the lock manager, the claims and the operator tell the control core.
#[derive(Debug)]
pub enum Event<P> {
    /// Serve `partition` with this fence token.
    Granted { partition: u32, epoch: u64 },
    /// Give `partition` back (a planned move or drain).
    Revoked { partition: u32 },
    /// A claim started by [`Action::Claim`] finished.
    Claimed { incarnation: u64, partition: u32, epoch: u64, result: Result<P, String> },
    /// The slot map changed.
    Map(ClusterMap),
    /// Our session expired: our key is (being) fenced.
    Expired,
    /// A claim of `incarnation` was refused because our key is gone from the
    /// volume (a lock manager that restarted forgot it fenced it): if that is
    /// the current incarnation, it can claim nothing and must start anew.
    KeyLost { incarnation: u64 },
    /// The connection to the lock manager is lost; the lease may still hold.
    Disconnected,
    /// SIGTERM: hand everything back and exit.
    Stop,
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Action<P> {
    /// Recover the partition on a blocking thread, then report
    /// [`Event::Claimed`] with the same incarnation and fence token.
    Claim { incarnation: u64, partition: u32, epoch: u64 },
    /// Hand the claimed partition to the engine, then route requests to it.
    Serve { partition: u32, epoch: u64, part: P },
    /// Unroute, let the engine finish and release the partition on the
    /// volume; then, if `tell`, tell the lock manager it is free.
    Release { partition: u32, epoch: u64, tell: bool },
    /// Release a claimed partition that must not be served; then, if `tell`
    /// and the release succeeded, tell the lock manager it is free.
    Discard { partition: u32, epoch: u64, part: P, tell: bool },
    /// A revoke came while we are still claiming the partition: tell the
    /// lock manager we will release it once the claim is done (a cold claim
    /// of a loaded partition outlasts the revoke timeout).
    StillClaiming { partition: u32, epoch: u64 },
    /// A claim failed: tell the lock manager we give the partition back.
    GiveBack { partition: u32, epoch: u64, why: String },
    /// A grant of an epoch we already gave back (it crossed our release, or
    /// a restarted lock manager restored it): tell the lock manager again
    /// that we do not hold it, and do not serve it.
    Disown { partition: u32, epoch: u64 },
    /// Advertise this slot map.
    Route(ClusterMap),
    /// Our lease is gone for good: the engine stops waiting for it.
    AbandonLease,
    /// Register a new incarnation (a new reservation key).
    Reregister,
    /// Reconnect to the lock manager with the same key.
    Reconnect,
    /// Unregister and exit.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Claiming { epoch: u64, revoked: bool },
    Serving { epoch: u64 },
}

/// What this server was granted and how far along each grant is.
#[derive(Debug, Default)]
pub struct Control {
    held: BTreeMap<u32, Held>,
    /// Per partition, the highest epoch we told the lock manager we gave
    /// back. Epochs only rise, so a grant at or below it is not new.
    given_back: BTreeMap<u32, u64>,
    /// Bumped when we stop serving everything; claims of an earlier
    /// incarnation are void.
    incarnation: u64,
}

impl Control {
    pub fn new() -> Control {
        Control::default()
    }

    /// The partitions being served.
    #[cfg(test)]
    pub fn serving(&self) -> impl Iterator<Item = u32> + '_ {
        self.held.iter().filter(|(_, h)| matches!(h, Held::Serving { .. })).map(|(p, _)| *p)
    }

    pub fn handle<P>(&mut self, event: Event<P>) -> Vec<Action<P>> {
        let mut out = Vec::new();
        match event {
            Event::Granted { partition, epoch } => self.granted(partition, epoch, &mut out),
            Event::Revoked { partition } => self.revoked(partition, &mut out),
            Event::Claimed { incarnation, partition, epoch, result } => self.claimed(incarnation, partition, epoch, result, &mut out),
            Event::Map(map) => out.push(Action::Route(map)),
            Event::Expired => self.expired(&mut out),
            // A claim of an earlier incarnation used a key that is gone by design.
            Event::KeyLost { incarnation } if incarnation != self.incarnation => {}
            Event::KeyLost { .. } => self.expired(&mut out),
            Event::Disconnected => out.push(Action::Reconnect),
            Event::Stop => {
                self.release_all(true, &mut out);
                out.push(Action::Exit);
            }
        }
        out
    }

    /// Stop serving everything without a session to tell (the lock manager
    /// is unreachable and we are asked to stop).
    pub fn stop_unreachable<P>(&mut self) -> Vec<Action<P>> {
        let mut out = vec![Action::AbandonLease];
        self.release_all(false, &mut out);
        out.push(Action::Exit);
        out
    }

    fn expired<P>(&mut self, out: &mut Vec<Action<P>>) {
        out.push(Action::AbandonLease);
        self.release_all(false, out);
        out.push(Action::Reregister);
    }

    fn granted<P>(&mut self, partition: u32, epoch: u64, out: &mut Vec<Action<P>>) {
        if self.given_back.get(&partition).is_some_and(|e| epoch <= *e) {
            out.push(Action::Disown { partition, epoch });
            return;
        }
        match self.held.get(&partition) {
            // Granted again after a lock-manager restart: still ours.
            Some(Held::Serving { epoch: t } | Held::Claiming { epoch: t, .. }) if *t == epoch => return,
            // A new grant replaces the old one: its handle is fenced.
            Some(Held::Serving { epoch: old }) => out.push(Action::Release { partition, epoch: *old, tell: false }),
            _ => {}
        }
        self.held.insert(partition, Held::Claiming { epoch, revoked: false });
        out.push(Action::Claim { incarnation: self.incarnation, partition, epoch });
    }

    fn revoked<P>(&mut self, partition: u32, out: &mut Vec<Action<P>>) {
        match self.held.get_mut(&partition) {
            Some(Held::Claiming { revoked, epoch }) if !*revoked => {
                *revoked = true;
                out.push(Action::StillClaiming { partition, epoch: *epoch });
            }
            Some(Held::Claiming { .. }) => {}
            Some(Held::Serving { epoch }) => {
                let epoch = *epoch;
                self.held.remove(&partition);
                self.give_back(partition, epoch);
                out.push(Action::Release { partition, epoch, tell: true });
            }
            // Revoked again after we gave it back: the lock manager did not
            // hear us (the release was sent on a connection it had stopped
            // answering, and a session move resends revokes). Tell it again,
            // or it waits for a release until its revoke deadline, and the
            // partition is served by nobody meanwhile. (The release on the
            // volume is done: the shell carries out actions in order.)
            None => {
                if let Some(&epoch) = self.given_back.get(&partition) {
                    out.push(Action::Disown { partition, epoch });
                }
            }
        }
    }

    fn claimed<P>(&mut self, incarnation: u64, partition: u32, epoch: u64, result: Result<P, String>, out: &mut Vec<Action<P>>) {
        let current =
            incarnation == self.incarnation && matches!(self.held.get(&partition), Some(Held::Claiming { epoch: t, .. }) if *t == epoch);
        if !current {
            if let Ok(part) = result {
                out.push(Action::Discard { partition, epoch, part, tell: false });
            }
            return;
        }
        let Some(Held::Claiming { revoked, .. }) = self.held.remove(&partition) else { unreachable!("checked above") };
        match result {
            Err(why) => {
                self.give_back(partition, epoch);
                out.push(Action::GiveBack { partition, epoch, why })
            }
            Ok(part) if revoked => {
                self.give_back(partition, epoch);
                out.push(Action::Discard { partition, epoch, part, tell: true })
            }
            Ok(part) => {
                self.held.insert(partition, Held::Serving { epoch });
                out.push(Action::Serve { partition, epoch, part });
            }
        }
    }

    /// Release everything served; claims in flight become void when they finish.
    fn release_all<P>(&mut self, tell: bool, out: &mut Vec<Action<P>>) {
        self.incarnation += 1;
        for (partition, held) in std::mem::take(&mut self.held) {
            if let Held::Serving { epoch } = held {
                if tell {
                    self.give_back(partition, epoch);
                }
                out.push(Action::Release { partition, epoch, tell });
            }
        }
    }

    fn give_back(&mut self, partition: u32, epoch: u64) {
        let e = self.given_back.entry(partition).or_default();
        *e = (*e).max(epoch);
    }
}

#[cfg(test)]
mod tests {
    //! Transcripts: events in, actions out.

    use super::*;

    type Ev = Event<&'static str>;

    fn say(c: &mut Control, e: Ev) -> String {
        let acts: Vec<String> = c
            .handle(e)
            .into_iter()
            .map(|a| match a {
                Action::Claim { incarnation, partition, epoch } => format!("claim {partition}@{epoch} i{incarnation}"),
                Action::Serve { partition, part, .. } => format!("serve {partition} {part}"),
                Action::Release { partition, epoch, tell } => format!("release {partition}@{epoch} tell={tell}"),
                Action::Discard { partition, epoch, part, tell } => format!("discard {partition}@{epoch} {part} tell={tell}"),
                Action::GiveBack { partition, epoch, why } => format!("give-back {partition}@{epoch} ({why})"),
                Action::Disown { partition, epoch } => format!("disown {partition}@{epoch}"),
                Action::StillClaiming { partition, epoch } => format!("still-claiming {partition}@{epoch}"),
                Action::Route(_) => "route".into(),
                Action::AbandonLease => "abandon".into(),
                Action::Reregister => "reregister".into(),
                Action::Reconnect => "reconnect".into(),
                Action::Exit => "exit".into(),
            })
            .collect();
        acts.join("; ")
    }

    fn claimed(incarnation: u64, partition: u32, epoch: u64, result: Result<&'static str, String>) -> Ev {
        Event::Claimed { incarnation, partition, epoch, result }
    }

    #[test]
    fn a_grant_is_served_only_after_its_claim_and_released_on_revoke() {
        let mut c = Control::new();
        assert_eq!(say(&mut c, Event::Granted { partition: 3, epoch: 7 }), "claim 3@7 i0");
        assert_eq!(c.serving().count(), 0, "served before the claim finished");
        assert_eq!(say(&mut c, claimed(0, 3, 7, Ok("p3"))), "serve 3 p3");
        assert_eq!(c.serving().collect::<Vec<_>>(), vec![3]);
        // The same grant again (a lock-manager restart) changes nothing.
        assert_eq!(say(&mut c, Event::Granted { partition: 3, epoch: 7 }), "");
        assert_eq!(say(&mut c, Event::Revoked { partition: 3 }), "release 3@7 tell=true");
        assert_eq!(c.serving().count(), 0);
        // Revoked again (resent after a session move: our release may have
        // been lost with the old connection): told again, not released twice.
        assert_eq!(say(&mut c, Event::Revoked { partition: 3 }), "disown 3@7");
        // A revoke of a partition never held here says nothing.
        assert_eq!(say(&mut c, Event::Revoked { partition: 9 }), "");
    }

    #[test]
    fn a_revoke_during_a_claim_is_honoured_when_it_finishes() {
        let mut c = Control::new();
        say(&mut c, Event::Granted { partition: 1, epoch: 2 });
        // The lock manager hears at once that the release will come (a cold
        // claim may outlast its revoke timeout), and only once.
        assert_eq!(say(&mut c, Event::Revoked { partition: 1 }), "still-claiming 1@2");
        assert_eq!(say(&mut c, Event::Revoked { partition: 1 }), "");
        assert_eq!(say(&mut c, claimed(0, 1, 2, Ok("p1"))), "discard 1@2 p1 tell=true");
        assert_eq!(c.serving().count(), 0);
    }

    #[test]
    fn claims_of_an_earlier_incarnation_or_grant_are_void() {
        let mut c = Control::new();
        say(&mut c, Event::Granted { partition: 1, epoch: 2 });
        say(&mut c, Event::Granted { partition: 2, epoch: 5 });
        assert_eq!(say(&mut c, claimed(0, 2, 5, Ok("p2"))), "serve 2 p2");
        // Fenced while partition 1 is still being recovered.
        assert_eq!(say(&mut c, Event::Expired), "abandon; release 2@5 tell=false; reregister");
        assert_eq!(say(&mut c, claimed(0, 1, 2, Ok("p1"))), "discard 1@2 p1 tell=false");
        // A newer grant replaces an older claim of the same partition.
        say(&mut c, Event::Granted { partition: 4, epoch: 8 });
        assert_eq!(say(&mut c, Event::Granted { partition: 4, epoch: 9 }), "claim 4@9 i1");
        assert_eq!(say(&mut c, claimed(1, 4, 8, Ok("old"))), "discard 4@8 old tell=false");
        assert_eq!(say(&mut c, claimed(1, 4, 9, Ok("new"))), "serve 4 new");
        // And a new grant of a served partition replaces the fenced handle.
        assert_eq!(say(&mut c, Event::Granted { partition: 4, epoch: 12 }), "release 4@9 tell=false; claim 4@12 i1");
        assert_eq!(c.serving().count(), 0);
    }

    #[test]
    fn a_grant_of_an_epoch_we_gave_back_is_not_served() {
        // The lock manager's grant crossed our release (found by the cluster
        // simulation): serving it would leave us holding a partition the lock
        // manager thinks is free, and it would grant it again unfenced.
        let mut c = Control::new();
        say(&mut c, Event::Granted { partition: 3, epoch: 1 });
        assert_eq!(say(&mut c, Event::Revoked { partition: 3 }), "still-claiming 3@1");
        assert_eq!(say(&mut c, claimed(0, 3, 1, Ok("p3"))), "discard 3@1 p3 tell=true");
        assert_eq!(say(&mut c, Event::Granted { partition: 3, epoch: 1 }), "disown 3@1");
        assert_eq!(c.serving().count(), 0);
        // A later grant has a higher epoch and is served.
        assert_eq!(say(&mut c, Event::Granted { partition: 3, epoch: 2 }), "claim 3@2 i0");
        assert_eq!(say(&mut c, claimed(0, 3, 2, Ok("p3"))), "serve 3 p3");
        // Released on a revoke: the same again.
        assert_eq!(say(&mut c, Event::Revoked { partition: 3 }), "release 3@2 tell=true");
        assert_eq!(say(&mut c, Event::Granted { partition: 3, epoch: 2 }), "disown 3@2");
    }

    #[test]
    fn a_lost_key_restarts_the_current_incarnation_only() {
        let mut c = Control::new();
        say(&mut c, Event::Granted { partition: 0, epoch: 1 });
        assert_eq!(say(&mut c, claimed(0, 0, 1, Err("not registered".into()))), "give-back 0@1 (not registered)");
        assert_eq!(say(&mut c, Event::<&str>::KeyLost { incarnation: 0 }), "abandon; reregister");
        // A claim of incarnation 0 reporting the same now is stale.
        assert_eq!(say(&mut c, Event::<&str>::KeyLost { incarnation: 0 }), "");
    }

    #[test]
    fn a_failed_claim_is_given_back_and_a_stop_hands_everything_back() {
        let mut c = Control::new();
        say(&mut c, Event::Granted { partition: 0, epoch: 1 });
        say(&mut c, Event::Granted { partition: 1, epoch: 1 });
        assert_eq!(say(&mut c, claimed(0, 0, 1, Err("corrupt".into()))), "give-back 0@1 (corrupt)");
        say(&mut c, claimed(0, 1, 1, Ok("p1")));
        assert_eq!(say(&mut c, Event::Disconnected), "reconnect");
        assert_eq!(c.serving().collect::<Vec<_>>(), vec![1], "a lost connection is not a lost lease");
        assert_eq!(say(&mut c, Event::Stop), "release 1@1 tell=true; exit");
        let acts: Vec<Action<&str>> = Control::new().stop_unreachable();
        assert!(matches!(acts.as_slice(), [Action::AbandonLease, Action::Exit]));
    }
}
