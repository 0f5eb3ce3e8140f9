//! New cases' jobs handed straight from the intake to their destination's delivery loop.
//!
//! Why: a job written pending costs the store a lease before it can be sent (an update through the
//! due index, and its payload read back), and the intake's wake-up makes its loop look. The first
//! job of a new case to a destination has nothing ahead of it in its case, so when that destination's
//! loop has room and its last lease found nothing more due, the intake writes the job already leased
//! ([`crate::store::NewJob::lease_until`]) and hands it to the loop once the commit has returned.
//!
//! A loop whose lease found a backlog, or with an open breaker or no room, takes none: the job is
//! written pending and leased as before. A job that comes due while jobs are being handed (a retry,
//! a follow-up released, a replay) waits at most until the loop's next poll, which stops the hand-off
//! until a lease has taken what is due. A job handed but never sent is released when the gateway stops
//! (by the loop, or by the intake if the loop had already stopped); after a crash it is leased again
//! when its lease ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::Destination;
use crate::store::{CaseId, Job, JobId, NewJob};

/// The intake's way to the delivery loops; shared by both.
pub struct Dispatch {
    lease: Duration,
    loops: RwLock<HashMap<Destination, Slot>>,
}

struct Slot {
    tx: mpsc::UnboundedSender<Job>,
    counts: Arc<Counts>,
    /// The loop's wake-up: jobs were written pending for it.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Counts {
    /// Jobs the loop will still take.
    room: AtomicUsize,
    /// Jobs claimed for the loop that it has not received yet (their batch is committing).
    claimed: AtomicUsize,
}

/// A delivery loop's end: the jobs handed to it, and how many more it will take now.
pub(super) struct Inbox {
    rx: mpsc::UnboundedReceiver<Job>,
    counts: Arc<Counts>,
}

impl Inbox {
    /// Takes `room` more jobs, less those already claimed and on their way; 0 stops the flow.
    pub fn offer(&self, room: usize) {
        let coming = self.counts.claimed.load(Ordering::Relaxed);
        self.counts.room.store(room.saturating_sub(coming), Ordering::Relaxed);
    }

    /// Waits for handed jobs and adds every one that has come to `queue`; returns how many.
    pub async fn receive(&mut self, queue: &mut std::collections::VecDeque<Job>) -> usize {
        let Some(job) = self.rx.recv().await else { return std::future::pending().await };
        queue.push_back(job);
        let mut n = 1;
        while let Ok(job) = self.rx.try_recv() {
            queue.push_back(job);
            n += 1;
        }
        self.counts.claimed.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// Stops the flow and adds what was handed meanwhile to `queue` (the loop is stopping).
    pub fn close(&mut self, queue: &mut std::collections::VecDeque<Job>) {
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            queue.push_back(job);
        }
    }
}

impl Dispatch {
    /// `lease`: `outbox.lease`, the lease a handed job is written with.
    pub fn new(lease: Duration) -> Dispatch {
        Dispatch { lease, loops: RwLock::new(HashMap::new()) }
    }

    /// The loop of `destination` takes handed jobs from now on (offering no room yet), and is woken
    /// through `wake` when jobs are written pending for it.
    pub(super) fn register(&self, destination: &Destination, wake: Arc<Notify>) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        self.write().insert(destination.clone(), Slot { tx, counts: counts.clone(), wake });
        Inbox { rx, counts }
    }

    /// Wakes the loops of `destinations`, which jobs were just written pending for, to lease them.
    /// Only theirs: beside a hung endpoint, every intake batch writes its jobs pending, and waking
    /// every loop made each working one run a lease that found nothing (on PostgreSQL, a statement
    /// per intake batch per loop). False when one of them has no loop here (not started yet, or
    /// stopped): the caller then wakes every loop.
    pub fn wake(&self, destinations: &[&Destination]) -> bool {
        let loops = self.read();
        let mut all_found = true;
        for d in destinations {
            match loops.get(*d) {
                Some(slot) => slot.wake.notify_one(),
                None => all_found = false,
            }
        }
        all_found
    }

    /// Wakes every registered loop (a replay or a release, which may have made any destination's
    /// jobs due).
    pub(super) fn wake_all(&self) {
        self.read().values().for_each(|slot| slot.wake.notify_one());
    }

    /// The loop of `destination` is stopping: no more jobs are claimed for it.
    pub(super) fn unregister(&self, destination: &Destination) {
        self.write().remove(destination);
    }

    /// Marks the jobs of a new case to write leased: the first one to each destination whose loop
    /// has room (a later one to the same destination waits for it, so it is left pending). Only
    /// for a new case's jobs: nothing of its case is ahead of them. Every row claimed for goes
    /// through [`Dispatch::hand`] after its commit, whatever became of it.
    pub fn claim(&self, jobs: &mut [NewJob], now_ms: i64) {
        let loops = self.read();
        if loops.is_empty() {
            return;
        }
        let until = now_ms + self.lease.as_millis() as i64;
        let mut seen: HashSet<&Destination> = HashSet::new();
        for job in jobs.iter_mut() {
            if !seen.insert(&job.destination) {
                continue;
            }
            let Some(slot) = loops.get(&job.destination) else { continue };
            if slot.counts.room.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                slot.counts.claimed.fetch_add(1, Ordering::Relaxed);
                job.lease_until = Some(until);
            }
        }
    }

    /// After the commit: hands the jobs of a case (`jobs`, created at `now_ms`) that the store
    /// wrote leased (`leased`: event id and job id) to their loops, their payloads moved into the
    /// handed jobs, and gives back the claims of the others. Returns the ids of jobs written leased
    /// whose loop has stopped: the caller releases them, or they would wait out their lease.
    pub fn hand(&self, case_id: &CaseId, now_ms: i64, jobs: &mut [NewJob], leased: &[(String, JobId)]) -> Vec<JobId> {
        let mut unhanded = Vec::new();
        if jobs.iter().all(|j| j.lease_until.is_none()) {
            return unhanded;
        }
        let loops = self.read();
        for new in jobs.iter_mut().filter(|j| j.lease_until.is_some()) {
            let slot = loops.get(&new.destination);
            let Some(id) = leased.iter().find(|(e, _)| *e == new.event_id).map(|(_, id)| *id) else {
                // Not written (a duplicate, a case rendered again, a failed commit): the claim goes back.
                if let Some(slot) = slot {
                    slot.counts.claimed.fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            };
            let job = Job {
                id,
                event_id: new.event_id.clone(),
                case_id: case_id.clone(),
                kind: new.kind.to_owned(),
                destination: new.destination.clone(),
                payload: std::mem::take(&mut new.payload),
                state: "leased".to_owned(),
                attempts: 1,
                max_attempts: new.max_attempts,
                next_attempt_at: new.lease_until.unwrap_or(now_ms),
                last_error: None,
                created_at: now_ms,
                held_by: None,
            };
            match slot {
                Some(slot) if slot.tx.send(job).is_ok() => {}
                _ => unhanded.push(id),
            }
        }
        unhanded
    }

    // A poisoned lock only means a panic elsewhere while it was held; the map itself is whole.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Destination, Slot>> {
        self.loops.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Destination, Slot>> {
        self.loops.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(event_id: &str, destination: &Destination) -> NewJob {
        NewJob {
            event_id: event_id.to_owned(),
            kind: "case.created",
            destination: destination.clone(),
            payload: format!("payload of {event_id}"),
            max_attempts: 5,
            lease_until: None,
        }
    }

    fn room(dispatch: &Dispatch, d: &Destination) -> usize {
        dispatch.read()[d].counts.room.load(Ordering::Relaxed)
    }

    #[test]
    fn claims_only_the_first_job_to_a_destination_with_room() {
        let (tickets, crm, gone) =
            (Destination::downstream("tickets"), Destination::downstream("crm"), Destination::downstream("gone"));
        let dispatch = Dispatch::new(Duration::from_secs(60));
        let inbox = dispatch.register(&tickets, Arc::default());
        let full = dispatch.register(&crm, Arc::default());
        inbox.offer(2);
        full.offer(0);

        let mut jobs = vec![job("a", &tickets), job("b", &tickets), job("c", &crm), job("d", &gone)];
        dispatch.claim(&mut jobs, 1_000);
        let until: Vec<Option<i64>> = jobs.iter().map(|j| j.lease_until).collect();
        assert_eq!(until, vec![Some(61_000), None, None, None], "only the first job to a loop with room");

        // One unit of room is left, then none.
        let mut more = vec![job("e", &tickets)];
        dispatch.claim(&mut more, 1_000);
        assert_eq!(more[0].lease_until, Some(61_000));
        let mut none = vec![job("f", &tickets)];
        dispatch.claim(&mut none, 1_000);
        assert_eq!(none[0].lease_until, None, "no room left");

        // Claimed jobs still committing count against what the loop offers next; a claim whose
        // job was not written (a duplicate) is given back.
        inbox.offer(3);
        assert_eq!(room(&dispatch, &tickets), 1, "two claimed jobs are on their way");
        let unhanded = dispatch.hand(&CaseId("c1".to_owned()), 1_000, &mut more, &[]);
        assert!(unhanded.is_empty());
        inbox.offer(3);
        assert_eq!(room(&dispatch, &tickets), 2);

        // A stopped loop takes nothing.
        dispatch.unregister(&tickets);
        inbox.offer(5);
        let mut after = vec![job("g", &tickets)];
        dispatch.claim(&mut after, 1_000);
        assert_eq!(after[0].lease_until, None);
    }

    #[tokio::test]
    async fn hands_the_leased_jobs_with_their_payloads() {
        let tickets = Destination::downstream("tickets");
        let dispatch = Dispatch::new(Duration::from_secs(60));
        let mut inbox = dispatch.register(&tickets, Arc::default());
        inbox.offer(4);
        let mut jobs = vec![job("a", &tickets), job("b", &tickets)];
        dispatch.claim(&mut jobs, 1_000);
        let unhanded = dispatch.hand(&CaseId("c1".to_owned()), 1_000, &mut jobs, &[("a".to_owned(), JobId(7))]);
        assert!(unhanded.is_empty());

        let mut queue = std::collections::VecDeque::new();
        assert_eq!(inbox.receive(&mut queue).await, 1);
        assert_eq!(queue.len(), 1, "the pending job is not handed: {queue:?}");
        let handed = &queue[0];
        assert_eq!((handed.id, handed.event_id.as_str(), handed.attempts), (JobId(7), "a", 1));
        assert_eq!((handed.next_attempt_at, handed.created_at), (61_000, 1_000));
        assert_eq!(handed.payload, "payload of a");
        assert_eq!((handed.state.as_str(), handed.case_id.as_str()), ("leased", "c1"));
        inbox.offer(4);
        assert_eq!(room(&dispatch, &tickets), 4, "the received job no longer counts as coming");

        // Its loop stopped between the claim and the commit: the job comes back to be released.
        let mut late = vec![job("c", &tickets)];
        dispatch.claim(&mut late, 2_000);
        dispatch.unregister(&tickets);
        let unhanded = dispatch.hand(&CaseId("c2".to_owned()), 2_000, &mut late, &[("c".to_owned(), JobId(8))]);
        assert_eq!(unhanded, vec![JobId(8)]);
    }

    #[tokio::test]
    async fn wakes_only_the_loops_of_the_destinations_named() {
        let (tickets, crm, gone) =
            (Destination::downstream("tickets"), Destination::downstream("crm"), Destination::downstream("gone"));
        let dispatch = Dispatch::new(Duration::from_secs(60));
        let (wake_tickets, wake_crm) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let _a = dispatch.register(&tickets, wake_tickets.clone());
        let _b = dispatch.register(&crm, wake_crm.clone());

        assert!(dispatch.wake(&[&crm]), "every destination named has a loop");
        let woken = |n: &Arc<Notify>| {
            let n = n.clone();
            async move { tokio::time::timeout(Duration::from_millis(50), n.notified()).await.is_ok() }
        };
        assert!(woken(&wake_crm).await, "crm's loop is woken");
        assert!(!woken(&wake_tickets).await, "tickets' loop is left alone");

        // A destination without a loop: the caller is told, to wake every loop instead.
        assert!(!dispatch.wake(&[&tickets, &gone]));
        assert!(woken(&wake_tickets).await, "the known one is still woken");
        dispatch.unregister(&crm);
        assert!(!dispatch.wake(&[&crm]), "a stopped loop counts as none");
    }
}
